"""Paths and readers shared by the deploy tests."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES_DIR = PROMETHEUS_DIR / "rules"
RULE_FILES = sorted(RULES_DIR.glob("*.rules.yml"))
RULE_TESTS = sorted(RULES_DIR.glob("*_test.yml"))
ALERTMANAGER_DIR = DEPLOY / "alertmanager"
ALERTMANAGER_TEMPLATE = ALERTMANAGER_DIR / "alertmanager.yml"
ALERTMANAGER_ENTRYPOINT = ALERTMANAGER_DIR / "entrypoint.sh"
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"

# Names a PromQL expression may use besides the exporter's (Prometheus' own series).
PROMETHEUS_OWN_SERIES = frozenset({"up"})
_METRIC_NAME = re.compile(r"\b(?:training|federated)_[a-z0-9_]+\b")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for path in RULE_FILES:
        for group in load_yaml(path)["groups"]:
            rules.extend(group["rules"])
    return rules


def metric_names_in(promql: str) -> set[str]:
    """runwatch metric names a PromQL expression or series selector mentions."""
    return set(_METRIC_NAME.findall(promql))


def exposed_series_names(exposition: str) -> set[str]:
    """Every series name a scrape of this text-format output can produce, including
    families that have no sample yet (their TYPE line is served all the same)."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if not line.startswith("# TYPE "):
            continue
        _, _, name, kind = line.split(maxsplit=3)
        if kind == "histogram":
            names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(name)
    return names
