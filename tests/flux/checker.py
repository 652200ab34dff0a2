"""Check Flux with InfluxData's own parser and type checker (the Flux language server).

The language server is the npm package ``@influxdata/flux-lsp-browser`` (WebAssembly), run
by Node through ``check.mjs`` in this directory; ``npm ci`` here installs it (``.ci/run``
does). Every query is checked in a package of its own, next to an optional *prelude*: Flux
that declares what the query expects to be provided when it runs:

- Grafana's macros (``v.timeRangeStart``...): :data:`GRAFANA_PRELUDE`. Grafana's dashboard
  variables are text substitutions (``${run_id}``), not Flux: replace them with sample text
  first (:func:`substitute_grafana_variables`).
- influxdb-client's ``params=``: the client sends each parameter as a top-level
  ``option NAME = <typed literal>`` in the query's ``extern``, so queries use ``run_id``,
  not ``params.run_id``; :func:`params_prelude` renders the same declarations.
  (A query written for InfluxDB's HTTP API ``params`` record, ``params.run_id``, takes a
  prelude ``params = {run_id: ""}`` instead.)
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

FLUX_DIR = Path(__file__).resolve().parent
CHECK_SCRIPT = FLUX_DIR / "check.mjs"
NPM_PACKAGE = "@influxdata/flux-lsp-browser"
PACKAGE_DIR = FLUX_DIR / "node_modules" / "@influxdata" / "flux-lsp-browser"

LSP_SEVERITY = {1: "error", 2: "warning", 3: "info", 4: "hint"}

# Grafana's InfluxDB (Flux) datasource replaces these macros before the query is sent.
GRAFANA_PRELUDE = (
    "v = {\n"
    "    timeRangeStart: 2024-01-01T00:00:00Z,\n"
    "    timeRangeStop: 2024-01-02T00:00:00Z,\n"
    "    windowPeriod: 1m,\n"
    '    defaultBucket: "training",\n'
    '    organization: "runwatch",\n'
    "}\n"
)

_GRAFANA_VARIABLE = re.compile(
    r"\$\{(?P<braced>\w+)(?::[^}]*)?\}|\[\[(?P<bracketed>\w+)(?::\w+)?\]\]|\$(?P<plain>\w+)"
)


class FluxCheckerUnavailable(RuntimeError):
    """Node or the npm package is missing: the checker cannot run here."""


@dataclass(frozen=True)
class Diagnostic:
    """One finding of the language server; line and column are 1-based within ``file``."""

    message: str
    severity: int
    line: int
    column: int
    file: str  # "query" or "prelude"

    @property
    def is_error(self) -> bool:
        return self.severity == 1

    def __str__(self) -> str:
        level = LSP_SEVERITY.get(self.severity, str(self.severity))
        return f"{self.file}:{self.line}:{self.column}: {level}: {self.message}"


def checker_unavailable_reason() -> str | None:
    """Why the checker cannot run here, or None when it can."""
    if shutil.which("node") is None:
        return "node not found on PATH (Debian: apt-get install nodejs npm)"
    if not (PACKAGE_DIR / "package.json").is_file():
        return f"{NPM_PACKAGE} is not installed: run `npm ci` in {FLUX_DIR}"
    return None


def check_flux(
    queries: Mapping[str, str], *, prelude: str = "", timeout: float = 120.0
) -> dict[str, list[Diagnostic]]:
    """Every diagnostic (errors, warnings, hints) of every query, keyed like ``queries``."""
    reason = checker_unavailable_reason()
    if reason is not None:
        raise FluxCheckerUnavailable(reason)
    documents = [{"name": name, "flux": flux, "prelude": prelude} for name, flux in queries.items()]
    node = shutil.which("node")
    assert node is not None  # checked by checker_unavailable_reason()
    completed = subprocess.run(
        [node, str(CHECK_SCRIPT)],
        input=json.dumps(documents),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=FLUX_DIR,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"flux checker failed ({completed.returncode}):\n{completed.stderr}")
    report = json.loads(completed.stdout)
    return {name: [_diagnostic(raw) for raw in report[name]] for name in queries}


def flux_errors(queries: Mapping[str, str], *, prelude: str = "") -> dict[str, list[Diagnostic]]:
    """Only the errors, only for the queries that have some (empty: every query is valid)."""
    found = check_flux(queries, prelude=prelude)
    return {
        name: errors
        for name, diagnostics in found.items()
        if (errors := [d for d in diagnostics if d.is_error])
    }


def assert_valid_flux(queries: Mapping[str, str], *, prelude: str = "") -> None:
    """AssertionError naming each invalid query, its errors and the offending lines."""
    errors = flux_errors(queries, prelude=prelude)
    if errors:
        raise AssertionError(format_errors(errors, queries, prelude=prelude))


def format_errors(
    errors: Mapping[str, Iterable[Diagnostic]], queries: Mapping[str, str], *, prelude: str = ""
) -> str:
    sources = {"prelude": prelude.splitlines()}
    blocks = []
    for name, diagnostics in errors.items():
        sources["query"] = queries[name].splitlines()
        lines = [f"Flux query {name!r} is invalid:"]
        for diagnostic in diagnostics:
            lines.append(f"  {diagnostic}")
            source = sources[diagnostic.file]
            if 0 < diagnostic.line <= len(source):
                lines.append(f"    | {source[diagnostic.line - 1]}")
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


def params_prelude(params: Mapping[str, object]) -> str:
    """The declarations influxdb-client's ``query(..., params=params)`` sends as ``extern``."""
    lines = []
    for name, value in params.items():
        if value is None:
            continue  # the client drops None parameters too
        lines.append(f"option {name} = {flux_literal(value)}")
    return "\n".join(lines) + "\n" if lines else ""


