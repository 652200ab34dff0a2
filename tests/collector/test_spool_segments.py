"""Spool segments: rolling, gzip compression of finished segments, and reading them back
exactly (property test), through crashes, by the shipper, ``runwatch sync``, export, doctor
and prune."""

from __future__ import annotations

import gzip
import os
import random
import shutil
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.backlog import ship_backlog
from collector.config import load_settings
from collector.shipper import RetryPolicy, ShipTuning
from collector.spool import (
    SpoolDamagedError,
    SpoolStream,
    SpoolWriter,
    StreamReader,
    _segments,
    backlog,
    compress_segment,
    count_lines,
    list_segments,
    prune_shipped,
    read_batch,
    stream_backlog,
    write_ack,
)
from collector.spooled_points import SpoolReading, read_points
from tests.servers._process import free_port

RUN = "20260101T000000Z-segmentsab"


def lines(count: int, start: int = 0) -> bytes:
    return b"".join(
        b"epoch,run_id=r x=%d.0 %d\n" % (i, 10**18 + i) for i in range(start, start + count)
    )


def realistic_lines(count: int, seed: int = 1) -> bytes:
    """Batch points as a Lightning run spools them: a noisy loss, accuracy, step counters."""
    rng = random.Random(seed)
    ns, loss, out = 1_796_281_068_325_706_704, 2.3, []
    for step in range(count):
        ns += rng.randint(2_000_000, 4_000_000)
        loss *= 0.99999
        noisy = loss * (1 + rng.gauss(0, 0.05))
        acc = rng.randint(0, 64) / 64
        out.append(
            f"batch,run_id=20261203T065748Z-wd5t1hs4h1,experiment=mnist,mode=centralized "
            f"loss={noisy!r},train_acc={acc!r},step={step}.0,batch_idx={step % 938}.0,"
            f"epoch={step // 938}.0 {ns}\n"
        )
    return "".join(out).encode()


def read_all(stream: SpoolStream) -> bytes:
    with StreamReader(stream) as reader:
        return reader.read(0, reader.extent()[0])


def disk_bytes(stream: SpoolStream) -> int:
    return sum(s.path.stat().st_size for s in list_segments(stream) if s.path.exists())


# --- the property: compressed segments replay byte for byte -----------------------------------

line_text = st.text(
    alphabet=st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)), max_size=300
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    appends=st.lists(st.lists(line_text, min_size=1, max_size=20), min_size=1, max_size=25),
    segment_bytes=st.integers(min_value=1, max_value=3_000),
    reopen_after=st.integers(min_value=0, max_value=25),
    max_lines=st.integers(min_value=1, max_value=50),
)
def test_compressed_segments_replay_byte_for_byte_the_lines_written(
    tmp_path_factory, appends, segment_bytes, reopen_after, max_lines
) -> None:
    spool_dir = tmp_path_factory.mktemp("spool")
    written = []
    writer = SpoolWriter.open(spool_dir, RUN, segment_bytes=segment_bytes)
    for number, batch in enumerate(appends):
        if number == reopen_after:  # a resumed run continues the same stream
            writer.close(compression_budget_s=60)
            writer = SpoolWriter.open(spool_dir, RUN, segment_bytes=segment_bytes)
        data = "".join(line + "\n" for line in batch).encode("utf-8", "replace")
        writer.append(data)
        written.append(data)
    expected = b"".join(written)
    assert writer.written == len(expected)
    writer.close(compression_budget_s=60)

    stream = writer.stream
    segments = list_segments(stream)
    assert read_all(stream) == expected
    # Every compressed segment is a gzip file of exactly the bytes its name gives.
    for segment in segments:
        if segment.compressed_end is not None:
            assert (
                gzip.decompress(segment.path.read_bytes())
                == expected[segment.start : segment.compressed_end]
            )
    # Once the writer has closed, only a head that never rolled stays plain.
    assert all(s.compressed or s.path == stream.path for s in segments)
    if len(expected) > segment_bytes:
        assert any(s.compressed for s in segments)
    # Batches of whole lines, as the shipper reads them, cover the same bytes in order.
    with StreamReader(stream) as reader:
        offset, shipped = 0, []
        while (batch := read_batch(reader, offset, len(expected), max_lines, 1 << 20)) is not None:
            assert batch.data.count(b"\n") == batch.lines <= max_lines
            shipped.append(batch.data)
            offset = batch.end
    assert b"".join(shipped) == expected
    assert count_lines(stream, 0, len(expected)) == expected.count(b"\n")


# --- size on disk --------------------------------------------------------------------------


