"""A stream's bytes as segments: the head file, plain rolled segments, gzip-compressed ones.

Offsets are those of the stream's bytes as written, whatever file holds them now, so the
``.ack`` offset, batches and backlogs mean the same before and after compression.

- The head ``<stem>.lp`` holds offsets ``[0, …)`` until the writer rolls (the stream's lock
  stays on it; once compressed it is truncated to nothing).
- ``<stem>@<start>.lps``: a plain segment from ``start``; the last one is being appended to.
- ``<stem>@<start>-<end>.lps.gz``: ``[start, end)`` compressed (one gzip member: ``zcat``
  reads it). It is written to a temporary file, fsynced and renamed before the plain copy is
  removed, so a crash leaves either both (the compressed one wins) or only the plain one.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from collector.spool._reading import complete_end
from collector.spool._streams import (
    COMPRESSED_SEGMENT_SUFFIX,
    SEGMENT_MARK,
    SEGMENT_SUFFIX,
    SpoolStream,
)

try:  # ISA-L writes the same gzip as zlib, smaller, for a quarter of its CPU; reads it in a third
    from isal import isal_zlib as _isal
except ImportError:  # a platform without its wheel
    _isal = None  # type: ignore[assignment]

_INFLATE_ERRORS: tuple[type[Exception], ...] = (zlib.error,)
if _isal is not None:
    _INFLATE_ERRORS += (getattr(_isal, "error"),)  # noqa: B009 (its stub types it as an instance)

COMPRESSION_LEVEL = 1
"""ISA-L level 1 (of 0-3): ~19 bytes per typical batch point at ~0.13 µs; zlib's level 1,
where ISA-L is missing, gives ~22 bytes at ~0.57 µs (a background thread, but it shares the
training's cores; benchmarks/bench_pipeline_throughput.py measures what it costs)."""
_COPY_CHUNK = 1024 * 1024
_TEMP_SUFFIX = ".tmp"


class SpoolDamagedError(OSError):
    """A compressed segment that does not decompress to the bytes its name says it holds."""


@dataclass(frozen=True)
class Segment:
    """The stream's bytes from ``start``, in ``path``; ``end`` is known for compressed ones."""

    start: int
    path: Path
    compressed_end: int | None = None

    @property
    def compressed(self) -> bool:
        return self.compressed_end is not None


def list_segments(stream: SpoolStream) -> list[Segment]:
    """The stream's segments in offset order, the head first (it may be empty or missing).
    A plain file whose start a compressed segment also has is left out: it is the copy that
    compression had not removed yet."""
    plain: dict[int, Path] = {0: stream.path}
    compressed: dict[int, Segment] = {}
    prefix = stream.stem + SEGMENT_MARK
    with contextlib.suppress(FileNotFoundError), os.scandir(stream.path.parent) as entries:
        for entry in entries:
            name = entry.name
            if not name.startswith(prefix):
                continue
            offsets = name[len(prefix) :]
            if offsets.endswith(SEGMENT_SUFFIX) and offsets[: -len(SEGMENT_SUFFIX)].isdigit():
                plain[int(offsets[: -len(SEGMENT_SUFFIX)])] = Path(entry.path)
            elif offsets.endswith(COMPRESSED_SEGMENT_SUFFIX):
                start, _, end = offsets[: -len(COMPRESSED_SEGMENT_SUFFIX)].partition("-")
                if start.isdigit() and end.isdigit():
                    compressed[int(start)] = Segment(int(start), Path(entry.path), int(end))
    segments = list(compressed.values())
    segments += [Segment(start, path) for start, path in plain.items() if start not in compressed]
    return sorted(segments, key=lambda s: s.start)


def stale_files(stream: SpoolStream) -> list[Path]:
    """Leftovers of an interrupted compression: temporary files and plain copies of
    compressed segments (never the head, which holds the stream's lock)."""
    kept = {s.path for s in list_segments(stream)}
    prefix = stream.stem + SEGMENT_MARK
    stale = []
    with contextlib.suppress(FileNotFoundError), os.scandir(stream.path.parent) as entries:
        for entry in entries:
            name = entry.name
            if not name.startswith(prefix) or Path(entry.path) in kept:
                continue
            if name.endswith(_TEMP_SUFFIX) or name.endswith(SEGMENT_SUFFIX):
                stale.append(Path(entry.path))
    return stale


def remove_stale_files(stream: SpoolStream) -> None:
    """``stale_files`` removed: for the holder of the stream's lock only."""
    for path in stale_files(stream):
        with contextlib.suppress(OSError):
            path.unlink()


def finished_plain_segments(stream: SpoolStream) -> list[tuple[int, int, Path]]:
    """(start, end, path) of every plain segment the stream has moved on from: each one but
    the last, which may still be appended to. What compression has not reached yet."""
    return [
        (finished.start, following.start, finished.path)
        for finished, following in itertools.pairwise(list_segments(stream))
        if not finished.compressed
    ]


def compress_finished_segments(stream: SpoolStream) -> int:
    """Compress what ``finished_plain_segments`` lists, after removing what an interrupted
    compression left; returns how many. Only for whoever holds the stream's lock with no
    writer behind it (``runwatch sync``): a writer compresses its own on its thread."""
    remove_stale_files(stream)
    finished = finished_plain_segments(stream)
    for start, end, path in finished:
        compress_segment(stream, start, end, path)
    return len(finished)


def compress_segment(stream: SpoolStream, start: int, end: int, source: Path) -> Path:
    """Write ``[start, end)`` of ``source`` (a finished plain segment or the head) as a
    compressed segment, then remove the plain bytes (the head is truncated: it keeps the lock)."""
    target = stream.compressed_segment_path(start, end)
    temp = target.with_name(f"{target.name}.{os.getpid()}{_TEMP_SUFFIX}")
    compressor = gzip_compressor()
    try:
        with source.open("rb") as plain, temp.open("wb") as out:
            remaining = end - start
            while remaining:
                chunk = plain.read(min(_COPY_CHUNK, remaining))
                if not chunk:
                    raise OSError(f"{source} ends before offset {end}")
                out.write(compressor.compress(chunk))
                remaining -= len(chunk)
            out.write(compressor.flush())
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    fsync_dir(stream.path.parent)
    if source == stream.path:
        os.truncate(source, 0)
    else:
        source.unlink()
    return target


class Compressor(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...
    def flush(self) -> bytes: ...


def gzip_compressor() -> Compressor:
    """A compressor writing one gzip member (wbits 31), by ISA-L when it is installed."""
    if _isal is not None:
        return _isal.compressobj(COMPRESSION_LEVEL, zlib.DEFLATED, 31)
    return zlib.compressobj(COMPRESSION_LEVEL, zlib.DEFLATED, 31)


def gunzip(data: bytes) -> bytes:
    """The bytes of one gzip member, by ISA-L when it is installed."""
    if _isal is not None:
        return _isal.decompress(data, 31)
    return zlib.decompress(data, 31)


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class StreamReader:
    """Reads a stream by offset across its segments. A compressed segment is decompressed
    whole when first read (the last one stays cached: reads are sequential). Safe while the
    stream's writer rolls and compresses: a read that comes back short where more should be
    looks at the segments again."""

    def __init__(self, stream: SpoolStream, head_fd: int | None = None) -> None:
        self.stream = stream
        self._head_fd = head_fd  # borrowed: the caller's descriptor of the head
        self._fds: dict[Path, int] = {}
        self._segments = list_segments(stream)
        self._inflated: tuple[Path, bytes] | None = None

    def pread(self, size: int, offset: int) -> bytes:
        """Up to ``size`` bytes at ``offset``, from one segment (fewer at its end)."""
        data = self._read_located(size, offset)
        if not data:
            self.refresh()
            data = self._read_located(size, offset)
        return data

    def read(self, start: int, end: int) -> bytes:
        """The bytes ``[start, end)`` across segments (fewer only where the stream ends)."""
        chunks = []
        while start < end and (chunk := self.pread(end - start, start)):
            chunks.append(chunk)
            start += len(chunk)
        return b"".join(chunks)

    def extent(self) -> tuple[int, int]:
        """(offset past the last complete line, offset past the last byte) of the stream."""
        self.refresh()
        last = self._segments[-1]
        if last.compressed_end is not None:
            return last.compressed_end, last.compressed_end
        fd = self._fd(last.path)
        if fd is None:
            return last.start, last.start
        size = os.fstat(fd).st_size
        return last.start + complete_end(fd, size), last.start + size

    def refresh(self) -> None:
        self._segments = list_segments(self.stream)
        current = {s.path for s in self._segments}
        for path in [p for p in self._fds if p not in current]:
            os.close(self._fds.pop(path))

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._inflated = None

    def __enter__(self) -> StreamReader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _read_located(self, size: int, offset: int) -> bytes:
        segment = self._locate(offset)
        if segment is None:
            return b""
        if segment.compressed_end is not None:
            data = self._inflate(segment)
            return data[offset - segment.start : offset - segment.start + size]
        fd = self._fd(segment.path)
        return b"" if fd is None else os.pread(fd, size, offset - segment.start)

    def _locate(self, offset: int) -> Segment | None:
        for segment in reversed(self._segments):
            if segment.start <= offset:
                end = segment.compressed_end
                return segment if end is None or offset < end else None
        return None

    def _fd(self, path: Path) -> int | None:
        if path == self.stream.path and self._head_fd is not None:
            return self._head_fd
        fd = self._fds.get(path)
        if fd is None:
            try:
                fd = self._fds[path] = os.open(path, os.O_RDONLY)
            except FileNotFoundError:  # compressed meanwhile: refresh() finds the new file
                return None
        return fd

    def _inflate(self, segment: Segment) -> bytes:
        if self._inflated is not None and self._inflated[0] == segment.path:
            return self._inflated[1]
        try:
            data = gunzip(segment.path.read_bytes())
        except _INFLATE_ERRORS as exc:
            message = f"compressed spool segment {segment.path} is damaged: {exc}"
            raise SpoolDamagedError(message) from exc
        if len(data) != (segment.compressed_end or 0) - segment.start:
            raise SpoolDamagedError(
                f"compressed spool segment {segment.path} holds {len(data)} bytes, "
                f"its name says {(segment.compressed_end or 0) - segment.start}"
            )
        self._inflated = (segment.path, data)
        return data
