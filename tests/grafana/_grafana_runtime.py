"""What Grafana does to a Flux query before InfluxDB sees it, and to the answer after: a small,
faithful re-implementation for tests that run the shipped queries on a real InfluxDB 2.

Grafana itself cannot run here, so each function mirrors one piece of Grafana's source (cited
per function) and nothing more:

1. Dashboard variables (browser): ``InfluxDatasource.applyTemplateVariables`` in
   ``public/app/plugins/datasource/influxdb/datasource.ts`` calls, for a Flux datasource,
   ``templateSrv.replace(query.query, scopedVars)`` with *no* format, so only a format written
   in the query (``${run_id:regex}``) applies, else Grafana's default ``glob``. Dashboards
   (scenes) resolve that in ``sceneInterpolator`` (grafana/scenes
   ``packages/scenes/src/variables/interpolation/sceneInterpolator.ts``) with
   ``VARIABLE_REGEX`` (``variables/constants.ts``) and ``formatRegistry``
   (``interpolation/formatRegistry.ts``); "All" with a custom all value is
   ``CustomAllValue`` (``variables/variants/MultiValueVariable.ts``): the all value verbatim,
   never escaped. :func:`interpolate_variables`.
2. Flux macros (Grafana server): ``interpolate`` in ``pkg/tsdb/influxdb/flux/macros.go``
   replaces ``v.timeRangeStart``/``v.timeRangeStop`` with the range as RFC 3339 (bare Flux
   time literals), ``v.windowPeriod`` with Go's ``time.Duration.String()`` of the query
   interval, ``v.defaultBucket``/``v.bucket``/``v.organization`` with quoted strings from the
   datasource settings; then ``$__interval``/``$__interval_ms``. Plain text substitution: no
   ``v`` record exists in the query Flux runs. :func:`interpolate_macros`.
3. The interval (browser): ``rangeutil.calculateInterval`` / ``roundInterval``
   (``packages/grafana-data/src/datetime/rangeutil.ts``): range / maxDataPoints rounded to a
   "nice" value. Alert rules send their stored ``intervalMs``. :func:`panel_interval_ms`.
4. The answer (Grafana server): ``frameBuilder`` in ``pkg/tsdb/influxdb/flux/builder.go``:
   one data frame per Flux table; group-key columns become labels, the other columns fields;
   a table of exactly ``_time`` + ``_value`` is a "simple" series named after its ``_field``.
   :func:`frames`.
5. Alert expressions (Grafana server, ``pkg/expr``): reduce per series
   (``mathexp/reduce.go``: ``Series.Reduce`` with the ``dropNN`` mapper ``DropNonNumber``),
   math on numbers joined by labels, threshold ``gt``. :func:`reduce`, :func:`subtract`,
   :func:`above`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

# --- 1. dashboard variables ------------------------------------------------------------------

# grafana/scenes packages/scenes/src/variables/constants.ts VARIABLE_REGEX
_VARIABLE = re.compile(
    r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^\}]+))?(?::([^\}]+))?\}"
)
# grafana-data escapeRegex (packages/grafana-data/src/text/string.ts):
# value.replace(/[\\^$*+?.()|[\]{}\/]/g, '\\$&')
_REGEX_SPECIAL = re.compile(r"[\\^$*+?.()|\[\]{}/]")

ALL = "$__all"
"""Grafana's value of the "All" option (ALL_VARIABLE_VALUE)."""


def escape_regex(value: str) -> str:
    """``escapeRegex`` of @grafana/data."""
    return _REGEX_SPECIAL.sub(lambda m: "\\" + m.group(0), value)


@dataclass(frozen=True)
class Variable:
    """A dashboard variable's current state: ``value`` is a string (single) or a list (multi,
    or ``[ALL]``); ``all_value`` is the variable's custom all value (``allValue``)."""

    value: str | Sequence[str]
    options: Sequence[str] = ()
    all_value: str | None = None

    def is_all(self) -> bool:
        value = self.value
        return value == ALL or (not isinstance(value, str) and bool(value) and value[0] == ALL)


