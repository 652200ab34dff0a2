"""The shipper: batches, gzip, acks, retries with backoff, poison lines, config errors.

InfluxDB 2 never answers 429, 503 or 413 on ``/api/v2/write`` (see test_influxdb2_write.py,
which drives the real influxd through every answer it does give), and VictoriaMetrics never
answers 4xx/5xx on purpose, so these tests drive the real influxdb-client against a small HTTP
endpoint that answers the way InfluxDB 2's ``/api/v2/write`` does (204; 400 "partial write"
naming the bad line; 401; 503)."""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from collector.config import load_settings
from collector.shipper import (
    ConfigWriteError,
    InfluxWriteTarget,
    RejectedLinesError,
    RetryPolicy,
    ShipperThread,
    ShipTuning,
    StreamShipper,
    TransientWriteError,
    classify_status,
    is_loopback,
    ship_until_caught_up,
    target_for,
)
from collector.spool import SpoolStream, SpoolWriter, read_ack
from tests.servers._process import free_port

RUN = "20260101T000000Z-shipperxyz"
FAST = ShipTuning(
    batch_lines=100,
    request_timeout_s=5.0,
    retry=RetryPolicy(max_attempts=5, base_delay_s=0.01, max_delay_s=0.05),
)


@dataclass
class Request:
    path: str
    encoding: str | None
    body: bytes
    at: float


@dataclass
class FakeInfluxWrite:
    """Answers like InfluxDB 2's write endpoint; ``respond`` picks the status per body."""

    url: str
    requests: list[Request] = field(default_factory=list)
    respond: Callable[[bytes, int], tuple[int, str]] = lambda body, n: (204, "")
    responses: list[tuple[int, str]] = field(default_factory=list)

    @property
    def accepted_lines(self) -> list[bytes]:
        found = []
        for index, request in enumerate(self.requests):
            status, _ = self.responses[index]
            if status == 204:
                found.extend(line for line in request.body.split(b"\n") if line)
            elif status == 400:
                found.extend(
                    line for line in request.body.split(b"\n") if line and b"poison" not in line
                )
        return found


@pytest.fixture
def influx_write() -> Iterator[FakeInfluxWrite]:
    fake = FakeInfluxWrite(url="")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            encoding = self.headers.get("Content-Encoding")
            body = gzip.decompress(raw) if encoding == "gzip" else raw
            with lock:
                fake.requests.append(Request(self.path, encoding, body, time.monotonic()))
                status, message = fake.respond(body, len(fake.requests))
                fake.responses.append((status, message))
            payload = message.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


def spool_lines(tmp_path: Path, count: int, poison_at: frozenset[int] = frozenset()) -> SpoolWriter:
    writer = SpoolWriter.open(tmp_path, RUN)
    writer.append(b"".join(_line(i, i in poison_at) for i in range(count)))
    return writer


def _line(i: int, poison: bool) -> bytes:
    field_text = b"poison=1" if poison else b"x=%d.0" % i
    return b"epoch,run_id=r %s %d\n" % (field_text, 10**18 + i)


def target(fake: FakeInfluxWrite) -> InfluxWriteTarget:
    return InfluxWriteTarget(fake.url, token="secret", org="org", bucket="training")


def ship_all(
    writer: SpoolWriter, fake: FakeInfluxWrite, tuning: ShipTuning = FAST, **kwargs: object
):
    fd = os.open(writer.stream.path, os.O_RDONLY)
    try:
        shipper = StreamShipper(writer.stream, fd, target(fake), tuning)
        outcome = ship_until_caught_up(
            shipper, lambda: writer.written, tuning=tuning, max_attempts=5, **kwargs
        )
        return shipper, outcome
    finally:
        os.close(fd)