@pytest.fixture(params=["isal", "zlib"])
def compressor(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Segments compressed by ISA-L (a dependency where it has a wheel) or by zlib alone."""
    if request.param == "zlib":
        monkeypatch.setattr(_segments, "_isal", None)
    elif _segments._isal is None:
        if os.environ.get("CI") == "true":
            pytest.fail("isal is a dependency on this platform and not installed")
        pytest.skip("isal is not installed")
    return str(request.param)


def test_closed_segments_take_under_40_bytes_per_point(tmp_path: Path, compressor: str) -> None:
    data = realistic_lines(60_000)
    writer = SpoolWriter.open(tmp_path, RUN, segment_bytes=1024 * 1024)
    every_line = data.splitlines(keepends=True)
    for start in range(0, len(every_line), 1_000):  # as the recorder flushes: 1,000 at a time
        writer.append(b"".join(every_line[start : start + 1_000]))
    writer.close(compression_budget_s=60)
    closed = [s for s in list_segments(writer.stream) if s.compressed]
    assert len(closed) >= 5
    plain_bytes = sum(s.compressed_end - s.start for s in closed)
    points = data[: closed[-1].compressed_end].count(b"\n")
    compressed_bytes = sum(s.path.stat().st_size for s in closed)
    assert plain_bytes / points > 150  # what each point takes in line protocol
    assert compressed_bytes / points <= 40
    assert read_all(writer.stream) == data
    for segment in closed:  # plain gzip, whoever compressed it: zcat and gzip read it
        assert (
            gzip.decompress(segment.path.read_bytes())
            == data[segment.start : segment.compressed_end]
        )


# --- crashes --------------------------------------------------------------------------------


def test_a_crash_between_compressing_and_removing_the_plain_copy_reads_once(
    tmp_path: Path,
) -> None:
    writer = SpoolWriter.open(tmp_path, RUN, segment_bytes=10**9)
    writer.append(lines(100))
    writer.close(compression_budget_s=60)
    stream = writer.stream
    head_copy = tmp_path / "head-copy"
    shutil.copy(stream.path, head_copy)
    compress_segment(stream, 0, len(lines(100)), stream.path)
    # As if the process died before truncating the head, and left a temporary file.
    shutil.copy(head_copy, stream.path)
    temp = stream.path.with_name(stream.compressed_segment_path(0, 1).name + ".999.tmp")
    temp.write_bytes(b"half a gzip")
    assert read_all(stream) == lines(100)
    assert stream_backlog(stream).unshipped_bytes == len(lines(100))

    resumed = SpoolWriter.open(tmp_path, RUN, segment_bytes=10**9)
    assert resumed.written == len(lines(100))
    resumed.append(lines(5, 100))
    resumed.close(compression_budget_s=60)
    assert read_all(stream) == lines(105)
    assert not temp.exists()
    assert stream.path.stat().st_size == 0  # the stale head copy went; it keeps the lock


def test_a_writer_killed_mid_segment_loses_nothing_it_wrote(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, sys
        from pathlib import Path
        from collector.spool import SpoolWriter
        writer = SpoolWriter.open(Path({str(tmp_path)!r}), {RUN!r}, segment_bytes=4096)
        for i in range(200):
            writer.append(b"epoch,run_id=r x=%d.0 %d\\n" % (i, 10**18 + i))
        os.write(writer._tail_fd, b"epoch,run_id=r x=torn")
        print(writer.written, flush=True)
        os.kill(os.getpid(), 9)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    written = int(done.stdout.split()[0])
    assert written == len(lines(200))
    resumed = SpoolWriter.open(tmp_path, RUN, segment_bytes=4096)
    assert resumed.written == written and resumed.repaired_bytes == len(b"epoch,run_id=r x=torn")
    resumed.append(lines(10, 200))
    resumed.close(compression_budget_s=60)
    assert read_all(resumed.stream) == lines(210)
    assert all(s.compressed for s in list_segments(resumed.stream)[:-1])
    assert b"x=torn" in resumed.stream.rejected_path.read_bytes()


@pytest.mark.parametrize("damage", ["not gzip", "truncated"])
def test_a_damaged_compressed_segment_is_an_error_naming_it(
    tmp_path: Path, compressor: str, damage: str
) -> None:
    writer = SpoolWriter.open(tmp_path, RUN, segment_bytes=512)
    writer.append(lines(50))
    writer.close(compression_budget_s=60)
    damaged = next(s for s in list_segments(writer.stream) if s.compressed)
    whole = damaged.path.read_bytes()
    damaged.path.write_bytes(b"not gzip" if damage == "not gzip" else whole[: len(whole) // 2])
    with StreamReader(writer.stream) as reader, pytest.raises(SpoolDamagedError) as raised:
        reader.pread(10, damaged.start)
    assert str(damaged.path) in str(raised.value)


# --- backlog, prune ---------------------------------------------------------------------------


def test_backlog_and_prune_span_every_segment(tmp_path: Path) -> None:
    writer = SpoolWriter.open(tmp_path, RUN, segment_bytes=1000)
    for start in range(0, 300, 30):
        writer.append(lines(30, start))
    writer.close(compression_budget_s=60)
    stream = writer.stream
    total = len(lines(300))
    assert len(list_segments(stream)) > 5
    (item,) = backlog(tmp_path)
    assert item.unshipped_bytes == total and item.unshipped_lines_estimate == 300
    write_ack(stream, total - len(lines(1, 299)))
    assert prune_shipped(tmp_path, timedelta(0), now=None) == []  # one line unshipped
    write_ack(stream, total)
    on_disk = disk_bytes(stream)
    assert on_disk < total
    an_hour_later = datetime.now(UTC) + timedelta(hours=1)
    (pruned,) = prune_shipped(tmp_path, timedelta(minutes=1), now=an_hour_later)
    assert pruned.size == on_disk
    assert list(tmp_path.iterdir()) == []


def test_export_reads_points_out_of_compressed_segments(tmp_path: Path) -> None:
    writer = SpoolWriter.open(tmp_path, RUN, segment_bytes=16 * 1024)
    every_line = realistic_lines(2_000).splitlines(keepends=True)
    for start in range(0, 2_000, 100):
        writer.append(b"".join(every_line[start : start + 100]))
    writer.close(compression_budget_s=60)
    assert sum(s.compressed for s in list_segments(writer.stream)) > 10
    reading = SpoolReading()
    points = list(read_points(tmp_path, RUN, frozenset({"batch"}), reading))
    assert [p.fields["step"] for p in points] == [float(i) for i in range(2_000)]
    assert reading.skipped == 0


def test_closing_stops_compressing_at_its_budget_and_the_next_writer_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import collector.spool._writer as writer_module

    real_compress = writer_module.compress_segment

    def starved(*args: Any) -> Path:  # a training keeps the CPU busy
        time.sleep(0.05)
        return real_compress(*args)

    monkeypatch.setattr(writer_module, "compress_segment", starved)
    writer = SpoolWriter.open(tmp_path, RUN, segment_bytes=256)
    for start in range(0, 400, 10):
        writer.append(lines(10, start))
    started = time.monotonic()
    writer.close(compression_budget_s=0)
    assert time.monotonic() - started < 1.0  # 40 segments x 50 ms were queued
    segments = list_segments(writer.stream)
    assert any(not s.compressed for s in segments[1:-1])  # left plain...
    assert read_all(writer.stream) == lines(400)  # ...and read exactly
    monkeypatch.setattr(writer_module, "compress_segment", real_compress)
    resumed = SpoolWriter.open(tmp_path, RUN, segment_bytes=256)
    resumed.append(lines(1, 400))
    resumed.close(compression_budget_s=60)
    assert all(s.compressed for s in list_segments(resumed.stream))
    assert read_all(resumed.stream) == lines(401)


def test_sync_compresses_what_close_left_plain_even_with_influxdb_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import collector.spool._writer as writer_module

    settings = load_settings(
        {
            "RUNWATCH_HOME": str(tmp_path / "home"),
            "INFLUXDB_V2_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens
            "INFLUXDB_V2_TOKEN": "token",
            "INFLUXDB_V2_ORG": "org",
        },
        dotenv=None,
    )
    monkeypatch.setattr(writer_module, "compress_segment", lambda *args: None)
    writer = SpoolWriter.open(settings.spool_dir, RUN, segment_bytes=256)
    for start in range(0, 400, 10):
        writer.append(lines(10, start))
    writer.close(compression_budget_s=0)
    monkeypatch.undo()
    plain = sum(not s.compressed for s in list_segments(writer.stream)[:-1])
    assert plain > 10

    once = RetryPolicy(max_attempts=1, base_delay_s=0.01, max_delay_s=0.01)
    result = ship_backlog(settings, RUN, tuning=ShipTuning(retry=once))
    assert result.error is not None and result.lines_shipped == 0
    assert result.segments_compressed == plain
    assert all(s.compressed for s in list_segments(writer.stream)[:-1])
    assert read_all(writer.stream) == lines(400)  # nothing lost, nothing acknowledged
    assert stream_backlog(writer.stream).unshipped_bytes == len(lines(400))
