"""InfluxDB OSS 2 (``influxd`` built from source by deploy/servers/influxd.sh): the real
``/api/v2/write`` and Flux ``/api/v2/query``.

Started on 127.0.0.1 (a free HTTP port; bolt, sqlite and engine files under a temporary
directory; telemetry reporting and the UI off), then set up through its own API: an org, a
first bucket and an operator token (``/api/v2/setup``), and beside it a write-only and a
read-only token for the org's buckets, as a real deployment would hand out.

Fixtures:
- ``influxdb2``: one server for the session.
- ``influxdb2_bucket``: a fresh bucket per test (tests keep apart by bucket), its name.
"""

from __future__ import annotations

import contextlib
import gzip as gzip_module
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from collector.config import Settings
from tests.servers._process import ServerProcess, free_port, under_ci

REPO = Path(__file__).resolve().parents[2]
VERSIONS_FILE = REPO / "deploy" / "servers" / "versions.env"
BUILD_SCRIPT = REPO / "deploy" / "servers" / "influxd.sh"
ORG = "runwatch"
FIRST_BUCKET = "training"


def pinned_versions() -> dict[str, str]:
    """``deploy/servers/versions.env`` as ``{NAME: value}``."""
    found = {}
    for line in VERSIONS_FILE.read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"([A-Z_]+)=(\S+)", line.strip())
        if match:
            found[match[1]] = match[2]
    return found


def built_influxd() -> Path:
    """Where deploy/servers/influxd.sh puts the pinned ``influxd`` (``RUNWATCH_INFLUXD``
    overrides); the file may not exist."""
    override = os.environ.get("RUNWATCH_INFLUXD")
    if override:
        return Path(override)
    version = pinned_versions()["INFLUXD_VERSION"]
    cache = Path(
        os.environ.get("RUNWATCH_SERVERS_CACHE", Path.home() / ".cache" / "runwatch" / "servers")
    )
    return cache / f"influxd-{version}" / "bin" / "influxd"


def influxd_binary() -> str:
    """The built ``influxd``. Missing: skip locally, fail under CI=true (``.ci/run`` builds
    it first)."""
    binary = built_influxd()
    if binary.is_file() and os.access(binary, os.X_OK):
        return str(binary)
    message = f"influxd not built at {binary} (run {BUILD_SCRIPT.relative_to(REPO)})"
    if under_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@dataclass(frozen=True)
class Response:
    status: int
    text: str
    headers: Mapping[str, str]

    def json(self) -> Any:
        return json.loads(self.text)


