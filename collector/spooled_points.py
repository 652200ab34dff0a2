"""Reading a run's points back from this machine's spool (``runwatch runs export --batches``).

The spool holds every point the run recorded here, shipped or not, as line protocol written by
``collector.points``. This module parses exactly that dialect back: escaped measurement, tag
keys and values (``\\,`` ``\\=`` ``\\ ``), float fields, and quoted string fields (``\\"``,
``\\\\``; the spool's U+001E stands for a newline). Lines it cannot parse (a torn last line, a
foreign file) are skipped and counted, never raised.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from collector.points import SPOOL_NEWLINE
from collector.spool import StreamReader, list_streams, read_batch

_BATCH_LINES = 50_000
_BATCH_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class SpooledPoint:
    measurement: str
    tags: dict[str, str]
    fields: dict[str, float | str]
    time_ns: int


@dataclass
class SpoolReading:
    """What ``read_points`` saw: the points it yielded and the lines it skipped."""

    skipped: int = 0
    streams: list[Path] = field(default_factory=list)


def read_points(
    spool_dir: Path, run_id: str, measurements: frozenset[str], reading: SpoolReading | None = None
) -> Iterator[SpooledPoint]:
    """The run's points of ``measurements``, stream by stream, in the order written."""
    reading = reading if reading is not None else SpoolReading()
    for stream in list_streams(spool_dir, run_id):
        reading.streams.append(stream.path)
        try:
            reader = StreamReader(stream)
            end, _ = reader.extent()
        except OSError:
            continue
        with reader:
            offset = 0
            while (
                batch := read_batch(reader, offset, end, _BATCH_LINES, _BATCH_BYTES)
            ) is not None:
                offset = batch.end
                # split on b"\n" only: str.splitlines() would also cut at the spool's U+001E
                for raw in batch.data.split(b"\n"):
                    line = raw.decode("utf-8", "replace")
                    if not line.startswith(tuple(measurements)):
                        continue
                    point = parse_line(line)
                    if point is None:
                        reading.skipped += 1
                    elif point.measurement in measurements:
                        yield point


def parse_line(line: str) -> SpooledPoint | None:
    """One spooled line as a point; None when it is not one."""
    try:
        head, fields_text, time_text = _split(line, " ", quotes=True)
        time_ns = int(time_text)
        measurement, *tag_parts = _split(head, ",")
        tags = dict(_key_value(part) for part in tag_parts)
        fields = dict(_field(part) for part in _split(fields_text, ",", quotes=True))
    except ValueError:
        return None
    return SpooledPoint(_unescape(measurement), tags, fields, time_ns)


def _split(text: str, separator: str, *, quotes: bool = False, most: int = -1) -> list[str]:
    """``text`` cut at each ``separator`` that is not backslash-escaped (nor, with
    ``quotes``, inside a double-quoted string), at most ``most`` times."""
    parts: list[str] = []
    start, quoted, i = 0, False, 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if quotes and char == '"':
            quoted = not quoted
        elif char == separator and not quoted and len(parts) != most:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _key_value(part: str) -> tuple[str, str]:
    key, value = _split(part, "=", most=1)
    return _unescape(key), _unescape(value)


def _field(part: str) -> tuple[str, float | str]:
    key, raw = _split(part, "=", most=1)
    name = _unescape(key)
    if raw.startswith('"'):
        if not raw.endswith('"') or len(raw) < 2:
            raise ValueError("unterminated string")
        return name, _unescape(raw[1:-1]).replace(SPOOL_NEWLINE, "\n")
    return name, float(raw)