def test_ships_batches_gzipped_to_api_v2_write_and_acks(tmp_path: Path, influx_write) -> None:
    writer = spool_lines(tmp_path, 250)
    shipper, outcome = ship_all(writer, influx_write)
    assert outcome.caught_up and outcome.error is None
    assert [len(r.body.splitlines()) for r in influx_write.requests] == [100, 100, 50]
    first = influx_write.requests[0]
    assert first.path.startswith("/api/v2/write?")
    assert "bucket=training" in first.path and "precision=ns" in first.path
    assert first.encoding == "gzip"
    assert influx_write.accepted_lines == writer.stream.path.read_bytes().splitlines()
    assert read_ack(writer.stream) == writer.written == shipper.acked
    assert shipper.lines_shipped == 250
    writer.close()


GROWING = dataclasses.replace(FAST, first_batch_lines=100, batch_lines=400)


@pytest.mark.parametrize("in_flight", [1, 2])
def test_batches_start_small_and_double_while_full_ones_are_acknowledged(
    tmp_path: Path, influx_write, in_flight: int
) -> None:
    writer = spool_lines(tmp_path, 2_000)
    tuning = dataclasses.replace(GROWING, requests_in_flight=in_flight)
    shipper, outcome = ship_all(writer, influx_write, tuning)
    assert outcome.caught_up and outcome.error is None
    # two requests in flight may reach the server in either order: take them in spool order
    bodies = sorted((r.body for r in influx_write.requests), key=lambda body: body.split()[-1])
    sizes = [len(body.splitlines()) for body in bodies]
    assert sizes[0] == 100 and max(sizes) == 400
    assert sizes == sorted(sizes[:-1]) + sizes[-1:]  # never smaller while all is well
    assert sizes.count(400) >= 3
    assert b"".join(bodies).splitlines() == writer.stream.path.read_bytes().splitlines()
    assert read_ack(writer.stream) == writer.written == shipper.acked
    writer.close()


def test_catching_up_with_the_writer_keeps_the_batch_size(tmp_path: Path, influx_write) -> None:
    writer = spool_lines(tmp_path, 1_000)
    fd = os.open(writer.stream.path, os.O_RDONLY)
    try:
        shipper = StreamShipper(writer.stream, fd, target(influx_write), GROWING)

        def catch_up() -> None:
            outcome = ship_until_caught_up(
                shipper, lambda: writer.written, tuning=GROWING, max_attempts=5
            )
            assert outcome.caught_up

        catch_up()
        resumed_at = len(influx_write.requests)
        writer.append(b"".join(_line(i, False) for i in range(1_000, 2_000)))
        catch_up()
    finally:
        os.close(fd)
    sizes = [len(r.body.splitlines()) for r in influx_write.requests]
    assert sizes[:3] == [100, 200, 400] and sizes[resumed_at] == 400
    assert influx_write.accepted_lines == writer.stream.path.read_bytes().splitlines()
    writer.close()


def test_after_a_failed_request_batches_start_small_again(tmp_path: Path, influx_write) -> None:
    """A server that went away gets first-size batches: a shipper retrying against a down
    server holds no more than ``first_batch_lines`` in memory for each attempt."""
    influx_write.respond = lambda body, n: (
        (503, '{"message":"unavailable"}') if n in (4, 5) else (204, "")
    )
    writer = spool_lines(tmp_path, 2_000)
    _, outcome = ship_all(writer, influx_write, GROWING)
    assert outcome.caught_up
    sizes = [len(r.body.splitlines()) for r in influx_write.requests]
    assert sizes[:3] == [100, 200, 400]
    assert sizes[3] == 400 and sizes[4] == 100  # the failed 400, then its retry from 100
    assert sizes[5:8] == [100, 200, 400]
    assert influx_write.accepted_lines == writer.stream.path.read_bytes().splitlines()
    assert read_ack(writer.stream) == writer.written
    writer.close()


def test_resumes_from_the_ack_and_never_ships_a_torn_tail(tmp_path: Path, influx_write) -> None:
    writer = spool_lines(tmp_path, 30)
    ship_all(writer, influx_write)
    sent = len(influx_write.requests)
    writer.append(_line(30, False) + _line(31, False))
    with writer.stream.path.open("ab") as raw:
        raw.write(b"epoch,run_id=r x=")  # a torn tail
    fd = os.open(writer.stream.path, os.O_RDONLY)
    shipper = StreamShipper(writer.stream, fd, target(influx_write), FAST)
    end = os.fstat(fd).st_size
    outcome = ship_until_caught_up(shipper, lambda: end, tuning=FAST, max_attempts=5)
    os.close(fd)
    assert outcome.caught_up
    assert [r.body for r in influx_write.requests[sent:]] == [_line(30, False) + _line(31, False)]
    writer.close()