class InfluxDB2:
    def __init__(self, binary: str, workdir: Path, extra_args: Sequence[str] = ()) -> None:
        """``extra_args``: more ``influxd run`` flags (a server a test starts for itself)."""
        self.workdir = workdir
        self.port = free_port()
        self.process = ServerProcess(
            [
                binary,
                "run",
                f"--http-bind-address=127.0.0.1:{self.port}",
                f"--bolt-path={workdir / 'influxd.bolt'}",
                f"--sqlite-path={workdir / 'influxd.sqlite'}",
                f"--engine-path={workdir / 'engine'}",
                "--reporting-disabled",
                "--ui-disabled",
                "--log-level=warn",
                # fsync per write batch is the default; tests need no durability across crashes
                "--storage-wal-fsync-delay=0s",
                *extra_args,
            ],
            workdir / "influxd.log",
            env={
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(workdir),
                # No influxd config file from the working directory or ~/.influxdbv2 is read.
                "INFLUXD_CONFIG_PATH": str(workdir / "config.toml"),
            },
            cwd=workdir,
        )
        self.process.wait_http(f"{self.url}/health", timeout=60)
        self.org = ORG
        self.operator_token = f"operator-{uuid.uuid4().hex}"
        setup = self.request(
            "POST",
            "/api/v2/setup",
            {
                "username": "runwatch-admin",
                "password": uuid.uuid4().hex,
                "org": ORG,
                "bucket": FIRST_BUCKET,
                "token": self.operator_token,
            },
            token=None,
        )
        assert setup.status == 201, setup.text
        self.org_id: str = setup.json()["org"]["id"]
        self.write_token = self._token("write")
        self.read_token = self._token("read")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.stop()

    # -- HTTP API ---------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: object | bytes | None = None,
        *,
        token: str | None = "operator",
        headers: Mapping[str, str] | None = None,
        timeout: float = 60,
    ) -> Response:
        """One API call; ``token="operator"`` sends the operator token, ``None`` none."""
        sent_headers = dict(headers or {})
        if token is not None:
            sent_headers["Authorization"] = (
                f"Token {self.operator_token if token == 'operator' else token}"
            )
        data: bytes | None
        if body is None or isinstance(body, bytes):
            data = body
        else:
            data = json.dumps(body).encode()
            sent_headers.setdefault("Content-Type", "application/json")
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers=sent_headers
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                return Response(resp.status, resp.read().decode(), dict(resp.headers))
        except urllib.error.HTTPError as exc:
            return Response(exc.code, exc.read().decode(), dict(exc.headers))

    def _token(self, action: str) -> str:
        created = self.request(
            "POST",
            "/api/v2/authorizations",
            {
                "orgID": self.org_id,
                "description": f"runwatch tests: {action} buckets",
                "permissions": [
                    {"action": action, "resource": {"type": "buckets", "orgID": self.org_id}}
                ],
            },
        )
        assert created.status == 201, created.text
        token: str = created.json()["token"]
        return token

    def create_bucket(self, name: str, retention_s: int = 0) -> str:
        """A new bucket of the org (retention 0 = forever); returns its id."""
        rules = [{"type": "expire", "everySeconds": retention_s}] if retention_s else []
        created = self.request(
            "POST",
            "/api/v2/buckets",
            {"orgID": self.org_id, "name": name, "retentionRules": rules},
        )
        assert created.status == 201, created.text
        bucket_id: str = created.json()["id"]
        return bucket_id

    def write(
        self,
        bucket: str,
        lines: bytes,
        *,
        precision: str = "ns",
        token: str | None = None,
        gzip: bool = False,
    ) -> Response:
        """POST line protocol to ``/api/v2/write`` with the write token (or ``token``)."""
        query = urllib.parse.urlencode({"org": self.org, "bucket": bucket, "precision": precision})
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if gzip:
            lines = gzip_module.compress(lines)
            headers["Content-Encoding"] = "gzip"
        return self.request(
            "POST",
            f"/api/v2/write?{query}",
            lines,
            token=token or self.write_token,
            headers=headers,
        )

    # -- Flux -------------------------------------------------------------------------------

    def query(self, flux: str, params: Mapping[str, object] | None = None) -> list[dict[str, Any]]:
        """Every record the query returns (columns by name; ``table`` and ``result`` too),
        read with influxdb-client and the read-only token."""
        return [
            dict(record.values)
            for table in self.query_tables(flux, params)
            for record in table.records
        ]

    def query_tables(self, flux: str, params: Mapping[str, object] | None = None) -> Any:
        """influxdb-client's ``TableList`` for the query (group keys kept apart)."""
        from influxdb_client.client.influxdb_client import InfluxDBClient

        with InfluxDBClient(
            url=self.url, token=self.read_token, org=self.org, timeout=60_000
        ) as client:
            return client.query_api().query(flux, params=dict(params) if params else None)

    def settings(self, home: Path, bucket: str, *, db_url: str | None = None) -> Settings:
        """runwatch settings that write to ``bucket`` with the write-only token."""
        return Settings(
            home=home,
            db_url=db_url or f"sqlite:///{home / 'runwatch.db'}",
            influx_url=self.url,
            influx_org=self.org,
            influx_token=self.write_token,
            influx_bucket=bucket,
            prometheus_port=0,
        )

    def reader_settings(self, settings: Settings) -> Settings:
        """The same settings with the read-only token (what ``compare`` runs with)."""
        return settings.with_overrides(influx_token=self.read_token)


@pytest.fixture(scope="session")
def influxdb2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB2]:
    binary = influxd_binary()
    server = InfluxDB2(binary, tmp_path_factory.mktemp("influxdb2"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def influxdb2_bucket(influxdb2: InfluxDB2) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:12]}"
    bucket_id = influxdb2.create_bucket(name)
    yield name
    with contextlib.suppress(OSError):
        influxdb2.request("DELETE", f"/api/v2/buckets/{bucket_id}")
