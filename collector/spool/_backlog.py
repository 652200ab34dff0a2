"""What a spool holds that InfluxDB has not acknowledged, and pruning what it has."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from collector.spool._segments import StreamReader, list_segments
from collector.spool._streams import SpoolStream, list_streams, parse_stream, read_ack
from collector.spool._writer import is_live, locked_for_reading

_COUNT_CHUNK = 1024 * 1024
_EXACT_COUNT_LIMIT = 64 * 1024 * 1024


@dataclass(frozen=True)
class StreamBacklog:
    stream: SpoolStream
    acked: int
    complete_end: int
    size: int

    @property
    def unshipped_bytes(self) -> int:
        return max(0, self.complete_end - self.acked)

    @property
    def torn_bytes(self) -> int:
        return self.size - self.complete_end


def stream_backlog(stream: SpoolStream) -> StreamBacklog:
    with StreamReader(stream) as reader:
        end, size = reader.extent()
    return StreamBacklog(stream, min(read_ack(stream), end), end, size)


def count_lines(stream: SpoolStream | Path, start: int, end: int) -> int:
    """Lines in ``[start, end)`` of a stream (or of the stream whose head is at a path): exact
    up to 64 MiB, extrapolated from 64 MiB beyond."""
    if end <= start:
        return 0
    if isinstance(stream, Path):
        stream = parse_stream(stream) or SpoolStream(stream.stem, 0, stream)
    counted = read = 0
    with StreamReader(stream) as reader:
        while read < min(end - start, _EXACT_COUNT_LIMIT):
            chunk = reader.pread(min(_COUNT_CHUNK, end - start - read), start + read)
            if not chunk:
                break
            counted += chunk.count(b"\n")
            read += len(chunk)
    if read >= end - start or read == 0:
        return counted
    return round(counted * (end - start) / read)


@dataclass(frozen=True)
class Backlog:
    """What a run's spool holds that InfluxDB has not acknowledged (for ``runwatch doctor``)."""

    run_id: str
    unshipped_bytes: int
    unshipped_lines_estimate: int
    streams: int = 1
    torn_bytes: int = 0
    live: bool = False


def backlog(spool_dir: Path) -> list[Backlog]:
    """Runs with unacknowledged points (or a torn tail), sorted by run_id."""
    per_run: dict[str, list[StreamBacklog]] = {}
    for stream in list_streams(spool_dir):
        per_run.setdefault(stream.run_id, []).append(stream_backlog(stream))
    result = []
    for run_id, items in per_run.items():
        unshipped = sum(i.unshipped_bytes for i in items)
        torn = sum(i.torn_bytes for i in items)
        if not unshipped and not torn:
            continue
        lines = sum(count_lines(i.stream, i.acked, i.complete_end) for i in items)
        live = any(is_live(i.stream) for i in items)
        result.append(Backlog(run_id, unshipped, lines, len(items), torn, live))
    return result


@dataclass(frozen=True)
class PrunedStream:
    stream: SpoolStream
    size: int
    """Bytes the stream's files took on disk."""


def prune_shipped(
    spool_dir: Path,
    older_than: timedelta,
    run_id: str | None = None,
    *,
    now: datetime | None = None,
) -> list[PrunedStream]:
    """Delete the streams InfluxDB acknowledged to the last byte and nobody wrote to for
    ``older_than``: their points are in InfluxDB. A stream with a live writer, unshipped or
    torn bytes, or a recent write is kept; so are ``.rejected`` files (they are for people).

    The stream stays locked from the check to the unlink: a recorder of the same run that
    starts meanwhile finds it locked and writes a new stream instead.
    """
    cutoff = (now or datetime.now(UTC)).timestamp() - older_than.total_seconds()
    pruned = []
    for stream in list_streams(spool_dir, run_id):
        try:
            with locked_for_reading(stream) as fd:
                if fd is None:
                    continue
                files = [s.path for s in list_segments(stream) if s.path != stream.path]
                stats = [os.stat(p) for p in files] + [os.fstat(fd)]
                with StreamReader(stream, head_fd=fd) as reader:
                    _, size = reader.extent()
                if max(s.st_mtime for s in stats) > cutoff or read_ack(stream) < size:
                    continue
                for path in files:  # the head last: a half-done prune leaves a stream
                    path.unlink()
                stream.ack_path.unlink(missing_ok=True)
                stream.path.unlink()
        except FileNotFoundError:
            continue
        pruned.append(PrunedStream(stream, sum(s.st_size for s in stats)))
    return pruned
