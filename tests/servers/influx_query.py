"""A stand-in for InfluxDB 2's ``POST /api/v2/query``: a real HTTP server on 127.0.0.1.

No InfluxDB 2 can run here, and VictoriaMetrics does not execute Flux. This server records
every query request exactly as influxdb-client sends it (path, headers, raw body, parsed JSON)
and answers with annotated CSV that the test registered for that query text (an empty result
otherwise), so the client's own CSV parser reads the answer.

Fixture ``influx_query_server``: one server per test, stopped at teardown.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

Row = Mapping[str, object]


@dataclass(frozen=True)
class QueryRequest:
    path: str
    headers: dict[str, str]
    raw_body: bytes

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


@dataclass(frozen=True)
class ErrorAnswer:
    status: int
    body: str


class InfluxQueryServer:
    def __init__(self) -> None:
        self.requests: list[QueryRequest] = []
        self._answers: dict[str, str | ErrorAnswer] = {}
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> InfluxQueryServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    def answer(
        self, flux: str, tables: Sequence[Sequence[Row]], *, result: str = "_result"
    ) -> None:
        """Answer requests whose query text is ``flux`` with these tables (rows of columns)."""
        self._answers[flux] = annotated_csv(tables, result=result)

    def fail(self, flux: str, status: int, body: str) -> None:
        self._answers[flux] = ErrorAnswer(status, body)

    def _respond(self, request: QueryRequest) -> tuple[int, str, str]:
        with self._lock:
            self.requests.append(request)
        answer = self._answers.get(request.query, "")
        if isinstance(answer, ErrorAnswer):
            return answer.status, "application/json", answer.body
        return 200, "text/csv; charset=utf-8", answer

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                if not self.path.startswith("/api/v2/query"):
                    self.send_error(404)
                    return
                request = QueryRequest(self.path, dict(self.headers.items()), raw)
                status, content_type, text = server._respond(request)
                payload = text.encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler


def annotated_csv(tables: Sequence[Sequence[Row]], *, result: str = "_result") -> str:
    """InfluxDB's annotated CSV for these tables: one annotation block per table, column
    types from the Python values (str, bool, int, float, datetime; None is an empty cell)."""
    blocks = []
    for index, rows in enumerate(tables):
        if not rows:
            continue
        columns = list(rows[0])
        types = [_csv_type(_first_value(rows, column)) for column in columns]
        lines = [
            ",".join(["#datatype", "string", "long", *types]),
            ",".join(["#group", "false", "false", *["false"] * len(columns)]),
            ",".join(["#default", result, "", *[""] * len(columns)]),
            ",".join(["", "result", "table", *columns]),
        ]
        for row in rows:
            cells = [_csv_cell(row.get(column)) for column in columns]
            lines.append(",".join(["", "", str(index), *cells]))
        blocks.append("\r\n".join(lines) + "\r\n")
    return "\r\n".join(blocks)


def _first_value(rows: Sequence[Row], column: str) -> object:
    return next((row[column] for row in rows if row.get(column) is not None), "")


def _csv_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, datetime):
        return "dateTime:RFC3339Nano"
    return "string"


def _csv_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


@pytest.fixture
def influx_query_server() -> Iterator[InfluxQueryServer]:
    server = InfluxQueryServer().start()
    try:
        yield server
    finally:
        server.stop()
