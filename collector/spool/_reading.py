"""Reading complete lines from a stream (a file descriptor or a ``StreamReader``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

_TAIL_CHUNK = 64 * 1024
_FIRST_READ = 64 * 1024


class ReadsAt(Protocol):
    """What ``read_batch`` reads from besides a file descriptor (``StreamReader``)."""

    def pread(self, size: int, offset: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (fewer at a segment's end; none past the end)."""
        ...


def _reader_of(source: int | ReadsAt) -> Callable[[int, int], bytes]:
    if isinstance(source, int):
        return lambda size, offset: os.pread(source, size, offset)
    return source.pread


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


def read_batch(
    source: int | ReadsAt, start: int, end: int, max_lines: int, max_bytes: int
) -> Batch | None:
    """Up to ``max_lines`` complete lines from ``start``, not past ``end``; None when the
    range holds no complete line. A single line longer than ``max_bytes`` is read whole.

    Reads in chunks sized from the lines already read, so it reads little beyond what it
    returns (not ``max_bytes`` for a batch a fifth of that)."""
    if end <= start:
        return None
    pread = _reader_of(source)
    limit = min(max_bytes, end - start)
    chunks: list[bytes] = []
    read = lines = 0
    chunk_size = _FIRST_READ
    while read < limit and lines < max_lines:
        chunk = pread(min(chunk_size, limit - read), start + read)
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
        return _one_long_line(pread, start, end, data)
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


def _one_long_line(
    pread: Callable[[int, int], bytes], start: int, end: int, data: bytes
) -> Batch | None:
    """The first line from ``start`` when it is longer than a batch may be; None if torn."""
    while start + len(data) < end:
        more = pread(min(max(len(data), _FIRST_READ), end - start - len(data)), start + len(data))
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