def flux_literal(value: object) -> str:
    """A Flux literal of the type influxdb-client gives ``value`` in a query's ``extern``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float_literal(value)
    if isinstance(value, datetime):
        moment = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond * 1000:09d}Z"
    if isinstance(value, timedelta):
        micros = int(value / timedelta(microseconds=1))
        return f"-{-micros}us" if micros < 0 else f"{micros}us"
    if isinstance(value, str):
        return _string_literal(value)
    if isinstance(value, Iterable):
        return "[" + ", ".join(flux_literal(item) for item in value) + "]"
    raise TypeError(f"no Flux literal for {type(value).__name__}")


def substitute_grafana_variables(query: str, values: Mapping[str, str]) -> str:
    """Replace Grafana template variables (``$name``, ``${name}``, ``${name:format}``,
    ``[[name]]``) with sample text, as Grafana does before sending the query.
    Unknown variables raise KeyError, so a typo cannot pass unnoticed."""

    def replace(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bracketed") or match.group("plain")
        if name not in values:
            raise KeyError(f"no sample value for Grafana variable {name!r} in: {match.group(0)}")
        return values[name]

    return _GRAFANA_VARIABLE.sub(replace, query)


def _float_literal(value: float) -> str:
    if not math.isfinite(value):
        raise ValueError(f"Flux has no literal for {value}")
    text = format(Decimal(repr(value)), "f")
    return text if "." in text else text + ".0"


def _string_literal(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
    return f'"{escaped}"'


def _diagnostic(raw: Mapping[str, object]) -> Diagnostic:
    return Diagnostic(
        message=str(raw["message"]),
        severity=int(str(raw["severity"])),
        line=int(str(raw["line"])) + 1,
        column=int(str(raw["character"])) + 1,
        file=str(raw["file"]),
    )


class FluxChecker:
    """What the ``flux_checker`` fixture hands to tests (see tests/servers/flux.py)."""

    def check(
        self, queries: Mapping[str, str], *, prelude: str = ""
    ) -> dict[str, list[Diagnostic]]:
        return check_flux(queries, prelude=prelude)

    def errors(
        self, queries: Mapping[str, str], *, prelude: str = ""
    ) -> dict[str, list[Diagnostic]]:
        return flux_errors(queries, prelude=prelude)

    def assert_valid(self, queries: Mapping[str, str], *, prelude: str = "") -> None:
        assert_valid_flux(queries, prelude=prelude)