def test_transient_errors_are_retried_with_growing_backoff(tmp_path: Path, influx_write) -> None:
    influx_write.respond = lambda body, n: (
        (503, '{"message":"unavailable"}') if n <= 3 else (204, "")
    )
    writer = spool_lines(tmp_path, 10)
    failures: list[Exception] = []
    _, outcome = ship_all(writer, influx_write, on_failure=failures.append)
    assert outcome.caught_up
    assert len(failures) == 3 and all(isinstance(f, TransientWriteError) for f in failures)
    assert all(f.status == 503 for f in failures)  # type: ignore[attr-defined]
    times = [r.at for r in influx_write.requests]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] >= 0.005 and gaps[2] >= 0.02  # 50-100% of 0.01, 0.02, 0.04 s
    assert read_ack(writer.stream) == writer.written
    writer.close()


def test_gives_up_after_max_attempts_and_keeps_the_data(tmp_path: Path, influx_write) -> None:
    influx_write.respond = lambda body, n: (500, '{"message":"internal error"}')
    writer = spool_lines(tmp_path, 10)
    _, outcome = ship_all(writer, influx_write)
    assert not outcome.caught_up
    assert isinstance(outcome.error, TransientWriteError)
    assert len(influx_write.requests) == 5
    assert read_ack(writer.stream) == 0
    writer.close()


def test_a_poison_line_is_quarantined_and_the_rest_shipped(tmp_path: Path, influx_write) -> None:
    def respond(body: bytes, n: int) -> tuple[int, str]:
        if b"poison" in body:
            return 400, '{"code":"invalid","message":"partial write: unable to parse poison line"}'
        return 204, ""

    influx_write.respond = respond
    writer = spool_lines(tmp_path, 250, poison_at=frozenset({7, 180}))
    shipper, outcome = ship_all(writer, influx_write)
    assert outcome.caught_up
    good = [line for line in writer.stream.path.read_bytes().splitlines() if b"poison" not in line]
    assert set(influx_write.accepted_lines) == set(good)
    assert shipper.lines_rejected == 2
    rejected = writer.stream.rejected_path.read_bytes().splitlines()
    assert [line for line in rejected if not line.startswith(b"#")] == [
        _line(7, True).rstrip(),
        _line(180, True).rstrip(),
    ]
    assert all(b"HTTP 400" in line for line in rejected if line.startswith(b"#"))
    assert read_ack(writer.stream) == writer.written
    assert len(influx_write.requests) < 40  # bisection, not one request per line
    writer.close()


def test_a_config_error_stops_at_once_without_dropping(tmp_path: Path, influx_write) -> None:
    influx_write.respond = lambda body, n: (
        401,
        '{"code":"unauthorized","message":"unauthorized access"}',
    )
    writer = spool_lines(tmp_path, 10)
    _, outcome = ship_all(writer, influx_write)
    assert isinstance(outcome.error, ConfigWriteError) and outcome.error.status == 401
    assert len(influx_write.requests) == 1
    assert read_ack(writer.stream) == 0
    assert not writer.stream.rejected_path.exists()
    writer.close()


def test_connection_refused_is_transient() -> None:
    dead = InfluxWriteTarget(f"http://127.0.0.1:{free_port()}", token=None, org=None, bucket="b")
    with pytest.raises(TransientWriteError):
        dead.write(b"epoch,run_id=r x=1.0 1\n", timeout_s=2.0)
    dead.close()


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, RejectedLinesError),
        (413, RejectedLinesError),
        (422, RejectedLinesError),
        (401, ConfigWriteError),
        (403, ConfigWriteError),
        (404, ConfigWriteError),
        (408, TransientWriteError),
        (429, TransientWriteError),
        (500, TransientWriteError),
        (503, TransientWriteError),
    ],
)
def test_status_classification(status: int, kind: type) -> None:
    error = classify_status(status, "some\nbody")
    assert isinstance(error, kind) and error.status == status
    assert "\n" not in str(error)


