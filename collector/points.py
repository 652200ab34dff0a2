"""Points as InfluxDB line protocol, built with plain string formatting (no influxdb-client
``Point``: it costs 6 µs a point, an f-string line under 1 µs).

Conventions, all enforced here and never raised to the caller:

- **Names.** A user metric or tag name is normalised one way: lower-cased, every run of
  characters outside ``[a-z0-9]`` becomes one ``_`` (so runs of ``_`` collapse too), then
  leading and trailing ``_`` are stripped: ``train/loss`` → ``train_loss``, ``val loss`` →
  ``val_loss``, ``lr-Adam`` → ``lr_adam``, ``Val__F1 `` → ``val_f1``. A name that normalises
  to nothing (``""``, ``"//"``, ``"损失"``) is invalid. ``time`` (reserved by InfluxDB)
  becomes ``time_value``.
- **Values.** Numeric fields are always floats: ``bool``, ``int``, ``float``, and anything
  with ``__float__`` or ``.item()`` (numpy scalars, 0-d torch tensors; neither is imported
  here). Strings are only accepted where the schema says (``event.text``). NaN and ±Inf are
  dropped and ``<field>_nonfinite=1.0`` is written instead. A float is written as the
  shortest text that reads back as the same float, by orjson (``0.00001``, ``1e+16``): the
  digits ``repr`` gives, in a third of its time (float formatting was most of building a
  line; bench_recorder).
- **Escaping.** Tag values escape ``,``, ``=`` and space with a backslash; newline and CR in a
  tag value become a space. InfluxDB 2 then reads every tag value back exactly, but one: line
  protocol cannot end a tag value with a backslash (the separator after it would read as
  escaped), so a value ending in a backslash gets a trailing space: ``C:\\`` reads back as
  ``C:\\ `` (influxdb-client appends the space too). String field values escape ``\\`` and
  ``"``. Lone surrogates become ``?``; NUL and U+001E become U+FFFD.
- **Long strings.** InfluxDB 2 refuses a string field value over 1 MiB (its UTF-8 bytes), so
  a longer ``event.text`` is cut to 1 MiB (at a character boundary) and warned about once.
- **Newlines in string fields.** InfluxDB accepts a raw newline inside a quoted string, but
  the spool keeps one point per line, so the spool stores it as U+001E (record separator)
  and ``to_wire`` turns it back into ``\\n`` just before sending. That is why U+001E from
  users is replaced.
- **Tag order.** A line's tags are written sorted by key, the run's base tags and the
  call's merged (a call's tag replaces a base tag of the same key): InfluxDB keys a series by
  its sorted tags and sorts every line that comes otherwise, which cost it ~8% more CPU per
  point here. The ``{"Layer": "a", "layer": "b"}`` kind of clash keeps the last value (two
  tags of one key would get the line refused).
- **Time.** ``int`` nanoseconds since the epoch (``time.time_ns()``); ``float`` seconds
  since the epoch (``time.time()``); ``datetime`` (naive means local time, as in Python).
- **Invalid input** (unknown measurement, empty or unknown field name, non-numeric value,
  unusable tag) is dropped, counted, and logged as ONE warning per name.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, NamedTuple

from orjson import dumps as _json

from collector import schema
from collector.values import as_number as coerce_float
from collector.values import canonical_name as normalise_name

__all__ = ["coerce_float", "normalise_name"]  # the one rule of collector.values, re-exported

log = logging.getLogger("collector.points")

MAX_STRING_FIELD_BYTES: Final = 1_048_576
"""InfluxDB 2 refuses a longer string field value (tsdb.MaxFieldValueLength)."""
SPOOL_NEWLINE: Final = "\x1e"
"""Stands for a newline inside a string field value while the line sits in the spool."""

_REPLACEMENT = "\ufffd"

_MEASUREMENT_ESCAPES = str.maketrans(
    {",": r"\,", " ": r"\ ", "\n": r"\ ", "\r": r"\ ", "\x00": _REPLACEMENT, "\x1e": _REPLACEMENT}
)
_KEY_ESCAPES = str.maketrans(
    {
        ",": r"\,",
        "=": r"\=",
        " ": r"\ ",
        "\n": r"\ ",
        "\r": r"\ ",
        "\x00": _REPLACEMENT,
        "\x1e": _REPLACEMENT,
    }
)
_STRING_ESCAPES = str.maketrans(
    {
        "\\": "\\\\",
        '"': '\\"',
        "\n": SPOOL_NEWLINE,
        "\x00": _REPLACEMENT,
        "\x1e": _REPLACEMENT,
    }
)
_MAX_WARNED_NAMES = 10_000
_MAX_CACHED_TAGS = 4_096
_MIN_PLAUSIBLE_NS = 10**15  # an int time below this is not nanoseconds (1970-01-12)


def _valid_unicode(text: str) -> str:
    if text.isascii():
        return text
    return text.encode("utf-8", "replace").decode("utf-8")


def escape_measurement(name: str) -> str:
    return _valid_unicode(name).translate(_MEASUREMENT_ESCAPES)


def escape_key(key: str) -> str:
    """Tag keys and field keys."""
    return _valid_unicode(key).translate(_KEY_ESCAPES)


def escape_tag_value(value: str) -> str | None:
    """The escaped tag value, or None for an empty value (line protocol has none)."""
    if not value:
        return None
    text = _valid_unicode(value)
    if "\n" in text or "\r" in text:
        text = text.replace("\n", " ").replace("\r", " ")
    escaped = text.translate(_KEY_ESCAPES)
    return escaped + "\\ " if text.endswith("\\") else escaped


def truncate_string_field(value: str) -> str | None:
    """``value`` cut to what InfluxDB 2 stores in one string field (1 MiB of UTF-8), or None
    when it fits."""
    if len(value) * 4 <= MAX_STRING_FIELD_BYTES:  # a character is at most 4 UTF-8 bytes
        return None
    # measured as InfluxDB sees it: NUL and U+001E become 3-byte U+FFFD before sending
    text = _valid_unicode(value).replace("\x00", _REPLACEMENT).replace("\x1e", _REPLACEMENT)
    encoded = text.encode("utf-8")
    if len(encoded) <= MAX_STRING_FIELD_BYTES:
        return None
    return encoded[:MAX_STRING_FIELD_BYTES].decode("utf-8", "ignore")


def format_string_field(value: str) -> str:
    """A quoted string field value, newlines stored as ``SPOOL_NEWLINE``."""
    return '"' + _valid_unicode(value).translate(_STRING_ESCAPES) + '"'


def to_wire(spooled: bytes) -> bytes:
    """Spooled lines as the line protocol InfluxDB gets (string-field newlines restored)."""
    marker = SPOOL_NEWLINE.encode()
    return spooled.replace(marker, b"\n") if marker in spooled else spooled


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_time_ns(value: object) -> int | None:
    """Nanoseconds since the epoch for an explicit ``time=``; None when unusable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= _MIN_PLAUSIBLE_NS else None
    if isinstance(value, float):
        return int(value * 1e9) if math.isfinite(value) and value > 0 else None
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.astimezone()
        delta = moment - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
    return None


