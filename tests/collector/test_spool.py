"""The spool file: streams and their locks, torn-line handling, batches, acks, backlog."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from collector.spool import (
    SpoolStream,
    SpoolWriter,
    backlog,
    count_lines,
    decode_run_id,
    encode_run_id,
    is_live,
    list_streams,
    locked_for_reading,
    prune_shipped,
    read_ack,
    read_batch,
    split_lines,
    stream_backlog,
    write_ack,
)

RUN = "20260101T000000Z-abcdefghjk"


def lines(count: int, start: int = 0) -> bytes:
    return b"".join(
        b"epoch,run_id=r x=%d.0 %d\n" % (i, 10**18 + i) for i in range(start, start + count)
    )


@pytest.mark.parametrize("run_id", [RUN, "my/run.1", "späti run", "..", "a%b"])
def test_run_ids_map_to_safe_file_names_and_back(run_id: str) -> None:
    stem = encode_run_id(run_id)
    assert "/" not in stem and "." not in stem and " " not in stem
    assert decode_run_id(stem) == run_id


def test_writer_takes_the_first_free_stream_and_holds_it(tmp_path: Path) -> None:
    first = SpoolWriter.open(tmp_path, RUN)
    second = SpoolWriter.open(tmp_path, RUN)
    try:
        assert first.stream.path.name == f"{RUN}.lp"
        assert second.stream.path.name == f"{RUN}.1.lp"
        assert is_live(first.stream) and is_live(second.stream)
        with locked_for_reading(first.stream) as fd:
            assert fd is None
    finally:
        first.close()
        second.close()
    assert not is_live(first.stream)
    again = SpoolWriter.open(tmp_path, RUN)
    assert again.stream.index == 0
    again.close()
    assert [s.index for s in list_streams(tmp_path, RUN)] == [0, 1]
    assert list_streams(tmp_path, "other") == []


def test_appends_are_whole_lines_and_offsets_tracked(tmp_path: Path) -> None:
    writer = SpoolWriter.open(tmp_path, RUN)
    writer.append(lines(3))
    writer.append(lines(2, 3))
    assert writer.written == len(lines(5))
    writer.close()
    assert writer.stream.path.read_bytes() == lines(5)


def test_torn_tail_is_moved_aside_before_a_resumed_run_appends(tmp_path: Path) -> None:
    stream = SpoolStream.at(tmp_path, RUN)
    torn = b"epoch,run_id=r x=9"
    stream.path.write_bytes(lines(4) + torn)
    write_ack(stream, 10**9)  # an ack beyond the end (lost data) is clamped
    writer = SpoolWriter.open(tmp_path, RUN)
    assert writer.repaired_bytes == len(torn)
    assert writer.written == len(lines(4))
    writer.append(lines(2, 4))
    writer.close()
    assert stream.path.read_bytes() == lines(6)
    rejected = stream.rejected_path.read_bytes()
    assert rejected.startswith(b"# ") and b"torn last line" in rejected
    assert rejected.endswith(torn + b"\n")
    assert read_ack(stream) == len(lines(4))


def test_batches_hold_complete_lines_only(tmp_path: Path) -> None:
    path = tmp_path / "x.lp"
    path.write_bytes(lines(10) + b"epoch,torn")
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        batch = read_batch(fd, 0, size, max_lines=4, max_bytes=1 << 20)
        assert batch is not None and batch.lines == 4 and batch.data == lines(4)
        rest = read_batch(fd, batch.end, size, max_lines=100, max_bytes=1 << 20)
        assert rest is not None and rest.data == lines(6, 4)
        assert read_batch(fd, rest.end, size, max_lines=100, max_bytes=1 << 20) is None
        small = read_batch(fd, 0, size, max_lines=100, max_bytes=50)
        assert small is not None and small.lines == 1  # a line longer than max_bytes is whole
    finally:
        os.close(fd)


def test_a_line_longer_than_the_read_window_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "x.lp"
    long_line = b'event,run_id=r text="' + b"x" * 100_000 + b'" 1\n'
    path.write_bytes(long_line + lines(1))
    fd = os.open(path, os.O_RDONLY)
    try:
        batch = read_batch(fd, 0, os.fstat(fd).st_size, max_lines=10, max_bytes=1000)
        assert batch is not None and batch.data == long_line
    finally:
        os.close(fd)


def test_split_lines_cuts_at_line_boundaries() -> None:
    data = lines(7)
    first, second = split_lines(data)
    assert first + second == data
    assert first.endswith(b"\n") and first.count(b"\n") in (3, 4)
    assert split_lines(lines(1)) == (lines(1), b"")


def test_ack_is_replaced_atomically_and_tolerates_garbage(tmp_path: Path) -> None:
    stream = SpoolStream.at(tmp_path, RUN)
    assert read_ack(stream) == 0
    write_ack(stream, 1234)
    assert read_ack(stream) == 1234
    assert [p.name for p in tmp_path.iterdir()] == [f"{RUN}.ack"]
    stream.ack_path.write_text("garbage")
    assert read_ack(stream) == 0


def test_backlog_reports_unshipped_bytes_lines_and_torn_tails(tmp_path: Path) -> None:
    done = SpoolStream.at(tmp_path, "done-run")
    done.path.write_bytes(lines(3))
    write_ack(done, len(lines(3)))
    pending = SpoolStream.at(tmp_path, RUN)
    pending.path.write_bytes(lines(10) + b"torn")
    write_ack(pending, len(lines(4)))
    other = SpoolStream.at(tmp_path, RUN, 1)
    other.path.write_bytes(lines(5))
    (tmp_path / "unrelated.txt").write_text("x")

    found = backlog(tmp_path)
    assert len(found) == 1
    item = found[0]
    assert item.run_id == RUN
    assert item.unshipped_bytes == len(lines(10)) - len(lines(4)) + len(lines(5))
    assert item.unshipped_lines_estimate == 11
    assert item.streams == 2
    assert item.torn_bytes == 4
    assert not item.live
    assert stream_backlog(done).unshipped_bytes == 0
    assert backlog(tmp_path / "missing") == []


def test_line_count_extrapolates_beyond_the_exact_limit(tmp_path: Path, monkeypatch) -> None:
    import collector.spool._backlog as spool

    path = tmp_path / "x.lp"
    path.write_bytes(lines(1000))
    monkeypatch.setattr(spool, "_EXACT_COUNT_LIMIT", 1024)
    monkeypatch.setattr(spool, "_COUNT_CHUNK", 256)
    estimate = count_lines(path, 0, path.stat().st_size)
    assert 900 <= estimate <= 1100
    assert count_lines(path, 0, 0) == 0


def test_a_failed_append_leaves_no_torn_line(tmp_path: Path) -> None:
    # A real short write: the file-size limit lets only part of the second batch through.
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        from pathlib import Path
        from collector.spool import SpoolWriter
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        writer = SpoolWriter.open(Path({str(tmp_path)!r}), {RUN!r})
        first = {lines(3)!r}
        writer.append(first)
        resource.setrlimit(resource.RLIMIT_FSIZE, (len(first) + 20, len(first) + 20))
        try:
            writer.append({lines(3, 3)!r})
        except OSError as exc:
            print("failed", exc.errno)
        print(writer.written)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split()[0] == "failed"
    assert int(done.stdout.split()[-1]) == len(lines(3))
    assert (tmp_path / f"{RUN}.lp").read_bytes() == lines(3)


def spooled(spool_dir: Path, run_id: str, count: int, *, acked: int | None = None) -> SpoolStream:
    """A closed stream of ``count`` lines, last written two days ago."""
    writer = SpoolWriter.open(spool_dir, run_id)
    writer.append(lines(count))
    writer.close()
    if acked is not None:
        write_ack(writer.stream, acked)
    two_days_ago = writer.stream.path.stat().st_mtime - 2 * 86_400
    os.utime(writer.stream.path, (two_days_ago, two_days_ago))
    return writer.stream


def test_prune_deletes_only_old_fully_acknowledged_idle_streams(tmp_path: Path) -> None:
    size = len(lines(5))
    shipped = spooled(tmp_path, "shipped", 5, acked=size)
    partly = spooled(tmp_path, "partly", 5, acked=size - 1)
    never = spooled(tmp_path, "never", 5)
    torn = spooled(tmp_path, "torn", 5, acked=size)
    with torn.path.open("ab") as handle:
        handle.write(b"epoch,run_id=r x=1")  # a kill mid-write: not acknowledged
    os.utime(torn.path, (0, 0))
    live_stream = spooled(tmp_path, "live", 5, acked=size)
    live = SpoolWriter.open(tmp_path, "live")  # a recorder resumed the run
    assert live.stream == live_stream
    try:
        assert prune_shipped(tmp_path, timedelta(days=3)) == []  # all written within 3 days
        pruned = prune_shipped(tmp_path, timedelta(days=1))
    finally:
        live.close()
    assert [(p.stream.run_id, p.size) for p in pruned] == [("shipped", size)]
    assert not shipped.path.exists() and not shipped.ack_path.exists()
    for kept in (partly, never, torn, live_stream):
        assert kept.path.exists(), kept.run_id
    assert prune_shipped(tmp_path, timedelta(0), "partly") == []