def test_backoff_is_exponential_capped_and_jittered() -> None:
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=10.0)
    for attempt, cap in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (30, 10.0)):
        delays = {policy.delay(attempt) for _ in range(50)}
        assert all(cap * 0.5 <= d <= cap for d in delays)
        assert len(delays) > 1


def test_newlines_in_text_reach_the_wire_raw(tmp_path: Path, influx_write) -> None:
    writer = SpoolWriter.open(tmp_path, RUN)
    writer.append(b'event,run_id=r,event=alert text="a\x1eb",value=1.0 1\n')
    ship_all(writer, influx_write)
    assert influx_write.requests[0].body == b'event,run_id=r,event=alert text="a\nb",value=1.0 1\n'
    writer.close()


def test_thread_ships_while_the_writer_appends_and_close_is_bounded(
    tmp_path: Path, influx_write
) -> None:
    writer = spool_lines(tmp_path, 10)
    thread = ShipperThread(
        writer.stream, lambda: writer.written, target(influx_write), FAST, idle_poll_s=0.05
    )
    writer.append(b"".join(_line(i, False) for i in range(10, 20)))
    thread.nudge()
    assert thread.close(timeout=5.0)
    assert len(influx_write.accepted_lines) == 20
    assert thread.lines_shipped == 20

    influx_write.respond = lambda body, n: (503, "down")
    writer.append(b"".join(_line(i, False) for i in range(20, 30)))
    slow = ShipperThread(
        writer.stream,
        lambda: writer.written,
        target(influx_write),
        ShipTuning(retry=RetryPolicy(base_delay_s=5.0, max_delay_s=5.0)),
    )
    started = time.monotonic()
    assert not slow.close(timeout=0.5)
    assert time.monotonic() - started < 3.0
    assert slow.last_error is not None and "503" in slow.last_error
    assert read_ack(writer.stream) == len(b"".join(_line(i, False) for i in range(20)))
    writer.close()
    assert SpoolStream.at(tmp_path, RUN).path == writer.stream.path


def test_a_422_that_dropped_every_point_is_refused_whole_and_echoed_lines_are_cut() -> None:
    body = (
        '{"code":"unprocessable entity","message":"partial write: dropped 3 points outside '
        'retention policy dropped=3 for database: x"}'
    )
    error = classify_status(422, body)
    assert isinstance(error, RejectedLinesError) and error.dropped == 3
    assert classify_status(400, body).dropped is None
    long_line = "m,t=" + "L" * 70_000 + " f=1.0"
    error = classify_status(400, f"unable to parse '{long_line}': max key length exceeded")
    assert str(error).endswith("...': max key length exceeded")


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:8086", True),
        ("http://127.1.2.3:8086", True),
        ("http://localhost:8086", True),
        ("http://[::1]:8086", True),
        ("https://influx.localhost", True),
        ("http://10.0.0.5:8086", False),
        ("https://eu-central-1-1.aws.cloud2.influxdata.com", False),
        ("http://[2001:db8::1]:8086", False),
        ("http://localhost.example.com", False),
    ],
)
def test_writes_are_gzipped_only_to_a_server_on_another_machine_unless_set(
    tmp_path: Path, url: str, loopback: bool
) -> None:
    settings = load_settings({"RUNWATCH_HOME": str(tmp_path), "INFLUXDB_V2_URL": url}, dotenv=None)
    body = b"epoch,run_id=r x=1 1\n" * 50

    def sent(setting: bool | None) -> bytes:
        return target_for(dataclasses.replace(settings, influx_gzip=setting)).encode(body)

    assert is_loopback(url) is loopback
    assert sent(None) == (body if loopback else sent(True))  # auto, the default
    assert gzip.decompress(sent(True)) == body and sent(True) != body
    assert sent(False) == body
