"""Prometheus (Debian package ``prometheus``) and ``promtool``, on 127.0.0.1 with temp dirs.

- ``start_prometheus(workdir, targets, ...)``: a server scraping ``targets`` (``host:port``)
  every ``scrape_interval``, optionally with rule files and an Alertmanager; call ``.stop()``.
- ``prometheus_scraper`` fixture (module scope): a server scraping one exporter port that is
  free when the fixture starts (``.exporter_port``); point ``RUNWATCH_PROMETHEUS_PORT`` at it.
- ``promtool`` fixture: the path of ``promtool`` (skips locally / fails under CI when missing).
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.servers._process import ServerProcess, free_port, require_binary


class PrometheusServer:
    def __init__(self, process: ServerProcess, port: int, exporter_port: int | None) -> None:
        self.process = process
        self.port = port
        self.exporter_port = exporter_port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as resp:
            body = json.loads(resp.read().decode())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query (``at``: evaluation time, default now)."""
        params = {"query": promql} if at is None else {"query": promql, "time": f"{at}"}
        data = self.api("query", **params)
        return list(data["result"])

    def query_range(
        self, promql: str, start: float, end: float, step: str = "1s"
    ) -> list[dict[str, Any]]:
        data = self.api("query_range", query=promql, start=f"{start}", end=f"{end}", step=step)
        return list(data["result"])

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets")["activeTargets"])

    def wait_for_scrape(self, timeout: float = 30.0) -> None:
        """Until every active target has been scraped successfully once."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            targets = self.targets()
            if targets and all(t.get("health") == "up" for t in targets):
                return
            time.sleep(0.2)
        raise AssertionError(f"targets not up after {timeout}s: {self.targets()}")

    def stop(self) -> None:
        self.process.stop()


def start_prometheus(
    workdir: Path,
    targets: Sequence[str],
    *,
    scrape_interval: str = "1s",
    rule_files: Sequence[Path] = (),
    alertmanager: str | None = None,
    evaluation_interval: str = "1s",
    exporter_port: int | None = None,
) -> PrometheusServer:
    binary = require_binary("prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": evaluation_interval,
        },
        "scrape_configs": [
            {"job_name": "runwatch", "static_configs": [{"targets": list(targets)}]}
        ],
    }
    if rule_files:
        config["rule_files"] = [str(p) for p in rule_files]
    if alertmanager:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    config_path = workdir / "prometheus.yml"
    config_path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    process = ServerProcess(
        [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        workdir / "prometheus.log",
        cwd=workdir,
    )
    process.wait_http(f"http://127.0.0.1:{port}/-/ready", timeout=60.0)
    return PrometheusServer(process, port, exporter_port)


@pytest.fixture(scope="module")
def prometheus_scraper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """A Prometheus scraping 127.0.0.1:<exporter_port> every second."""
    exporter_port = free_port()
    server = start_prometheus(
        tmp_path_factory.mktemp("prometheus"),
        [f"127.0.0.1:{exporter_port}"],
        exporter_port=exporter_port,
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_binary("promtool")
