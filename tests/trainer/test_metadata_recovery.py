"""A training whose database is unreachable from start to end says so in one line, exits
non-zero, and loses nothing: once the database is back, ``runwatch sync`` stores the run's
metadata from its journal, and ``runs show``/``runs export`` match a run trained with the
database up (same seed, same metrics), times included.

Real PostgreSQL; ``runwatch`` run as a user runs it, in its own process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests.servers._process import free_port

RUNWATCH = [sys.executable, "-m", "collector"]
TRAIN = ["train", "centralized", "--epochs", "3", "--accelerator", "cpu", "--experiment", "dbdown"]
PER_RUN = {
    "run_id",
    "start_time",
    "end_time",
    "heartbeat_at",
    "duration_s",
    "recorded_at",
    "created_at",
}


def runwatch(home: Path, db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNWATCH_", "INFLUXDB_"))}
    env |= {"RUNWATCH_HOME": str(home), "RUNWATCH_DB_URL": db_url, "RUNWATCH_PROMETHEUS_PORT": "0"}
    return subprocess.run(
        [*RUNWATCH, *args], env=env, capture_output=True, text=True, timeout=300, cwd=home.parent
    )


def run_id_of(stdout: str) -> str:
    first = stdout.splitlines()[0]  # "run <id>: completed, 3 epochs"
    return first.split()[1].rstrip(":")


def without_per_run(value: Any, run_id: str) -> Any:
    """The document with what differs between two runs of the same training left out (times,
    and the run id inside paths)."""
    if isinstance(value, dict):
        return {k: without_per_run(v, run_id) for k, v in value.items() if k not in PER_RUN}
    if isinstance(value, list):
        return [without_per_run(v, run_id) for v in value]
    if isinstance(value, str):
        return value.replace(run_id, "RUN")
    return value


def exported(home: Path, db_url: str, run_id: str) -> dict[str, Any]:
    done = runwatch(home, db_url, "runs", "export", run_id, "--format", "json", "--out", str(home))
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(Path(done.stdout.strip()).read_text())
    return document


@pytest.mark.integration
@pytest.mark.slow
def test_run_trained_without_database_is_recovered_by_sync(
    fresh_postgres_url: Callable[[], str], tmp_path: Path
) -> None:
    url = fresh_postgres_url()
    unreachable = make_url(url).set(port=free_port()).render_as_string(hide_password=False)
    home = tmp_path / "home"
    home.mkdir()

    down = runwatch(home, unreachable, *TRAIN)
    assert down.returncode == 1, down.stderr
    assert "completed, 3 epochs" in down.stdout
    assert "run metadata not stored" in down.stderr and "runwatch sync" in down.stderr
    assert "Traceback" not in down.stderr, down.stderr
    lost = run_id_of(down.stdout)
    assert runwatch(home, url, "runs", "show", lost).returncode == 1  # not there yet

    synced = runwatch(home, url, "sync")
    assert synced.returncode == 0, synced.stderr
    assert f"run {lost}" in synced.stdout and "(complete)" in synced.stdout
    assert not list((home / "journal").glob("*"))
    again = runwatch(home, url, "sync")  # nothing left to store; no InfluxDB to ship to
    assert "metadata" not in again.stdout and "INFLUXDB_V2_URL is not set" in again.stderr

    up = runwatch(home, url, *TRAIN)
    assert up.returncode == 0, up.stderr
    reference = run_id_of(up.stdout)

    shown = {
        run_id: json.loads(runwatch(home, url, "runs", "show", run_id, "--json").stdout)
        for run_id in (lost, reference)
    }
    assert shown[lost]["status"] == "completed"
    assert without_per_run(shown[lost], lost) == without_per_run(shown[reference], reference)
    assert shown[lost]["start_time"] < shown[lost]["end_time"] < shown[reference]["start_time"]
    recovered, trained = exported(home, url, lost), exported(home, url, reference)
    assert len(recovered["metrics"]) == len(trained["metrics"]) > 0
    assert without_per_run(recovered, lost) == without_per_run(trained, reference)