class ProblemLog:
    """Counts dropped input and warns once per distinct problem (bounded memory)."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self._log = logger
        self._seen: set[tuple[str, str]] = set()
        self.dropped_points = 0
        self.dropped_fields = 0
        self.nonfinite_fields = 0
        self.dropped_tags = 0

    def warn_once(self, kind: str, name: str, message: str) -> None:
        key = (kind, name)
        if key in self._seen or len(self._seen) >= _MAX_WARNED_NAMES:
            return
        self._seen.add(key)
        self._log.warning("runwatch: %s (reported once)", message)


_FieldSpec = tuple[str, str, bool]
"""(escaped key, escaped ``<key>_nonfinite`` key, is a string field)."""


@dataclass(frozen=True)
class _TagPiece:
    text: str  # ",key=value", escaped
    key: str
    value: str


class PlainRows(NamedTuple):
    """``PointBuilder.plain_rows``' answer: the points' lines, and with ``observe`` each
    one's observed fields and all its tags, as ``build`` gives them."""

    text: str
    """One line per point, in order, each ending with its newline (the only newline in it:
    tag keys and values escape theirs)."""
    observed: list[dict[str, float]] | None
    tags: list[dict[str, str]] | None


class LineCaches(NamedTuple):
    """What a builder has resolved, as the compiled flush (``collector._lines``) reads it:
    field specs by measurement and raw name, each measurement's untagged prefix, tagged
    points' prefixes by ``_one_tag_cache_key`` / ``_tag_set_cache_key``, the base tags. Only
    the builder fills them (``tag_prefixes`` is cleared when full)."""

    fields: dict[str, dict[object, _FieldSpec | None]]
    prefixes: dict[str, str]
    tag_prefixes: dict[tuple[object, ...], str]
    base_tags: dict[str, str]


