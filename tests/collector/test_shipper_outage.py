"""The live shipper never gives up: backoff arithmetic holds for any number of failures, the
thread survives thousands of them and ships everything once the server is back, closing
against a down server backs off instead of hammering it, and backoff jitter never touches the
global random generator the training (and Flower's node sampling) use.

The server is a real VictoriaMetrics (``/api/v2/write``), down meaning its port is closed.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from collector.shipper import InfluxWriteTarget, RetryPolicy, ShipperThread, ShipTuning
from collector.spool import SpoolWriter, read_ack
from tests.servers._process import free_port
from tests.servers.victoriametrics import VictoriaMetrics

RUN = "20260101T000000Z-outagexyz1"
NOW_NS = time.time_ns()  # VictoriaMetrics keeps only recent points


def lines(start: int, stop: int) -> bytes:
    return b"".join(
        b"epoch,run_id=%s x=%d.0 %d\n" % (RUN.encode(), i, NOW_NS + i) for i in range(start, stop)
    )


def target_at(port: int) -> InfluxWriteTarget:
    return InfluxWriteTarget(f"http://127.0.0.1:{port}", token="t", org="o", bucket="b")


@pytest.mark.parametrize("attempt", [1, 2, 40, 1_025, 1_100, 10**6, 10**12])
def test_backoff_is_bounded_for_any_number_of_failures(attempt: int) -> None:
    policy = RetryPolicy(base_delay_s=0.5, max_delay_s=30.0)
    delay = policy.delay(attempt)
    assert 0.0 < delay <= 30.0
    if attempt >= 40:
        assert delay >= 15.0  # capped, then jittered by 50-100 %


def test_backoff_leaves_the_global_random_stream_alone() -> None:
    random.seed(1234)
    expected = [random.random() for _ in range(5)]
    random.seed(1234)
    for attempt in range(1, 50):
        RetryPolicy().delay(attempt)
    assert [random.random() for _ in range(5)] == expected


def wait_until(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.integration
@pytest.mark.slow
def test_shipper_survives_thousands_of_failures_and_catches_up(
    tmp_path: Path, victoriametrics_factory: Callable[[], VictoriaMetrics]
) -> None:
    server = victoriametrics_factory()  # not started yet: its port refuses connections
    writer = SpoolWriter.open(tmp_path, RUN)
    writer.append(lines(0, 500))
    tuning = ShipTuning(batch_lines=100, retry=RetryPolicy(base_delay_s=0.0001, max_delay_s=0.0005))
    thread = ShipperThread(
        writer.stream, lambda: writer.written, target_at(server.port), tuning, idle_poll_s=0.05
    )
    try:
        wait_until(lambda: thread.failed_attempts > 1_500, timeout=120)
        assert read_ack(writer.stream) == 0
        writer.append(lines(500, 700))
        server.start()
        thread.nudge()
        wait_until(lambda: read_ack(writer.stream) == writer.written, timeout=60)
        assert thread.lines_shipped == 700
    finally:
        thread.close(timeout=10)
        writer.close()
    exported = server.samples(f'epoch_x{{run_id="{RUN}"}}')
    assert sum(len(points) for points in exported.values()) == 700


@pytest.mark.integration
def test_close_against_a_down_server_backs_off_within_its_timeout(tmp_path: Path) -> None:
    writer = SpoolWriter.open(tmp_path, RUN)
    writer.append(lines(0, 50))
    down = free_port()
    thread = ShipperThread(writer.stream, lambda: writer.written, target_at(down), ShipTuning())
    started = time.monotonic()
    assert not thread.close(timeout=3.0)
    elapsed = time.monotonic() - started
    writer.close()
    # Default backoff (0.5 s doubling, jittered): a handful of tries in 3 s, not hundreds.
    assert 1 <= thread.failed_attempts <= 8, thread.failed_attempts
    assert elapsed < 5.0
    assert read_ack(writer.stream) == 0  # everything stays for `runwatch sync`


@pytest.mark.integration
def test_closing_against_a_down_server_stops_at_the_second_unanswered_request(
    tmp_path: Path,
) -> None:
    writer = SpoolWriter.open(tmp_path, RUN)
    writer.append(lines(0, 50))
    thread = ShipperThread(
        writer.stream, lambda: writer.written, target_at(free_port()), ShipTuning()
    )
    assert not thread.close(timeout=120.0)  # returns long before: the server is down
    writer.close()
    assert thread.failed_attempts == 2, thread.failed_attempts
    assert thread.last_error is not None and "Connection" in thread.last_error
    assert read_ack(writer.stream) == 0  # everything stays for `runwatch sync`


@pytest.mark.integration
def test_closing_after_an_outage_tries_the_server_once_more_then_stops(tmp_path: Path) -> None:
    writer = SpoolWriter.open(tmp_path, RUN)
    writer.append(lines(0, 50))
    thread = ShipperThread(
        writer.stream, lambda: writer.written, target_at(free_port()), ShipTuning()
    )
    wait_until(lambda: thread.failed_attempts >= 1, timeout=30)
    before = thread.failed_attempts
    assert not thread.close(timeout=120.0)
    writer.close()
    # one more try (two when a try was already under way as close began), not a backoff
    # schedule running to the timeout
    assert 1 <= thread.failed_attempts - before <= 2, (before, thread.failed_attempts)
    assert read_ack(writer.stream) == 0


def test_shipping_and_closing_never_import_influxdb_client(tmp_path: Path) -> None:
    """influxdb-client costs seconds and ~30 MiB to import; the write path does without it."""
    script = f"""
import sys
from pathlib import Path
from collector import Recorder
from collector.config import Settings
settings = Settings(home=Path({str(tmp_path)!r}), db_url="sqlite://",
                    influx_url="http://127.0.0.1:{free_port()}", influx_org="o",
                    influx_token="t", prometheus_port=0)
rec = Recorder("{RUN}", experiment="e", settings=settings)
for i in range(100):
    rec.record("batch", {{"loss": 1.0, "step": i}})
rec.close(timeout=30)
print(rec.stats.points_spooled, rec.stats.spool_backlog_bytes > 0, "influxdb_client" in sys.modules)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.split() == ["100", "True", "False"], done.stdout + done.stderr
