"""Helpers for the tests that run Flux on the real ``influxdb2`` server.

- :class:`RecordingProxy`: a forwarding HTTP proxy on 127.0.0.1 in front of the real influxd.
  It records each request exactly as influxdb-client sends it (path, headers, body) with the
  status the real server answered, and passes that answer back unchanged, so a test can check
  what went over the wire *and* what the real server made of it (queries and writes alike).
- :func:`spool_points`: the points a run wrote, read back from its spool files (the product's
  append-only record of every point, independent of InfluxDB), for what the relational store
  does not keep (gradient norms, batch throughput, client evaluations, events).
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import json
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from collector.spool import list_streams

# Hop-by-hop headers a proxy must not forward (the body is re-sent with its own length).
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass
class WireRequest:
    method: str
    path: str
    headers: dict[str, str]
    raw_body: bytes
    status: int = 0
    """What the real server answered (0 until it has)."""

    @property
    def encoding(self) -> str | None:
        return self.headers.get("Content-Encoding")

    @property
    def payload(self) -> bytes:
        """The body as sent before compression (line protocol, for a write)."""
        return gzip.decompress(self.raw_body) if self.encoding == "gzip" else self.raw_body

    @property
    def body(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.raw_body)
        return parsed

    @property
    def query(self) -> str:
        return str(self.body["query"])

    @property
    def extern_options(self) -> dict[str, Any]:
        """``option NAME = <literal>`` statements of the extern, as {NAME: literal node}."""
        options = {}
        for statement in self.body["extern"]["body"]:
            assert statement["type"] == "OptionStatement", statement
            assignment = statement["assignment"]
            options[assignment["id"]["name"]] = assignment["init"]
        return options


class RecordingProxy:
    """Forwards every request to ``target`` (an http:// base URL) and records it."""

    def __init__(self, target: str) -> None:
        parsed = urllib.parse.urlsplit(target)
        self._target = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.requests: list[WireRequest] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def queries(self) -> list[WireRequest]:
        return [r for r in self.requests if r.path.startswith("/api/v2/query")]

    @property
    def writes(self) -> list[WireRequest]:
        return [r for r in self.requests if r.path.startswith("/api/v2/write")]

    def start(self) -> RecordingProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    def _forward(self, request: WireRequest) -> tuple[int, list[tuple[str, str]], bytes]:
        with self._lock:
            self.requests.append(request)
        connection = http.client.HTTPConnection(*self._target, timeout=60)
        try:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
            connection.request(request.method, request.path, request.raw_body or None, headers)
            response = connection.getresponse()
            payload = response.read()
            request.status = response.status
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
            return response.status, kept, payload
        finally:
            connection.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length) if length else b""
                request = WireRequest(self.command, self.path, dict(self.headers.items()), raw)
                status, headers, payload = proxy._forward(request)
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _relay

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler


@contextlib.contextmanager
def recording_proxy(target: str) -> Iterator[RecordingProxy]:
    proxy = RecordingProxy(target).start()
    try:
        yield proxy
    finally:
        proxy.stop()


# -- the spool ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SpooledPoint:
    measurement: str
    tags: dict[str, str]
    fields: dict[str, float | str]
    time_ns: int


def spool_points(home: Path, run_id: str, measurement: str) -> list[SpooledPoint]:
    """Every ``measurement`` point of ``run_id`` in the spool under ``home`` (all of the run's
    streams: a federated run's clients write their own), in time order."""
    found = []
    for stream in list_streams(home / "spool", run_id):
        for line in stream.path.read_text(encoding="utf-8").splitlines():
            point = _parse_line(line)
            if point is not None and point.measurement == measurement:
                found.append(point)
    return sorted(found, key=lambda p: p.time_ns)


def _split_unescaped(text: str, separator: str) -> list[str]:
    """``text`` split at ``separator`` outside double quotes and not after a backslash."""
    parts, current, quoted, index = [], [], False, 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            current.append(text[index : index + 2])
            index += 2
            continue
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    parts.append("".join(current))
    return parts


def _unescape(text: str) -> str:
    for escaped in (" ", ",", "="):
        text = text.replace("\\" + escaped, escaped)
    return text


def _parse_line(line: str) -> SpooledPoint | None:
    if not line or line.startswith("#"):
        return None
    head, field_text, time_text = _split_unescaped(line, " ")
    measurement, *tag_pairs = _split_unescaped(head, ",")
    tags = dict(_unescape(p).split("=", 1) for p in tag_pairs)
    fields: dict[str, float | str] = {}
    for pair in _split_unescaped(field_text, ","):
        key, value = pair.split("=", 1)
        fields[_unescape(key)] = value[1:-1] if value.startswith('"') else float(value)
    return SpooledPoint(_unescape(measurement), tags, fields, int(time_text))
