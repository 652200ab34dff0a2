"""Test configuration. Server fixtures live in tests/servers/, one module per server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.servers.postgres",
    "tests.servers.victoriametrics",
    "tests.servers.influxdb2",
    "tests.servers.influx_runs",
    "tests.servers.prometheus",
    "tests.servers.flux",
]


@pytest.fixture
def runwatch_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An isolated RUNWATCH_HOME with no InfluxDB and no exporter; yields the home."""
    home = tmp_path / "runwatch-home"
    monkeypatch.setenv("RUNWATCH_HOME", str(home))
    for name in (
        "RUNWATCH_DB_URL",
        "INFLUXDB_V2_URL",
        "INFLUXDB_V2_ORG",
        "INFLUXDB_V2_TOKEN",
        "INFLUXDB_V2_BUCKET",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RUNWATCH_PROMETHEUS_PORT", "0")
    monkeypatch.chdir(tmp_path)  # no stray .env is read
    yield home
