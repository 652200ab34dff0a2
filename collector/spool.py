"""The spool: an append-only line-protocol file per run, on local disk, written before shipping.

Files under ``settings.spool_dir`` (``<RUNWATCH_HOME>/spool``), one *stream* per live writer:

- ``<run>.lp``: points, one per line (string-field newlines stored as U+001E, see
  ``collector.points``). A second recorder of the same run alive at the same time (federated
  clients of one run on one machine) writes ``<run>.1.lp``, a third ``<run>.2.lp`` and so on:
  a live writer holds an exclusive ``flock`` on its stream, so two processes never interleave
  in one file and ``runwatch sync`` leaves a stream alone while its writer lives.
- ``<run>.ack``: the byte offset up to which InfluxDB acknowledged the stream, as decimal
  text, replaced atomically (temp file + ``os.replace``) at most every 0.5 s while a shipper
  is busy and whenever it stops or waits. Everything after it is re-sent by the stream's next
  shipper; re-sending is harmless (same series and timestamp overwrite).
- ``<run>.rejected``: lines InfluxDB refused (malformed, type conflict, beyond retention) and torn tails, each group after a
  ``#`` comment saying why; kept for people, never shipped.

``<run>`` is the run_id with every character outside ``[A-Za-z0-9_-]`` written ``%XX``.

Durability. The recorder appends whole lines with one ``write()`` at batch boundaries
(every ``flush_lines`` points or ``flush_interval_s``, whichever comes first) and fsyncs on
close. A SIGKILL therefore loses only points recorded since the last flush (at most
``flush_lines`` points, at most ``flush_interval_s`` of recording: 1,000 points / 0.5 s by
default); what was written stays in the OS page cache and reaches the disk. Only a power
loss can lose more (what was not fsynced yet). A write torn by a kill or a full disk leaves a
last line without its newline: readers never ship past the last newline, and the next writer
of the stream moves the torn bytes to ``.rejected`` and truncates before appending, so a
resumed run never glues new lines onto a torn one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote

log = logging.getLogger("collector.spool")

SPOOL_SUFFIX = ".lp"
ACK_SUFFIX = ".ack"
REJECTED_SUFFIX = ".rejected"
MAX_STREAMS_PER_RUN = 1_000
_SAFE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_TAIL_CHUNK = 64 * 1024
_FIRST_READ = 64 * 1024
_COUNT_CHUNK = 1024 * 1024
_EXACT_COUNT_LIMIT = 64 * 1024 * 1024


def encode_run_id(run_id: str) -> str:
    """A file-name-safe form of ``run_id`` (reversible with ``decode_run_id``)."""
    return "".join(
        ch if ch in _SAFE_CHARS else "".join(f"%{b:02X}" for b in ch.encode("utf-8", "replace"))
        for ch in run_id
    )


def decode_run_id(stem: str) -> str:
    return unquote(stem)


@dataclass(frozen=True)
class SpoolStream:
    """One spool file of a run and its acknowledgement and rejection files."""

    run_id: str
    index: int
    path: Path

    @property
    def ack_path(self) -> Path:
        return self.path.with_suffix(ACK_SUFFIX)

    @property
    def rejected_path(self) -> Path:
        return self.path.with_suffix(REJECTED_SUFFIX)

    @classmethod
    def at(cls, spool_dir: Path, run_id: str, index: int = 0) -> SpoolStream:
        stem = encode_run_id(run_id) + ("" if index == 0 else f".{index}")
        return cls(run_id, index, spool_dir / (stem + SPOOL_SUFFIX))


def parse_stream(path: Path) -> SpoolStream | None:
    """The stream a ``.lp`` file is, or None for any other file."""
    name = path.name
    if not name.endswith(SPOOL_SUFFIX):
        return None
    stem, _, index_text = name[: -len(SPOOL_SUFFIX)].partition(".")
    if not stem or (index_text and not index_text.isdigit()):
        return None
    return SpoolStream(decode_run_id(stem), int(index_text or 0), path)


def list_streams(spool_dir: Path, run_id: str | None = None) -> list[SpoolStream]:
    """Every stream in the spool (or of one run), sorted by run_id then index."""
    if not spool_dir.is_dir():
        return []
    found = [s for p in spool_dir.iterdir() if (s := parse_stream(p)) is not None]
    if run_id is not None:
        found = [s for s in found if s.run_id == run_id]
    return sorted(found, key=lambda s: (s.run_id, s.index))


# --- acknowledgement ----------------------------------------------------------------------


def read_ack(stream: SpoolStream) -> int:
    """The acknowledged offset (0 when none or unreadable: re-sending is harmless)."""
    try:
        return max(0, int(stream.ack_path.read_text(encoding="ascii").strip() or 0))
    except (OSError, ValueError):
        return 0


def write_ack(stream: SpoolStream, offset: int) -> None:
    """Record ``offset`` atomically; not fsynced (losing it only means re-sending)."""
    temp = stream.ack_path.with_name(f"{stream.ack_path.name}.{os.getpid()}.tmp")
    temp.write_text(f"{offset}\n", encoding="ascii")
    os.replace(temp, stream.ack_path)


# --- reading -------------------------------------------------------------------------------


def complete_end(fd: int, size: int) -> int:
    """Offset just past the last newline among the first ``size`` bytes (0 when none)."""
    position = size
    while position > 0:
        start = max(0, position - _TAIL_CHUNK)
        chunk = os.pread(fd, position - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        position = start
    return 0


@dataclass(frozen=True)
class Batch:
    """Complete lines ``[start, end)`` of a stream."""

    start: int
    end: int
    data: bytes
    lines: int


def read_batch(fd: int, start: int, end: int, max_lines: int, max_bytes: int) -> Batch | None:
    """Up to ``max_lines`` complete lines from ``start``, not past ``end``; None when the
    range holds no complete line. A single line longer than ``max_bytes`` is read whole.

    Reads in chunks sized from the lines already read, so it reads little beyond what it
    returns (not ``max_bytes`` for a batch a fifth of that)."""
    if end <= start:
        return None
    limit = min(max_bytes, end - start)
    chunks: list[bytes] = []
    read = lines = 0
    chunk_size = _FIRST_READ
    while read < limit and lines < max_lines:
        chunk = os.pread(fd, min(chunk_size, limit - read), start + read)
        if not chunk:
            break
        chunks.append(chunk)
        read += len(chunk)
        lines += chunk.count(b"\n")
        if lines:  # the next chunk: what the missing lines should take, plus a tenth
            chunk_size = max(_FIRST_READ, (max_lines - lines) * read // lines * 11 // 10)
    data = b"".join(chunks)
    cut = data.rfind(b"\n") + 1
    if cut == 0:
        return _one_long_line(fd, start, end, data)
    if lines > max_lines:
        cut = _after_newline(data, cut, lines, max_lines)
        lines = max_lines
    return Batch(start, start + cut, data[:cut] if cut < len(data) else data, lines)


def _after_newline(data: bytes, last_cut: int, newlines: int, wanted: int) -> int:
    """Offset just past the ``wanted``-th newline of ``data``, which holds ``newlines``
    of them, the last ending at ``last_cut``; searched from whichever end is nearer."""
    excess = newlines - wanted
    if excess < wanted:
        position = last_cut - 1
        for _ in range(excess):
            position = data.rfind(b"\n", 0, position)
        return position + 1
    position = -1
    for _ in range(wanted):
        position = data.find(b"\n", position + 1)
    return position + 1


def _one_long_line(fd: int, start: int, end: int, data: bytes) -> Batch | None:
    """The first line from ``start`` when it is longer than a batch may be; None if torn."""
    while start + len(data) < end:
        more = os.pread(
            fd, min(max(len(data), _FIRST_READ), end - start - len(data)), start + len(data)
        )
        if not more:
            break
        newline = more.find(b"\n")
        if newline >= 0:
            data += more[: newline + 1]
            return Batch(start, start + len(data), data, 1)
        data += more
    return None


def split_lines(data: bytes) -> tuple[bytes, bytes]:
    """Two halves of a multi-line block, cut at the line boundary nearest the middle."""
    middle = len(data) // 2
    after = data.find(b"\n", middle)
    if after < 0 or after == len(data) - 1:
        before = data.rfind(b"\n", 0, middle)
        if before < 0:
            return data, b""
        return data[: before + 1], data[before + 1 :]
    return data[: after + 1], data[after + 1 :]


def quarantine(stream: SpoolStream, data: bytes, reason: str) -> None:
    """Append lines that must never be shipped to ``<run>.rejected``, after a comment."""
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    reason_line = " ".join(reason.split())
    with stream.rejected_path.open("ab") as out:
        out.write(f"# {stamp} {reason_line}\n".encode("utf-8", "replace"))
        out.write(data if data.endswith(b"\n") else data + b"\n")


# --- locking -------------------------------------------------------------------------------


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


@contextlib.contextmanager
def locked_for_reading(stream: SpoolStream) -> Iterator[int | None]:
    """A read-only descriptor holding the stream's lock, or None while a writer holds it."""
    fd = os.open(stream.path, os.O_RDONLY)
    try:
        yield fd if _try_flock(fd) else None
    finally:
        os.close(fd)  # also releases the lock