def _format(value: str | Sequence[str], fmt: str) -> str:
    """``formatRegistry`` entries used by Flux queries (scenes formatRegistry.ts)."""
    if fmt == "regex":
        if isinstance(value, str):
            return escape_regex(value)
        escaped = [escape_regex(v) for v in value]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    if fmt == "pipe":
        return value if isinstance(value, str) else "|".join(value)
    if fmt == "csv":
        return value if isinstance(value, str) else ",".join(value)
    if fmt == "doublequote":
        values = [value] if isinstance(value, str) else list(value)
        return ",".join('"' + v.replace('"', '\\"') + '"' for v in values)
    if fmt == "raw":
        return value if isinstance(value, str) else ",".join(value)
    if fmt == "glob":
        if not isinstance(value, str) and len(value) > 1:
            return "{" + ",".join(value) + "}"
        return value if isinstance(value, str) else ",".join(value)
    raise ValueError(f"format {fmt!r} is not mirrored here")


def interpolate_variables(query: str, variables: Mapping[str, Variable]) -> str:
    """``sceneInterpolator(scene, query)`` with no format argument (what the InfluxDB
    datasource's ``applyTemplateVariables`` passes for Flux): ``$x``, ``[[x]]``, ``${x}`` and
    ``${x:fmt}``; an unknown name stays as written, as in Grafana."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(4)
        fmt = match.group(3) or match.group(6) or "glob"
        variable = variables.get(name)
        if variable is None:
            return match.group(0)
        if variable.is_all():
            if variable.all_value is not None:
                # CustomAllValue.formatter: the all value as is (text/percentencode aside)
                return variable.all_value
            return _format(list(variable.options), fmt)
        return _format(variable.value, fmt)

    return _VARIABLE.sub(replace, query)


# --- 2. Flux macros ------------------------------------------------------------------------

_MACRO = re.compile(r"([a-zA-Z]+)\.([a-zA-Z]+)")  # macros.go fluxVariableFilterExp


@dataclass(frozen=True)
class DatasourceOptions:
    """The provisioned datasource's ``jsonData`` (organization, defaultBucket)."""

    organization: str
    default_bucket: str
    bucket: str | None = None
    """A query's own ``options.bucket``; query_models.go defaults it to ``defaultBucket``."""


