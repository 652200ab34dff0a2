"""End to end, with real servers: a training whose loss turns NaN -> its exporter -> Prometheus
(deploy's scrape job and rules) -> Alertmanager (deploy's template, rendered by its entrypoint)
-> a webhook receiver in this test gets the alert.

Two trainings: a Lightning run with runwatch's telemetry (logger, callbacks, recorder,
exporter: the product's path), and a plain torch loop feeding the exporter directly (the
alerting path alone, so a failure there points at deploy/, not at the adapter)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy._deploy import (
    ALERTMANAGER_ENTRYPOINT,
    ALERTMANAGER_TEMPLATE,
    PROMETHEUS_CONFIG,
    REPO,
    RULE_FILES,
    load_yaml,
)
from tests.servers._process import ServerProcess, free_port, require_binary

LIGHTNING_TRAINER = Path(__file__).with_name("diverging_lightning.py")
TRAINERS = {  # name -> script and its action once the trigger file exists
    "lightning": (LIGHTNING_TRAINER, "nan"),
    "lightning-finish": (LIGHTNING_TRAINER, "finish"),
    "torch-loop": (Path(__file__).with_name("diverging_trainer.py"), "nan"),
}
RUN_ID = "20250101T000000Z-e2ea1ertq0"
ALERT_TIMEOUT_S = 90.0


class WebhookReceiver:
    """Collects the JSON bodies Alertmanager POSTs."""

    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []
        received = self.payloads

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def alerts(self) -> list[dict[str, Any]]:
        return [alert for payload in list(self.payloads) for alert in payload["alerts"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def alertmanager(tmp_path: Path, webhook: WebhookReceiver) -> Iterator[str]:
    binary = require_binary("prometheus-alertmanager", "/usr/bin/alertmanager")
    config = tmp_path / "alertmanager.yml"
    env = os.environ | {
        "ALERTMANAGER_WEBHOOK_URL": webhook.url,
        "ALERTMANAGER_TEMPLATE": str(ALERTMANAGER_TEMPLATE),
        "ALERTMANAGER_CONFIG": str(config),
    }
    port = free_port()
    data = tmp_path / "alertmanager-data"
    data.mkdir()
    server = ServerProcess(
        [
            "/bin/sh",
            str(ALERTMANAGER_ENTRYPOINT),  # renders the template, then execs the server
            binary,
            f"--config.file={config}",
            f"--storage.path={data}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        tmp_path / "alertmanager.log",
        env=env,
    )
    try:
        server.wait_http(f"http://127.0.0.1:{port}/-/ready")
        yield f"127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def trigger(tmp_path: Path) -> Path:
    """The trainer diverges (or finishes) once this file exists."""
    return tmp_path / "trigger"


@pytest.fixture(params=["lightning", "torch-loop"])
def trainer(request: pytest.FixtureRequest, tmp_path: Path, trigger: Path) -> Iterator[str]:
    port = free_port()
    env = os.environ | {
        "PYTHONPATH": str(REPO),
        "RUNWATCH_HOME": str(tmp_path / "runwatch-home"),
        "RUNWATCH_DB_URL": f"sqlite:///{tmp_path / 'runs.db'}",
    }
    for name in ("INFLUXDB_V2_URL", "INFLUXDB_V2_ORG", "INFLUXDB_V2_TOKEN", "INFLUXDB_V2_BUCKET"):
        env.pop(name, None)
    script, action = TRAINERS[request.param]
    process = ServerProcess(
        [sys.executable, str(script), RUN_ID, str(port), str(trigger), action],
        tmp_path / "trainer.log",
        env=env,
    )
    try:
        process.wait_http(f"http://127.0.0.1:{port}/metrics", timeout=60)
        yield f"127.0.0.1:{port}"
    finally:
        process.stop()


def prometheus_config(trainer: str, alertmanager: str) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with this test's targets and one-second intervals."""
    config: dict[str, Any] = load_yaml(PROMETHEUS_CONFIG)
    config["global"] |= {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(path) for path in RULE_FILES]
    config["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": [alertmanager]}]}]
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "runwatch"]
    job.pop("file_sd_configs", None)
    job["static_configs"] = [{"targets": [trainer]}]
    config["scrape_configs"] = [job]
    return config