class PointBuilder:
    """Turns ``record()`` arguments into one line of line protocol (with trailing newline).

    Caches name normalisation and escaped tags, so a repeated point costs a few dict look-ups
    and one f-string per field.
    """

    def __init__(self, base_tags: Mapping[str, object], problems: ProblemLog | None = None) -> None:
        self.problems = problems or ProblemLog()
        pieces: dict[str, _TagPiece] = {}
        for raw_key, raw_value in base_tags.items():
            piece = self._tag_piece(raw_key, raw_value, allow_base=True)
            if piece is not None:
                pieces[piece.key] = piece
        self._base_pieces = sorted(pieces.values(), key=_tag_key)
        self.base_tags: dict[str, str] = {piece.key: piece.value for piece in self._base_pieces}
        self._measurements = {name: escape_measurement(name) for name in schema.MEASUREMENTS}
        base_text = "".join(piece.text for piece in self._base_pieces)
        self._prefixes = {name: escaped + base_text for name, escaped in self._measurements.items()}
        self._around: dict[str, tuple[str, str]] = {}
        self._formats: dict[
            tuple[str, tuple[object, ...], bool], tuple[str, tuple[str, ...]] | None
        ] = {}
        self._prefix_cache: dict[tuple[object, ...], str] = {}
        """Points' measurement and tags as ``build`` writes them, by ``_tag_set_cache_key``
        or, for one tag with a str value, (measurement, key, value)."""
        self._fields: dict[str, dict[object, _FieldSpec | None]] = {
            name: {} for name in schema.MEASUREMENTS
        }
        self._tag_cache: dict[tuple[object, ...], _TagPiece | None] = {}

    def line_caches(self) -> LineCaches:
        """The caches, the same objects for the builder's life (cleared, never replaced)."""
        return LineCaches(self._fields, self._prefixes, self._prefix_cache, self.base_tags)

    def plain_rows(
        self,
        measurement: str,
        rows: list[Mapping[str, object]],
        times: list[int],
        tags: list[Mapping[str, object] | None] | None = None,
        observe: bool = False,
    ) -> PlainRows | None:
        """``build``'s lines for points ``rows[i]`` at ``times[i]`` with ``tags[i]`` (all
        untagged when ``tags`` is None), whose fields have one name order (the caller groups
        them), all known numeric fields of ``measurement`` with finite int or float values;
        with ``observe`` also what ``build`` gives observers of each. None when any is not,
        or a tag value cannot be a dict key (then ``build`` takes each). One ``%`` format
        for the whole group: the per-point work that is left is gathering values; the
        numbers are formatted in one orjson call."""
        names = tuple(rows[0])
        tagged = tags is not None and any(tags)
        plain = self._formats.get((measurement, names, tagged), _UNKNOWN_FORMAT)
        if plain is _UNKNOWN_FORMAT:
            plain = self._plain_format(measurement, names, tagged)
        if plain is None:
            return None
        line_format, keys = plain
        prefixes = self._tagged_prefixes(measurement, tags) if tagged else None  # type: ignore[arg-type]
        if tagged and prefixes is None:
            return None
        values: list[object] = []
        gather = values.extend
        for row in rows:
            gather(row.values())
        width = len(names)
        if len(values) != width * len(rows) or not set(map(type, values)) <= _PLAIN_TYPES:
            return None
        try:
            numbers = list(map(float, values))  # type: ignore[arg-type]
        except OverflowError:  # an int past the float range: build drops that field
            return None
        if not math.isfinite(sum(numbers)) and not all(map(math.isfinite, numbers)):
            return None  # a NaN or infinity (the sum alone also overflows on huge values)
        text = _format_lines(line_format, width, numbers, times, prefixes)
        if not observe:
            return PlainRows(text, None, None)
        observed = [
            dict(zip(keys, numbers[start : start + width], strict=True))
            for start in range(0, len(numbers), width)
        ]
        base = self.base_tags
        all_tags = [
            self._tagged_prefix(measurement, point_tags, True)[1] or base if point_tags else base
            for point_tags in (tags or [None] * len(rows))
        ]
        return PlainRows(text, observed, all_tags)

    def plain_series(
        self,
        measurement: str,
        names: tuple[str, ...],
        tag: str,
        tag_values: list[object],
        columns: list[list[float]],
        times: list[int],
    ) -> str | None:
        """``build``'s lines for the points ``{names[j]: columns[j][i]}`` tagged
        ``tag=tag_values[i]`` at ``times[i]`` (a series: ``Recorder.record_series``), all
        known numeric fields with finite float values; None when any is not, or a tag value
        cannot be a dict key. ``plain_rows`` without a dict per point."""
        plain = self._formats.get((measurement, names, True), _UNKNOWN_FORMAT)
        if plain is _UNKNOWN_FORMAT:
            plain = self._plain_format(measurement, names, True)
        if plain is None:
            return None
        prefixes = self._one_tag_prefixes(measurement, tag, tag_values)
        if prefixes is None:
            return None
        width = len(names)
        numbers: list[float] = [0.0] * (width * len(times))
        for field, column in enumerate(columns):
            numbers[field::width] = column
        if not math.isfinite(sum(numbers)) and not all(map(math.isfinite, numbers)):
            return None
        return _format_lines(plain[0], width, numbers, times, prefixes)

    def _one_tag_prefixes(
        self, measurement: str, tag: str, tag_values: list[object]
    ) -> list[str] | None:
        """``_tagged_prefixes`` of points tagged ``{tag: value}`` for each value."""
        cache = self._prefix_cache
        prefixes: list[str] = []
        for value in tag_values:
            key = _one_tag_cache_key(measurement, tag, value)
            try:
                prefix = cache.get(key)
            except TypeError:  # an unhashable tag value
                return None
            if prefix is None:
                prefix = self._remember_prefix(key, measurement, {tag: value})
            prefixes.append(prefix)
        return prefixes

    def _remember_prefix(
        self, key: tuple[object, ...], measurement: str, tags: Mapping[str, object]
    ) -> str:
        prefix = self._tagged_prefix(measurement, tags, False)[0]
        if len(self._prefix_cache) >= _MAX_CACHED_TAGS:
            self._prefix_cache.clear()
        self._prefix_cache[key] = prefix
        return prefix

    def _tagged_prefixes(
        self, measurement: str, tags: list[Mapping[str, object] | None]
    ) -> list[str] | None:
        """Each point's measurement and tags as ``build`` writes them; None when a tag value
        cannot be a dict key."""
        untagged = self._prefixes[measurement]
        prefixes: list[str] = []
        for point_tags in tags:
            prefix = self._cached_prefix(measurement, point_tags) if point_tags else untagged
            if not prefix:
                return None
            prefixes.append(prefix)
        return prefixes

    def _cached_prefix(self, measurement: str, tags: Mapping[str, object]) -> str:
        """A tagged point's measurement and tags as ``build`` writes them, from the cache the
        compiled flush reads too; "" when a tag value cannot be a dict key."""
        if len(tags) == 1:  # the common case (a layer, a client): a cheaper key
            ((tag_key, tag_value),) = tags.items()
            key = _one_tag_cache_key(measurement, tag_key, tag_value)
        else:
            key = _tag_set_cache_key(measurement, tags)
        try:
            prefix = self._prefix_cache.get(key)
        except TypeError:  # an unhashable tag value
            return ""
        if prefix is None:
            prefix = self._remember_prefix(key, measurement, tags)
        return prefix

    def _plain_format(
        self, measurement: str, names: tuple[object, ...], tagged: bool
    ) -> tuple[str, tuple[str, ...]] | None:
        """The ``%`` format of one line with these numeric fields and the time (after the
        point's measurement and tags as a first argument when ``tagged``) and the fields'
        keys, or None when a name is not a known numeric field of ``measurement``."""
        prefix = self._prefixes.get(measurement)
        keys: list[str] = []
        if prefix is not None:
            specs = self._fields[measurement]
            for name in names:
                spec = specs.get(name, _MISSING)
                if spec is _MISSING:
                    spec = specs[name] = self._resolve_field(measurement, name)
                if spec is None or spec[2]:  # dropped, or a string field
                    keys = []
                    break
                keys.append(spec[0])
        plain = None
        if keys and prefix is not None:  # field keys are [a-z0-9_]: only tags may hold a %
            fields = ",".join(f"{key}=%s" for key in keys)
            start = "%s" if tagged else prefix.replace("%", "%%")
            plain = (f"{start} {fields} %d\n", tuple(keys))
        if len(self._formats) >= _MAX_CACHED_FORMATS:
            self._formats.clear()
        self._formats[(measurement, names, tagged)] = plain
        return plain

    def build(
        self,
        measurement: str,
        fields: Mapping[str, object],
        tags: Mapping[str, object] | None,
        time_ns: int,
        observe: bool = False,
    ) -> tuple[str | None, dict[str, float] | None, dict[str, str] | None]:
        """``(line or None, observed fields, all tags)``; the last two only when ``observe``.

        Observed fields are the finite values plus ``<field>_nonfinite=1.0`` for a NaN/Inf.
        """
        prefix = self._prefixes.get(measurement)
        if prefix is None:
            self._drop_point("measurement", str(measurement), "unknown measurement")
            return None, None, None
        specs = self._fields[measurement]
        observed: dict[str, float] | None = {} if observe else None
        parts: list[str] = []
        problems = self.problems
        isfinite = math.isfinite
        for name, value in fields.items():
            spec = specs.get(name, _MISSING)
            if spec is _MISSING:
                spec = specs[name] = self._resolve_field(measurement, name)
            if spec is None:
                problems.dropped_fields += 1
                continue
            key, nonfinite_key, is_string = spec
            if is_string:
                parts.append(f"{key}={self._string_value(measurement, key, str(value))}")
                continue
            kind = type(value)
            if kind is float:
                number: float | None = value  # type: ignore[assignment]
            elif kind is int:
                try:
                    number = float(value)  # type: ignore[arg-type]
                except OverflowError:
                    number = None
            else:
                number = coerce_float(value)
            if number is None:
                problems.dropped_fields += 1
                problems.warn_once(
                    "value",
                    f"{measurement}.{key}",
                    f"dropped non-numeric value of type {kind.__name__} for field "
                    f"{key!r} of measurement {measurement!r}",
                )
                continue
            if isfinite(number):
                parts.append(f"{key}={_json(number).decode()}")
                if observed is not None:
                    observed[key] = number
            else:
                problems.nonfinite_fields += 1
                parts.append(f"{nonfinite_key}=1.0")
                if observed is not None:  # so a NaN loss shows as NaN in its gauge
                    observed[nonfinite_key] = 1.0
        if not parts:
            self._drop_point("empty", measurement, f"point of {measurement!r} has no valid field")
            return None, None, None
        all_tags: dict[str, str] | None = None
        if tags and observe:
            prefix, all_tags = self._tagged_prefix(measurement, tags, True)
        elif tags:  # "" when unhashable: built without the cache
            prefix = (
                self._cached_prefix(measurement, tags)
                or self._tagged_prefix(measurement, tags, False)[0]
            )
        elif observe:
            all_tags = self.base_tags
        return f"{prefix} {','.join(parts)} {time_ns}\n", observed, all_tags

    def _string_value(self, measurement: str, key: str, text: str) -> str:
        cut = truncate_string_field(text)
        if cut is not None:
            self.problems.warn_once(
                "long",
                f"{measurement}.{key}",
                f"cut field {key!r} of measurement {measurement!r} to "
                f"{MAX_STRING_FIELD_BYTES} bytes (InfluxDB stores no longer string)",
            )
            text = cut
        return format_string_field(text)

    def _drop_point(self, kind: str, name: str, message: str) -> None:
        self.problems.dropped_points += 1
        self.problems.warn_once(kind, name, f"dropped point: {message}: {name!r}")

    def _resolve_field(self, measurement: str, raw_name: object) -> _FieldSpec | None:
        key = normalise_name(raw_name)
        spec = schema.MEASUREMENTS[measurement]
        if key is None:
            self.problems.warn_once(
                "field", f"{measurement}.{raw_name}", f"dropped field with empty name {raw_name!r}"
            )
            return None
        if not spec.accepts_field(key):
            self.problems.warn_once(
                "field",
                f"{measurement}.{key}",
                f"dropped unknown field {key!r} of measurement {measurement!r} "
                f"(known: {', '.join(spec.fields)})",
            )
            return None
        return escape_key(key), escape_key(schema.nonfinite_field(key)), spec.is_string_field(key)

    def _tagged_prefix(
        self, measurement: str, tags: Mapping[str, object], observe: bool
    ) -> tuple[str, dict[str, str] | None]:
        """The measurement and every tag of the point, keys in order (a call's tag replaces a
        base tag of its key), and with ``observe`` the tags as a dict."""
        pieces = self._call_tags(tags)
        if not pieces:
            return self._prefixes[measurement], self.base_tags if observe else None
        if len(pieces) == 1:  # the common case: one tag (a layer, a client) slots in
            piece = pieces[0]
            around = self._around.get(piece.key)
            if around is None:
                around = self._base_around(piece.key)
            text = around[0] + piece.text + around[1]
        else:
            merged = {base.key: base for base in self._base_pieces}
            merged.update((piece.key, piece) for piece in pieces)
            text = "".join(merged[key].text for key in sorted(merged))
        all_tags = None
        if observe:
            all_tags = dict(self.base_tags)
            all_tags.update((piece.key, piece.value) for piece in pieces)
        return self._measurements[measurement] + text, all_tags

    def _base_around(self, key: str) -> tuple[str, str]:
        """The base tags' text before and after a tag ``key`` (one of that key left out)."""
        before = "".join(piece.text for piece in self._base_pieces if piece.key < key)
        after = "".join(piece.text for piece in self._base_pieces if piece.key > key)
        if len(self._around) >= _MAX_CACHED_TAGS:
            self._around.clear()
        self._around[key] = (before, after)
        return before, after

    def _call_tags(self, tags: Mapping[str, object]) -> list[_TagPiece]:
        pieces: list[_TagPiece] = []
        cache = self._tag_cache
        for raw_key, raw_value in tags.items():
            key = _tag_cache_key(raw_key, raw_value)
            try:
                piece = cache[key]
            except KeyError:
                piece = self._tag_piece(raw_key, raw_value, allow_base=False)
                if len(cache) >= _MAX_CACHED_TAGS:
                    cache.clear()
                cache[key] = piece
            except TypeError:  # unhashable tag value
                piece = self._tag_piece(raw_key, raw_value, allow_base=False)
            if piece is not None:
                pieces.append(piece)
        return pieces

    def _tag_piece(self, raw_key: object, raw_value: object, allow_base: bool) -> _TagPiece | None:
        key = normalise_name(raw_key)
        problems = self.problems
        if key is None:
            problems.dropped_tags += 1
            problems.warn_once("tag", str(raw_key), f"dropped tag with empty name {raw_key!r}")
            return None
        if key in schema.NEVER_TAGS:
            problems.dropped_tags += 1
            problems.warn_once(
                "tag", key, f"dropped tag {key!r}: step, epoch and batch_idx are fields, never tags"
            )
            return None
        if not allow_base and key in schema.BASE_TAGS:
            problems.dropped_tags += 1
            problems.warn_once(
                "tag", key, f"ignored tag {key!r}: it is set once per run by the Recorder"
            )
            return None
        if raw_value is None:
            return None
        value = raw_value if isinstance(raw_value, str) else str(raw_value)
        escaped = escape_tag_value(value)
        if escaped is None:
            return None
        return _TagPiece(f",{escape_key(key)}={escaped}", key, value)


