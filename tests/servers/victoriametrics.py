"""VictoriaMetrics: a real server that accepts influxdb-client's ``/api/v2/write``.

It stores each numeric field as the series ``<measurement>_<field>`` with the tags as labels
(string fields are not stored) and reads back through ``/api/v1/export``. Started with
``-search.latencyOffset=0s`` and force-flushed before each read so fresh points are visible.

Fixtures:
- ``victoriametrics``: one server for the session (tests keep apart by run_id label).
- ``victoriametrics_factory``: builds servers a test can stop and restart on the same port and
  data directory (outage tests); every server it built is stopped at teardown.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers._process import ServerProcess, free_port, require_binary


class VictoriaMetrics:
    def __init__(self, binary: str, workdir: Path, port: int | None = None) -> None:
        self.binary = binary
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.port = port or free_port()
        self.process: ServerProcess | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> VictoriaMetrics:
        if self.process is not None and self.process.alive():
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        self.process = ServerProcess(
            [
                self.binary,
                f"-storageDataPath={self.data_dir}",
                f"-httpListenAddr=127.0.0.1:{self.port}",
                "-search.latencyOffset=0s",
                "-loggerLevel=WARN",
            ],
            self.workdir / f"victoria-metrics.{self.starts}.log",
        )
        self.process.wait_http(f"{self.url}/health")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def force_flush(self) -> None:
        with urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=30) as resp:
            resp.read()

    def export(self, match: str) -> list[dict[str, Any]]:
        """Every stored series matching the selector, as VictoriaMetrics' JSON lines
        (export's default range ends now; this one ends a day ahead)."""
        self.force_flush()
        end = int(time.time()) + 86_400
        body = urllib.parse.urlencode({"match[]": match, "start": "0", "end": str(end)}).encode()
        request = urllib.request.Request(f"{self.url}/api/v1/export", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=120) as resp:
            text = resp.read().decode()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def samples(self, match: str) -> dict[tuple[tuple[str, str], ...], list[tuple[int, float]]]:
        """``{sorted labels incl. __name__: [(timestamp_ms, value), ...]}``."""
        found: dict[tuple[tuple[str, str], ...], list[tuple[int, float]]] = {}
        for series in self.export(match):
            key = tuple(sorted(series["metric"].items()))
            found.setdefault(key, []).extend(zip(series["timestamps"], series["values"]))
        return found


@pytest.fixture(scope="session")
def victoriametrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    binary = require_binary("victoria-metrics", "/usr/bin/victoria-metrics*")
    server = VictoriaMetrics(binary, tmp_path_factory.mktemp("victoriametrics")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def victoriametrics_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[], VictoriaMetrics]]:
    binary = require_binary("victoria-metrics", "/usr/bin/victoria-metrics*")
    built: list[VictoriaMetrics] = []

    def build() -> VictoriaMetrics:
        server = VictoriaMetrics(binary, tmp_path_factory.mktemp("victoriametrics"))
        built.append(server)
        return server

    try:
        yield build
    finally:
        for server in built:
            server.stop()
