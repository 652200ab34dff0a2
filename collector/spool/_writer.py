"""Writing a stream: the lock, appends of whole lines, rolling and compressing segments."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from collector.spool._reading import complete_end
from collector.spool._segments import (
    compress_segment,
    finished_plain_segments,
    fsync_dir,
    list_segments,
    remove_stale_files,
)
from collector.spool._streams import (
    MAX_STREAMS_PER_RUN,
    SpoolStream,
    quarantine,
    read_ack,
    write_ack,
)

log = logging.getLogger("collector.spool")

DEFAULT_SEGMENT_BYTES = 8 * 1024 * 1024
"""Plain bytes after which the writer starts a new segment and compresses the finished one
(about 50,000 points: a fraction of a second of compression on a background thread)."""


_COMPACTOR_NICENESS = 19
"""Compression waits for idle CPU: the training and the shipper come first."""
CLOSE_COMPRESSION_BUDGET_S = 0.5
"""What ``close()`` spends at most on segments compression has not reached yet (a training
that kept both cores busy starved it), so closing a run stays fast; the rest stays plain
until a writer of the run opens the stream again."""


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
    """A read-only descriptor of the head holding the stream's lock, or None while a writer
    holds it."""
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


class SpoolWriter:
    """Appends whole lines to one stream it holds locked, rolling to a new segment every
    ``segment_bytes`` and compressing finished ones on a background thread. Not thread-safe:
    one caller at a time. Open it with ``SpoolWriter.open``."""

    def __init__(self, stream: SpoolStream, lock_fd: int, segment_bytes: int) -> None:
        self.stream = stream
        self.segment_bytes = segment_bytes
        self._lock_fd = lock_fd
        self._compactor: _Compactor | None = None
        remove_stale_files(stream)
        segments = list_segments(stream)
        if segments[0].path != stream.path and os.fstat(lock_fd).st_size:
            os.ftruncate(lock_fd, 0)  # a copy of compressed bytes left by a crash
        tail = segments[-1]
        self._tail_fd: int | None = None
        self._tail_start = tail.start if tail.compressed_end is None else tail.compressed_end
        self.repaired_bytes = 0
        """Torn-tail bytes moved to ``.rejected`` when the stream was opened."""
        if tail.compressed_end is None:
            if tail.path == stream.path:
                self._tail_fd = lock_fd
            else:
                self._tail_fd = os.open(tail.path, os.O_RDWR | os.O_APPEND)
            try:
                self.repaired_bytes = self._repair_tail()
            except BaseException:
                if self._tail_fd != lock_fd:
                    os.close(self._tail_fd)
                raise
        self.written = self._tail_start + (
            os.fstat(self._tail_fd).st_size if self._tail_fd is not None else 0
        )
        """Offset just past the last complete line (what readers may ship)."""
        for start, end, path in finished_plain_segments(stream):
            self._compress_later(start, end, path)
        if read_ack(stream) > self.written:
            write_ack(stream, self.written)

    @classmethod
    def open(
        cls, spool_dir: Path, run_id: str, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES
    ) -> SpoolWriter:
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
                    fsync_dir(spool_dir)
                return cls(stream, fd, segment_bytes)
            except BaseException:
                os.close(fd)
                raise
        raise OSError(f"more than {MAX_STREAMS_PER_RUN} live writers for run {run_id!r}")

    def append(self, data: bytes) -> None:
        """Append complete lines; on failure, cut the file back so no torn line remains."""
        if self._tail_fd is None:
            self._tail_fd = self._open_segment(self.written)
        fd = self._tail_fd
        view = memoryview(data)
        done = 0
        try:
            while done < len(data):
                done += os.write(fd, view[done:])
        except OSError:
            if done:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, self.written - self._tail_start)
            raise
        self.written += len(data)
        if self.written - self._tail_start >= self.segment_bytes:
            self._roll()

    def sync(self) -> None:
        if self._tail_fd is not None:
            os.fsync(self._tail_fd)

    def close(self, compression_budget_s: float = CLOSE_COMPRESSION_BUDGET_S) -> None:
        """Fsync, compress the rolled segments (the last one too: nothing appends to it any
        more; a stream that never rolled keeps its plain head) for at most
        ``compression_budget_s`` beyond the segment under way, then release the lock."""
        if self._lock_fd < 0:
            return
        try:
            if self._tail_fd is not None:
                os.fsync(self._tail_fd)
        finally:
            if self._tail_fd is not None and self._tail_fd != self._lock_fd:
                os.close(self._tail_fd)
                if self.written > self._tail_start:
                    self._compress_later(self._tail_start, self.written, self._tail_path())
                else:  # rolled, then nothing came: a resumed writer starts it again
                    with contextlib.suppress(OSError):
                        self._tail_path().unlink()
            self._tail_fd = None
            if self._compactor is not None:
                self._compactor.finish(compression_budget_s)
            lock_fd, self._lock_fd = self._lock_fd, -1
            os.close(lock_fd)

    def _tail_path(self) -> Path:
        if self._tail_fd == self._lock_fd:
            return self.stream.path
        return self.stream.segment_path(self._tail_start)

    def _open_segment(self, start: int) -> int:
        fd = os.open(
            self.stream.segment_path(start), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644
        )
        fsync_dir(self.stream.path.parent)
        return fd

    def _roll(self) -> None:
        try:
            new_fd = self._open_segment(self.written)
        except OSError as exc:  # keep appending to this segment; try again after the next append
            log.warning(
                "runwatch: cannot start a new spool segment for %s: %s", self.stream.path, exc
            )
            return
        finished_fd, finished_path = self._tail_fd, self._tail_path()
        start = self._tail_start
        self._tail_fd, self._tail_start = new_fd, self.written
        if finished_fd is not None and finished_fd != self._lock_fd:
            os.close(finished_fd)
        self._compress_later(start, self.written, finished_path)

    def _compress_later(self, start: int, end: int, path: Path) -> None:
        if self._compactor is None:
            self._compactor = _Compactor(self.stream)
        self._compactor.submit(start, end, path)

    def _repair_tail(self) -> int:
        """Move a torn last line of the tail segment to ``.rejected`` and truncate."""
        assert self._tail_fd is not None
        fd = self._tail_fd
        size = os.fstat(fd).st_size
        end = complete_end(fd, size)
        if end < size:
            offset = self._tail_start + end
            torn = os.pread(fd, size - end, end)
            quarantine(self.stream, torn, f"torn last line at offset {offset} ({size - end} bytes)")
            os.ftruncate(fd, end)
            log.warning(
                "runwatch: spool %s ended in a torn line (%d bytes, from an interrupted "
                "writer); moved it to %s",
                self.stream.path,
                size - end,
                self.stream.rejected_path.name,
            )
        return size - end


class _Compactor:
    """Compresses a writer's finished segments, in order, on one background thread."""

    def __init__(self, stream: SpoolStream) -> None:
        self._stream = stream
        self._queue: queue.SimpleQueue[tuple[int, int, Path] | None] = queue.SimpleQueue()
        self._give_up_at: float | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"runwatch-spool-compress-{stream.stem}", daemon=True
        )
        self._thread.start()

    def submit(self, start: int, end: int, path: Path) -> None:
        self._queue.put((start, end, path))

    def finish(self, budget_s: float) -> None:
        """Compress what is queued for at most ``budget_s`` (plus the segment under way); what
        is left stays plain, correct for every reader, and the next writer of the stream
        compresses it."""
        self._give_up_at = time.monotonic() + budget_s
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        with contextlib.suppress(AttributeError, OSError):  # Linux: niceness is per thread
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _COMPACTOR_NICENESS)
        while (item := self._queue.get()) is not None:
            if self._give_up_at is not None and time.monotonic() > self._give_up_at:
                continue  # closing, out of time: the rest stays plain
            start, end, path = item
            try:
                compress_segment(self._stream, start, end, path)
            except Exception as exc:  # it stays plain: readers and sync still read it
                log.warning(
                    "runwatch: could not compress spool segment %s (%s: %s); it stays uncompressed",
                    path,
                    type(exc).__name__,
                    exc,
                )