def is_live(stream: SpoolStream) -> bool:
    """Whether a running recorder is writing this stream."""
    try:
        with locked_for_reading(stream) as fd:
            return fd is None
    except FileNotFoundError:
        return False


# --- writing -------------------------------------------------------------------------------


class SpoolWriter:
    """Appends whole lines to one stream it holds locked. Not thread-safe: one caller at a time."""

    def __init__(self, stream: SpoolStream, fd: int, written: int, repaired_bytes: int) -> None:
        self.stream = stream
        self._fd = fd
        self.written = written
        """Offset just past the last complete line (what readers may ship)."""
        self.repaired_bytes = repaired_bytes
        """Torn-tail bytes moved to ``.rejected`` when the stream was opened."""

    @classmethod
    def open(cls, spool_dir: Path, run_id: str) -> SpoolWriter:
        """Lock the first stream of ``run_id`` no live writer holds, repairing a torn tail."""
        spool_dir.mkdir(parents=True, exist_ok=True)
        for index in range(MAX_STREAMS_PER_RUN):
            stream = SpoolStream.at(spool_dir, run_id, index)
            created = not stream.path.exists()
            fd = os.open(stream.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                if not _try_flock(fd):
                    os.close(fd)
                    continue
                if created:
                    _fsync_dir(spool_dir)
                written, repaired = _repair_tail(stream, fd)
            except BaseException:
                os.close(fd)
                raise
            return cls(stream, fd, written, repaired)
        raise OSError(f"more than {MAX_STREAMS_PER_RUN} live writers for run {run_id!r}")

    @property
    def fd(self) -> int:
        return self._fd

    def append(self, data: bytes) -> None:
        """Append complete lines; on failure, cut the file back so no torn line remains."""
        view = memoryview(data)
        done = 0
        try:
            while done < len(data):
                done += os.write(self._fd, view[done:])
        except OSError:
            if done:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self.written)
            raise
        self.written += len(data)

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _repair_tail(stream: SpoolStream, fd: int) -> tuple[int, int]:
    """Move a torn last line to ``.rejected`` and truncate; returns (size, torn bytes)."""
    size = os.fstat(fd).st_size
    end = complete_end(fd, size)
    if end < size:
        torn = os.pread(fd, size - end, end)
        quarantine(stream, torn, f"torn last line at offset {end} ({size - end} bytes)")
        os.ftruncate(fd, end)
        log.warning(
            "runwatch: spool %s ended in a torn line (%d bytes, from an interrupted writer); "
            "moved it to %s",
            stream.path,
            size - end,
            stream.rejected_path.name,
        )
    if read_ack(stream) > end:
        write_ack(stream, end)
    return end, size - end