def rfc3339_nano(moment: datetime) -> str:
    """Go's ``t.UTC().Format(time.RFC3339Nano)``: trailing zeros of the fraction dropped."""
    moment = moment.astimezone(UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += "." + f"{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


def go_duration(milliseconds: int) -> str:
    """Go's ``time.Duration.String()`` of a whole number of milliseconds ("1m0s", "200ms")."""
    if milliseconds == 0:
        return "0s"
    if milliseconds < 1000:
        return f"{milliseconds}ms"
    seconds, ms = divmod(milliseconds, 1000)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    second_text = f"{secs}" + (f".{ms:03d}".rstrip("0") if ms else "") + "s"
    if hours:
        return f"{hours}h{minutes}m{second_text}"
    if minutes:
        return f"{minutes}m{second_text}"
    return second_text


def format_interval(milliseconds: int) -> str:
    """gtime.FormatInterval (``$__interval``): the interval in its largest whole unit, floored."""
    for unit, size in (("y", 31536000000), ("d", 86400000), ("h", 3600000), ("m", 60000)):
        if milliseconds >= size:
            return f"{milliseconds // size}{unit}"
    if milliseconds >= 1000:
        return f"{milliseconds // 1000}s"
    return f"{max(milliseconds, 1)}ms"


def interpolate_macros(
    query: str,
    *,
    start: datetime,
    stop: datetime,
    interval_ms: int,
    options: DatasourceOptions,
) -> str:
    """``interpolate`` of pkg/tsdb/influxdb/flux/macros.go: every ``word.word`` whose second
    word is a macro name is replaced, text for text (``strings.ReplaceAll``)."""
    interval_ms = interval_ms or 1  # query_models.go: an interval of 0 becomes 1ms
    replacements = {
        "timeRangeStart": rfc3339_nano(start),
        "timeRangeStop": rfc3339_nano(stop),
        "windowPeriod": go_duration(interval_ms),
        "bucket": f'"{options.bucket or options.default_bucket}"',
        "defaultBucket": f'"{options.default_bucket}"',
        "organization": f'"{options.organization}"',
    }
    for match in list(_MACRO.finditer(query)):
        if match.group(2) in replacements:
            query = query.replace(match.group(0), replacements[match.group(2)])
    query = query.replace("$__interval_ms", str(interval_ms))
    return query.replace("$__interval", format_interval(interval_ms))


# --- 3. the interval -----------------------------------------------------------------------

_NICE_INTERVALS_MS = (
    (10, 1),
    (15, 10),
    (35, 20),
    (75, 50),
    (150, 100),
    (350, 200),
    (750, 500),
    (1500, 1000),
    (3500, 2000),
    (7500, 5000),
    (12500, 10000),
    (17500, 15000),
    (25000, 20000),
    (45000, 30000),
    (90000, 60000),
    (210000, 120000),
    (450000, 300000),
    (750000, 600000),
    (1050000, 900000),
    (1500000, 1200000),
    (2700000, 1800000),
    (5400000, 3600000),
    (9000000, 7200000),
    (16200000, 10800000),
    (32400000, 21600000),
    (86400000, 43200000),
    (604800000, 86400000),
    (1814400000, 604800000),
    (3628800000, 2592000000),
)


def round_interval(milliseconds: float) -> int:
    """``roundInterval`` of @grafana/data rangeutil."""
    for below, nice in _NICE_INTERVALS_MS:
        if milliseconds < below:
            return nice
    return 31536000000


def panel_interval_ms(start: datetime, stop: datetime, max_data_points: int) -> int:
    """``calculateInterval(range, maxDataPoints)`` (no datasource minimum interval is
    provisioned, so the low limit is Grafana's 1 ms)."""
    span_ms = (stop - start) / timedelta(milliseconds=1)
    return max(1, round_interval(span_ms / max_data_points))


# --- 4. the answer as Grafana's frames -----------------------------------------------------


@dataclass
class Frame:
    """One data frame built from one Flux table (builder.go): ``labels`` from the group key,
    ``fields`` name -> values (simple series: ``Time`` and the field's name)."""

    name: str
    labels: dict[str, str]
    fields: dict[str, list[Any]] = field(default_factory=dict)
    sources: list[tuple[str, str]] = field(default_factory=list, compare=False)
    """(Flux column, field name) pairs, in the frame's order (which frames compare without:
    Flux may order pivoted or mapped columns differently for another selection)."""

    @property
    def is_simple_series(self) -> bool:
        return list(self.fields)[:1] == ["Time"] and len(self.fields) == 2

    @property
    def values(self) -> list[Any]:
        """The value column of a simple series."""
        assert self.is_simple_series, self.fields.keys()
        return list(self.fields.values())[1]

    @property
    def times(self) -> list[datetime]:
        assert self.is_simple_series, self.fields.keys()
        return self.fields["Time"]


_META = ("result", "table")


def _is_time(column: Any) -> bool:
    return str(column.data_type).startswith("dateTime")


def frames(tables: Any) -> list[Frame]:
    """influxdb-client's ``TableList`` as Grafana's frames (``frameBuilder.Init`` per table
    schema, ``frameBuilder.Append`` per record): a new frame whenever the group key's values
    change; group-key columns become labels (``_measurement`` the frame's name), the other
    columns fields, time columns first; exactly ``_time`` + ``_value`` is a simple series
    (``Time`` and the ``_field`` label as the value's name, usual ``_start``/``_stop``
    dropped)."""
    built: list[Frame] = []
    current_key: tuple[Any, ...] | None = None
    previous_schema: tuple[tuple[str, str, bool], ...] | None = None
    for table in tables:
        columns = [c for c in table.columns if c.label not in _META]
        schema = tuple((c.label, str(c.data_type), bool(c.group)) for c in columns)
        if schema != previous_schema:  # Init: a new table schema starts a new frame
            current_key, previous_schema = None, schema
        group = [c.label for c in columns if c.group]
        data = [c for c in columns if not c.group]
        times = [c for c in data if _is_time(c)]
        others = [c for c in data if not _is_time(c)]
        simple = [c.label for c in times] == ["_time"] and [c.label for c in others] == ["_value"]
        usual_start_stop = {"_start", "_stop"} <= {
            c.label for c in columns if c.group and _is_time(c)
        }
        for record in table.records:
            values = record.values
            key = tuple(values.get(name) for name in group)
            if key != current_key:
                built.append(_new_frame(values, group, [*times, *others], simple, usual_start_stop))
                current_key = key
            frame = built[-1]
            for source, name in frame.sources:
                frame.fields[name].append(values.get(source))
    return built


def _new_frame(
    values: Mapping[str, Any],
    group: Sequence[str],
    data: Sequence[Any],
    simple: bool,
    usual_start_stop: bool,
) -> Frame:
    labels = {
        name: str(values[name])
        for name in group
        if values.get(name) is not None and str(values[name]) != ""
    }
    frame_name = labels.pop("_measurement", "")
    sources = []
    for column in data:
        name = column.label
        if simple and name == "_time":
            name = "Time"
        elif simple and name == "_value":
            name = labels.pop("_field", "Value")
        sources.append((column.label, name))
    if simple and usual_start_stop:
        labels.pop("_start", None)
        labels.pop("_stop", None)
    return Frame(frame_name, labels, {name: [] for _, name in sources}, sources)


# --- 5. server-side expressions ------------------------------------------------------------

Labels = tuple[tuple[str, str], ...]


def labels_of(frame: Frame) -> Labels:
    return tuple(sorted(frame.labels.items()))


def _drop_non_numbers(values: Sequence[Any]) -> list[float]:
    """``DropNonNumber.MapInput``: nil, NaN and ±Inf are dropped."""
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


_REDUCERS: dict[str, Callable[[list[float]], float]] = {
    "sum": lambda v: math.fsum(v),
    "mean": lambda v: math.fsum(v) / len(v) if v else math.nan,
    "min": lambda v: min(v) if v else math.nan,
    "max": lambda v: max(v) if v else math.nan,
    "count": lambda v: float(len(v)),
    "last": lambda v: v[-1] if v else math.nan,
}


def reduce(
    series: Sequence[Frame], reducer: str, mode: str = "dropNN"
) -> dict[Labels, float | None]:
    """A reduce expression: one number per series (``Series.Reduce`` with the ``dropNN``
    mapper: non-numbers dropped first, a NaN result becomes no value)."""
    if mode != "dropNN":
        raise ValueError(f"mode {mode!r} is not mirrored here")
    numbers: dict[Labels, float | None] = {}
    for frame in series:
        if not frame.is_simple_series:
            raise ValueError(f"not a time series: {list(frame.fields)}")
        result = _REDUCERS[reducer](_drop_non_numbers(frame.values))
        numbers[labels_of(frame)] = None if math.isnan(result) else result
    return numbers


def subtract(
    left: Mapping[Labels, float | None], right: Mapping[Labels, float | None]
) -> dict[Labels, float | None]:
    """``$L - $R`` on numbers: pairs with the same labels (the expressions' union by labels)."""
    out: dict[Labels, float | None] = {}
    for labels, value in left.items():
        if labels in right:
            other = right[labels]
            out[labels] = None if value is None or other is None else value - other
    return out


def above(numbers: Mapping[Labels, float | None], threshold: float) -> dict[Labels, bool]:
    """A threshold expression ``gt``: 1 (firing) where the number is above it; no value never
    fires."""
    return {labels: value is not None and value > threshold for labels, value in numbers.items()}