@pytest.fixture
def prometheus(tmp_path: Path, trainer: str, alertmanager: str) -> Iterator[str]:
    binary = require_binary("prometheus")
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(trainer, alertmanager)))
    port = free_port()
    server = ServerProcess(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        tmp_path / "prometheus.log",
    )
    try:
        server.wait_http(f"http://127.0.0.1:{port}/-/ready")
        yield f"127.0.0.1:{port}"
    finally:
        server.stop()


def wait_for_alert(webhook: WebhookReceiver, alertname: str) -> dict[str, Any]:
    deadline = time.monotonic() + ALERT_TIMEOUT_S
    while time.monotonic() < deadline:
        for alert in webhook.alerts():
            if alert["labels"].get("alertname") == alertname and alert["status"] == "firing":
                return alert
        time.sleep(0.5)
    raise AssertionError(f"no {alertname} alert reached the webhook; got {webhook.alerts()}")


def wait_for_value(prometheus: str, promql: str, timeout: float = ALERT_TIMEOUT_S) -> float | None:
    """The first finite value `promql` returns, or None after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for sample in query(prometheus, promql):
            value = float(sample["value"][1])
            if math.isfinite(value):
                return value
        time.sleep(0.5)
    return None


def query(prometheus: str, promql: str) -> list[dict[str, Any]]:
    url = f"http://{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as response:
        result: list[dict[str, Any]] = json.load(response)["data"]["result"]
    return result


def promtool_check_config(config: Path) -> subprocess.CompletedProcess[str]:
    binary = require_binary("promtool")
    return subprocess.run(
        [binary, "check", "config", str(config)], capture_output=True, text=True, timeout=60
    )


@pytest.mark.integration
@pytest.mark.slow
def test_nan_loss_reaches_the_webhook(
    webhook: WebhookReceiver, prometheus: str, trigger: Path, tmp_path: Path
) -> None:
    assert promtool_check_config(tmp_path / "prometheus.yml").returncode == 0
    loss = wait_for_value(prometheus, f'training_train_loss{{run_id="{RUN_ID}"}}')
    assert loss is not None and loss > 0, "Prometheus never scraped a finite training loss"
    time.sleep(3)  # a few evaluations of the rules on a healthy run
    assert webhook.alerts() == []

    trigger.touch()
    alert = wait_for_alert(webhook, "TrainingLossNaN")

    assert alert["labels"] | {"instance": "-"} == {
        "alertname": "TrainingLossNaN",
        "job": "runwatch",
        "instance": "-",
        "run_id": RUN_ID,
        "loss": "train",
        "severity": "critical",
    }
    assert alert["annotations"]["summary"] == f"Run {RUN_ID}: train loss is not finite"
    [loss] = query(prometheus, f'training_train_loss{{run_id="{RUN_ID}"}}')
    assert loss["value"][1] == "NaN"
    names = {a["labels"]["alertname"] for a in webhook.alerts()}
    assert names == {"TrainingLossNaN"}, f"unexpected alerts: {names}"


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["lightning-finish"], indirect=True)
def test_finished_run_is_seen_completed_before_its_exporter_stops(
    prometheus: str, trigger: Path
) -> None:
    """TrainerDown tells a crash from an ending by the last status Prometheus scraped."""
    in_progress = f'training_run_status{{run_id="{RUN_ID}", status="in_progress"}}'
    assert wait_for_value(prometheus, in_progress) == 1

    trigger.touch()
    # The run finished: its exporter stopped answering.
    assert wait_for_value(prometheus, 'up{job="runwatch"} == 0', timeout=60) == 0

    completed = f'last_over_time(training_run_status{{run_id="{RUN_ID}", status="completed"}}[1m])'
    assert wait_for_value(prometheus, f"{completed} == 1", timeout=5) == 1