_MISSING: Final[_FieldSpec] = ("", "", False)
_UNKNOWN_FORMAT: Final = ("\x00", ())
_MAX_CACHED_FORMATS = 1_024
_PLAIN_TYPES: Final = frozenset({float, int})


def _format_lines(
    line_format: str,
    width: int,
    numbers: list[float],
    times: list[int],
    prefixes: list[str] | None,
) -> str:
    """The lines of ``len(times)`` points with ``width`` finite numbers each (row after row
    in ``numbers``), formatted in one orjson call and one ``%``; ``prefixes``, each line's
    measurement and tags, when ``line_format`` takes them."""
    texts = _json(numbers).decode()[1:-1].split(",")  # "[a,b,...]": finite floats only
    first = 1 if prefixes is not None else 0
    stride = first + width + 1
    arguments: list[object] = [0] * (stride * len(times))
    if prefixes is not None:
        arguments[0::stride] = prefixes
    for field in range(width):
        arguments[first + field :: stride] = texts[field::width]
    arguments[first + width :: stride] = times
    return (line_format * len(times)) % tuple(arguments)


def _tag_cache_key(raw_key: object, raw_value: object) -> tuple[object, ...]:
    """One tag as a cache key: 1, 1.0 and True are one dict key but are written "1", "1.0"
    and "True", so a value that is not a string keys with its type."""
    if type(raw_value) is str:
        return (raw_key, raw_value)
    return (raw_key, raw_value, type(raw_value))


def _tag_set_cache_key(measurement: str, tags: Mapping[str, object]) -> tuple[object, ...]:
    """A point's measurement and tags as a cache key, with the values' types for the reason
    ``_tag_cache_key`` gives (C-level calls only: it runs once per tagged point)."""
    return (measurement, tuple(tags.items()), tuple(map(type, tags.values())))


def _one_tag_cache_key(measurement: str, key: str, value: object) -> tuple[object, ...]:
    """``_tag_set_cache_key`` of the tags ``{key: value}``, cheaper for a str value (a str
    third item: no tag set's key is alike)."""
    if type(value) is str:
        return (measurement, key, value)
    return _tag_set_cache_key(measurement, {key: value})


def _tag_key(piece: _TagPiece) -> str:
    return piece.key