# --- backlog -------------------------------------------------------------------------------


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
    try:
        fd = os.open(stream.path, os.O_RDONLY)
    except FileNotFoundError:
        return StreamBacklog(stream, 0, 0, 0)
    try:
        size = os.fstat(fd).st_size
        end = complete_end(fd, size)
    finally:
        os.close(fd)
    return StreamBacklog(stream, min(read_ack(stream), end), end, size)


def count_lines(path: Path, start: int, end: int) -> int:
    """Lines in ``[start, end)``: exact up to 64 MiB, extrapolated from 64 MiB beyond."""
    if end <= start:
        return 0
    with path.open("rb") as source:
        source.seek(start)
        counted = 0
        read = 0
        while read < min(end - start, _EXACT_COUNT_LIMIT):
            chunk = source.read(min(_COUNT_CHUNK, end - start - read))
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
        lines = sum(count_lines(i.stream.path, i.acked, i.complete_end) for i in items)
        live = any(is_live(i.stream) for i in items)
        result.append(Backlog(run_id, unshipped, lines, len(items), torn, live))
    return result


@dataclass(frozen=True)
class PrunedStream:
    stream: SpoolStream
    size: int


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
                stat = os.fstat(fd)
                if stat.st_mtime > cutoff or read_ack(stream) < stat.st_size:
                    continue
                stream.path.unlink()
                stream.ack_path.unlink(missing_ok=True)
        except FileNotFoundError:
            continue
        pruned.append(PrunedStream(stream, stat.st_size))
    return pruned
