# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# torch is pinned and installed first, once per venv (PyPI's build: a few GB with its CUDA
# libraries; it runs on the CPU), so no later requirement picks another version of it.
TORCH  ?= torch==2.13.0
# The optional C extensions setup.py builds (a change rebuilds the install).
C_SOURCES := collector/lightning/_gradnorms.c collector/_lines.c collector/_pending.c collector/lightning/_dispatch.c

.PHONY: demo test lint typecheck unit bench clean dashboards servers

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml setup.py $(C_SOURCES) | $(PY)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[lightning,flower]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml setup.py $(C_SOURCES) | $(PY)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(VENV)/.installed $@

demo: $(VENV)/.installed
	$(VENV)/bin/runwatch demo

lint: $(VENV)/.installed-dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check collector trainer grafana

typecheck: $(VENV)/.installed-dev
	$(PY) -m mypy

# InfluxDB 2 built from source into ~/.cache/runwatch/servers (deploy/servers/influxd.sh):
# ~8 min the first time on 2 cores, nothing afterwards.
servers:
	deploy/servers/influxd.sh

# Without Go, Rust or pkg-config the build fails: its tests then skip (locally) or fail (CI=true).
test: lint typecheck
	deploy/servers/influxd.sh >/dev/null || echo "influxd could not be built: its tests will skip"
	$(PY) -m pytest

unit: $(VENV)/.installed-dev
	$(PY) -m pytest -m "not integration"

# Regenerates grafana/dashboards/*.json and grafana/provisioning/alerting/*.yml from grafana/.
dashboards: $(VENV)/.installed-dev
	$(PY) -m grafana.generate

bench: $(VENV)/.installed-dev
	$(PY) -m pip install -q -e '.[bench]'
	for f in benchmarks/bench_*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build collector/lightning/_gradnorms*.so collector/lightning/_dispatch*.so collector/_lines*.so collector/_pending*.so
