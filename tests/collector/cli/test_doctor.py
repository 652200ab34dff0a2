"""``runwatch doctor``: configuration, reachability of each backend, spool backlog."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from collector import Recorder, load_settings, new_run_id
from collector.cli import main
from tests.servers._process import free_port
from tests.servers.victoriametrics import VictoriaMetrics

SECRET = "s3cr3t-token-value"


def doctor_json(capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, dict[str, Any]]:
    code = main(["doctor", "--json", "--timeout", "2", *extra])
    return code, json.loads(capsys.readouterr().out)


def checks_by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {check["name"]: check for check in report["checks"]}


def test_fresh_home_is_healthy_in_spool_only_mode(
    runwatch_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = doctor_json(capsys)
    assert code == 0
    checks = checks_by_name(report)
    assert checks["database"]["ok"] and "(0 runs)" in checks["database"]["detail"]
    assert checks["influxdb"]["ok"] and "not configured" in checks["influxdb"]["detail"]
    assert checks["prometheus"]["detail"] == "exporter disabled (RUNWATCH_PROMETHEUS_PORT=0)"
    assert report["backlog"] == []


def test_backlog_counts_each_runs_unshipped_points(
    runwatch_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    counts = {new_run_id(): 7, new_run_id(): 120}
    for run_id, count in counts.items():
        with Recorder(run_id, experiment="doctor", settings=load_settings()) as rec:
            for step in range(count):
                rec.record("batch", {"step": step})
    code, report = doctor_json(capsys)
    assert code == 0
    found = {item["run_id"]: item for item in report["backlog"]}
    assert {run_id: found[run_id]["unshipped_lines"] for run_id in counts} == counts
    assert all(item["unshipped_bytes"] > 0 for item in found.values())

    main(["doctor"])
    text = capsys.readouterr().out
    assert all(run_id in text for run_id in counts)


def test_unreachable_influxdb_fails_and_never_prints_the_token(
    runwatch_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("INFLUXDB_V2_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("INFLUXDB_V2_TOKEN", SECRET)
    code, report = doctor_json(capsys)
    assert code == 1
    influx = checks_by_name(report)["influxdb"]
    assert not influx["ok"]
    assert "Connection refused" in influx["detail"] or "URLError" in influx["detail"]
    assert SECRET not in json.dumps(report)

    assert main(["doctor"]) == 1
    text = capsys.readouterr().out
    assert "[FAIL] influxdb" in text
    assert SECRET not in text


def test_unreachable_database_fails_with_its_password_masked(
    runwatch_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("psycopg2")
    url = f"postgresql://runwatch:{SECRET}@127.0.0.1:{free_port()}/runwatch"
    monkeypatch.setenv("RUNWATCH_DB_URL", url)
    code, report = doctor_json(capsys)
    assert code == 1
    database = checks_by_name(report)["database"]
    assert not database["ok"]
    assert "127.0.0.1" in database["detail"]
    assert SECRET not in json.dumps(report)


def test_busy_exporter_port_is_reported_not_failed(
    runwatch_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        monkeypatch.setenv("RUNWATCH_PROMETHEUS_PORT", str(port))
        code, report = doctor_json(capsys)
    assert code == 0
    assert "in use" in checks_by_name(report)["prometheus"]["detail"]

    monkeypatch.setenv("RUNWATCH_PROMETHEUS_PORT", str(free_port()))
    code, report = doctor_json(capsys)
    assert "will listen on" in checks_by_name(report)["prometheus"]["detail"]


@pytest.mark.integration
def test_reachable_influxdb_and_postgres_pass(
    runwatch_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    victoriametrics: VictoriaMetrics,
    postgres_url: str,
) -> None:
    monkeypatch.setenv("INFLUXDB_V2_URL", victoriametrics.url)
    monkeypatch.setenv("INFLUXDB_V2_TOKEN", SECRET)
    monkeypatch.setenv("RUNWATCH_DB_URL", postgres_url)
    code, report = doctor_json(capsys)
    checks = checks_by_name(report)
    assert code == 0, report
    assert checks["influxdb"]["ok"] and "answers /health" in checks["influxdb"]["detail"]
    assert checks["database"]["ok"] and checks["database"]["detail"].startswith("postgresql")
    assert SECRET not in json.dumps(report)
