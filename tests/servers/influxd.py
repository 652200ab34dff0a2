"""influxd 1.x: InfluxDB's own line-protocol parser (v1 ``/write``) and InfluxQL (``/query``).

Started from a generated config file: every listener on 127.0.0.1 (the RPC service too), meta,
data and WAL under a temporary directory, reporting and self-monitoring off.

Fixture: ``influxd`` (one server for the session; tests keep apart by database name).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers._process import ServerProcess, free_port, require_binary

CONFIG_TEMPLATE = """\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{root}/meta"
  logging-enabled = false

[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  query-log-enabled = false

[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{http_port}"
  auth-enabled = false
  log-enabled = false
  pprof-enabled = false
  max-body-size = 0

[continuous_queries]
  enabled = false

[subscriber]
  enabled = false
"""


class Influxd:
    def __init__(self, binary: str, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        config = workdir / "influxdb.conf"
        config.write_text(
            CONFIG_TEMPLATE.format(root=workdir, rpc_port=free_port(), http_port=self.port)
        )
        self.process = ServerProcess([binary, "-config", str(config)], workdir / "influxd.log")
        self.process.wait_http(f"{self.url}/ping")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.stop()

    def query(self, q: str, db: str | None = None, method: str = "GET") -> dict[str, Any]:
        params = {"q": q, "epoch": "ns"}
        if db:
            params["db"] = db
        encoded = urllib.parse.urlencode(params)
        if method == "POST":
            request = urllib.request.Request(
                f"{self.url}/query", data=encoded.encode(), method="POST"
            )
        else:
            request = urllib.request.Request(f"{self.url}/query?{encoded}")
        with urllib.request.urlopen(request, timeout=60) as resp:
            result: dict[str, Any] = json.loads(resp.read())
        return result

    def create_database(self, name: str) -> None:
        self.query(f'CREATE DATABASE "{name}"', method="POST")

    def write(self, db: str, body: bytes) -> tuple[int, str]:
        """POST line protocol to v1 ``/write`` (ns precision); returns (status, response text)."""
        query = urllib.parse.urlencode({"db": db, "precision": "ns"})
        request = urllib.request.Request(f"{self.url}/write?{query}", data=body, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=60) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()


@pytest.fixture(scope="session")
def influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influxd]:
    binary = require_binary("influxd", "/usr/bin/influxd*")
    server = Influxd(binary, tmp_path_factory.mktemp("influxd"))
    try:
        yield server
    finally:
        server.stop()
