"""A training killed with SIGKILL is seen as crashed wherever a user looks: ``runs list``,
``runs show``, ``runs export``, ``doctor``, and Prometheus no longer reports it running.

The training is ``runwatch train centralized`` in its own process, as a user starts it, with a
short heartbeat and stale bound; a real Prometheus scrapes its exporter every second.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers._process import free_port
from tests.servers.prometheus import PrometheusServer, start_prometheus

HEARTBEAT_S = 0.5
STALE_AFTER_S = 3.0
RUNWATCH = [sys.executable, "-m", "collector"]


def runwatch_env(home: Path, exporter_port: int) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("RUNWATCH_", "INFLUXDB_"))}
    return keep | {
        "RUNWATCH_HOME": str(home),
        "RUNWATCH_HEARTBEAT_S": str(HEARTBEAT_S),
        "RUNWATCH_STALE_AFTER_S": str(STALE_AFTER_S),
        "RUNWATCH_PROMETHEUS_ADDR": "127.0.0.1",
        "RUNWATCH_PROMETHEUS_PORT": str(exporter_port),
    }


def runwatch_json(env: dict[str, str], *args: str) -> Any:
    done = subprocess.run(
        [*RUNWATCH, *args], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(done.stdout)


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def statuses_reported(prometheus: PrometheusServer, run_id: str) -> set[str]:
    """The statuses Prometheus currently reports as 1 for the run."""
    samples = prometheus.query(f'training_run_status{{run_id="{run_id}"}} == 1')
    return {sample["metric"]["status"] for sample in samples}


@pytest.fixture
def training(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, str]]]:
    exporter_port = free_port()
    env = runwatch_env(tmp_path / "home", exporter_port)
    process = subprocess.Popen(
        [*RUNWATCH, "train", "centralized", "--epochs", "100000", "--patience", "100000",
         "--experiment", "killed", "--accelerator", "cpu", "--no-test"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
        start_new_session=True,
    )  # fmt: skip
    env["EXPORTER_PORT"] = str(exporter_port)
    try:
        yield process, env
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)


@pytest.mark.integration
@pytest.mark.slow
def test_sigkilled_training_is_crashed_everywhere(
    training: tuple[subprocess.Popen[bytes], dict[str, str]], tmp_path: Path
) -> None:
    process, env = training
    prometheus = start_prometheus(tmp_path / "prometheus", [f"127.0.0.1:{env['EXPORTER_PORT']}"])
    try:
        (run,) = wait_for(lambda: runwatch_json(env, "runs", "list", "--json"), 120, "the run")
        run_id = run["run_id"]
        wait_for(lambda: statuses_reported(prometheus, run_id) == {"in_progress"}, 60, "a scrape")
        # Alive for longer than the stale bound: its heartbeats keep it in progress.
        time.sleep(STALE_AFTER_S + 1)
        assert runwatch_json(env, "runs", "show", run_id, "--json")["status"] == "in_progress"

        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)
        time.sleep(STALE_AFTER_S + 1)

        (listed,) = runwatch_json(env, "runs", "list", "--json")
        shown = runwatch_json(env, "runs", "show", run_id, "--json")
        assert listed["status"] == shown["status"] == "crashed"
        assert shown["end_time"] is not None
        exported = subprocess.run(
            [*RUNWATCH, "runs", "export", run_id, "--format", "json", "--out", str(tmp_path)],
            env=env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        document = json.loads(Path(exported.stdout.strip()).read_text())
        assert document["status"] == "crashed"
        doctor = runwatch_json(env, "doctor", "--json")
        database = next(c for c in doctor["checks"] if c["name"] == "database")
        assert "1 crashed" in database["detail"], database
        # Prometheus marks the dead exporter's series stale: nothing says it is running.
        wait_for(lambda: not statuses_reported(prometheus, run_id), 30, "stale series")
    finally:
        prometheus.stop()
