"""Named, parameterised Flux queries across runs, and the one way runwatch sends them.

Every query is fixed text. What a user supplies (run ids, a metric name, the bucket, a time
range, thresholds) travels only as influxdb-client ``params=``: the client sends each one as
``option NAME = <typed literal>`` in the request's ``extern`` syntax tree, beside the query
text, never inside it. So the queries name each parameter plainly (``run_ids``, not
``params.run_ids``), and a run id holding ``"``, ``)``, ``|>`` or a comment is just a string.

Conventions shared by the queries:

- ``start``/``stop`` bound the time range (``stop`` is exclusive, as in ``range()``).
- Several runs are chosen with ``run_ids`` (an array) and ``contains(value:, set:)``.
- ``""`` and ``[]`` mean "any" for the optional filters of :data:`RUNS`.
- No parameter is named like a Flux builtin (``mode``, ``first``...): an ``option`` of that
  name would shadow the function (a test checks each name is undefined without its option).
- Epoch queries read client-less ``epoch`` points (centralized runs); federated runs are
  compared per round (:data:`ROUND_COMPARISON`, :data:`CLIENT_SPREAD`).

The measurement, tag and field names are those of :mod:`collector.schema` (a test checks).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

from collector import schema
from collector.config import Settings, mask_url
from collector.errors import ConfigError, RunwatchError
from collector.ids import run_started_at

# Column a best/last summary calls the compared metric after pivoting it out of ``_field``.
VALUE_COLUMN = "value"
DEFAULT_TIMEOUT_S = 30.0


class FluxType(enum.Enum):
    """The Flux type a parameter arrives as (influxdb-client picks it from the Python type)."""

    STRING = "string"
    STRINGS = "[string]"
    TIME = "time"
    FLOAT = "float"
    BOOL = "bool"

    def accepts(self, value: object) -> bool:
        if self is FluxType.STRING:
            return isinstance(value, str)
        if self is FluxType.STRINGS:
            return isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
        if self is FluxType.TIME:
            return isinstance(value, datetime)
        if self is FluxType.FLOAT:
            return isinstance(value, float)
        return isinstance(value, bool)


@dataclass(frozen=True)
class QueryParam:
    name: str
    type: FluxType
    description: str


@dataclass(frozen=True)
class FluxQuery:
    """One named query: fixed Flux text and the parameters it expects as ``extern`` options."""

    name: str
    description: str
    flux: str
    params: tuple[QueryParam, ...]

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def bind(self, values: Mapping[str, object]) -> dict[str, object]:
        """The ``params=`` mapping for these values: every declared parameter, of its type,
        and nothing else (a missing or stray name is a programming error: ValueError)."""
        declared = {p.name: p for p in self.params}
        missing = sorted(declared.keys() - values.keys())
        extra = sorted(values.keys() - declared.keys())
        if missing or extra:
            raise ValueError(f"query {self.name}: missing params {missing}, unknown params {extra}")
        bound: dict[str, object] = {}
        for name, param in declared.items():
            value = values[name]
            if not param.type.accepts(value):
                raise TypeError(
                    f"query {self.name}: param {name} must be {param.type.value}, "
                    f"got {type(value).__name__}"
                )
            bound[name] = _as_extern_value(value)
        return bound


def _as_extern_value(value: object) -> object:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return value


# -- parameters ----------------------------------------------------------------------------

BUCKET = QueryParam("bucket", FluxType.STRING, "bucket to read (INFLUXDB_V2_BUCKET)")
START = QueryParam("start", FluxType.TIME, "earliest point time (inclusive)")
STOP = QueryParam("stop", FluxType.TIME, "latest point time (exclusive)")
RUN_IDS = QueryParam("run_ids", FluxType.STRINGS, "the runs to read")
METRIC = QueryParam("metric", FluxType.STRING, "field name of the metric")
_RANGE = (BUCKET, START, STOP)


def _points_of(measurement: str) -> str:
    """The start of a query: the bucket, the time range, the measurement, the chosen runs."""
    return f"""\
from(bucket: bucket)
    |> range(start: start, stop: stop)
    |> filter(fn: (r) => r._measurement == "{measurement}" and contains(value: r.run_id, set: run_ids))
"""


# -- queries -------------------------------------------------------------------------------

RUNS = FluxQuery(
    name="runs",
    description="Runs seen in a time range, with their experiment and mode, first and last "
    'point time. experiment="" / training_mode="" / run_ids=[] mean any.',
    flux="""\
from(bucket: bucket)
    |> range(start: start, stop: stop)
    |> filter(
        fn: (r) =>
            r._measurement == "event" or r._measurement == "round"
                or r._measurement == "epoch" and r._field == "epoch",
    )
    |> filter(fn: (r) => length(arr: run_ids) == 0 or contains(value: r.run_id, set: run_ids))
    |> filter(fn: (r) => experiment == "" or r.experiment == experiment)
    |> filter(fn: (r) => training_mode == "" or r.mode == training_mode)
    // event points carry a string field beside float ones: drop _value, or the regrouped
    // tables collide ("schema collision detected: column _value is both string and float")
    |> keep(columns: ["_time", "run_id", "experiment", "mode"])
    |> group(columns: ["run_id", "experiment", "mode"])
    |> reduce(
        identity: {first_seen: 2262-04-11T00:00:00Z, last_seen: 1970-01-01T00:00:00Z},
        fn: (r, accumulator) =>
            ({
                first_seen: if r._time < accumulator.first_seen then r._time else accumulator.first_seen,
                last_seen: if r._time > accumulator.last_seen then r._time else accumulator.last_seen,
            }),
    )
    |> group()
    |> sort(columns: ["first_seen"])
    |> yield(name: "runs")
""",
    params=(
        *_RANGE,
        QueryParam("experiment", FluxType.STRING, 'only this experiment ("" = any)'),
        QueryParam("training_mode", FluxType.STRING, 'centralized or federated ("" = any)'),
        QueryParam("run_ids", FluxType.STRINGS, "only these runs ([] = any)"),
    ),
)

# Epoch points of the chosen runs, the metric pivoted next to its epoch as column "value".
_EPOCH_VALUES = (
    _points_of(schema.M_EPOCH)
    + """\
    |> filter(fn: (r) => r._field == metric or r._field == "epoch")
    |> filter(fn: (r) => not exists r.client_id)
    |> map(fn: (r) => ({r with _field: if r._field == metric then "value" else "epoch"}))
    |> group(columns: ["run_id", "experiment", "mode"])
    |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")
    |> filter(fn: (r) => exists r.epoch and exists r.value)
"""
)

# Best and last of the "value" column in "epoch" order, per run (shared by the summaries).
_BEST_AND_LAST = """\
    |> sort(columns: ["epoch", "_time"])
    |> reduce(
        identity: {epochs: 0, best_value: 0.0, best_epoch: 0.0, last_value: 0.0, last_epoch: 0.0},
        fn: (r, accumulator) => {
            better =
                accumulator.epochs == 0 or (if higher_is_better then
                    r.value > accumulator.best_value
                else
                    r.value < accumulator.best_value)

            return {
                epochs: accumulator.epochs + 1,
                best_value: if better then r.value else accumulator.best_value,
                best_epoch: if better then r.epoch else accumulator.best_epoch,
                last_value: r.value,
                last_epoch: r.epoch,
            }
        },
    )
    |> group()
"""

HIGHER_IS_BETTER = QueryParam(
    "higher_is_better", FluxType.BOOL, "true: the best value is the largest"
)

METRIC_SUMMARY = FluxQuery(
    name="metric_summary",
    description="Per run: epochs with a value of the metric, the best value and its epoch "
    "(higher_is_better picks max or min; the earliest epoch wins a tie), the last value and "
    "its epoch.",
    flux=_EPOCH_VALUES + _BEST_AND_LAST + '    |> yield(name: "metric_summary")\n',
    params=(*_RANGE, RUN_IDS, METRIC, HIGHER_IS_BETTER),
)

# The clients' weighted aggregate of federated runs, one row per round: the round number in
# column "epoch" and the round field (loss, accuracy...) in column "value".
_AGGREGATED_ROUND_VALUES = (
    _points_of(schema.M_ROUND)
    + """\
    |> filter(fn: (r) => r.source == "aggregated" and r._field == metric)
    |> map(
        fn: (r) =>
            ({
                run_id: r.run_id,
                experiment: r.experiment,
                mode: r.mode,
                _time: r._time,
                epoch: float(v: r.round),
                value: r._value,
            }),
    )
    |> group(columns: ["run_id", "experiment", "mode"])
"""
)

ROUND_SUMMARY = FluxQuery(
    name="round_summary",
    description="Federated runs: METRIC_SUMMARY over rounds of the clients' weighted aggregate "
    "(a round field: loss, accuracy, recall...); epochs count rounds, best_epoch and last_epoch "
    "are round numbers.",
    flux=_AGGREGATED_ROUND_VALUES + _BEST_AND_LAST + '    |> yield(name: "round_summary")\n',
    params=(*_RANGE, RUN_IDS, METRIC, HIGHER_IS_BETTER),
)

EPOCH_CURVES = FluxQuery(
    name="epoch_curves",
    description="One row per epoch, one column per run (named by its run_id): the metric of "
    "several runs aligned by epoch; a run that stopped earlier leaves its cells empty.",
    flux=_EPOCH_VALUES
    + """\
    |> map(fn: (r) => ({epoch: int(v: r.epoch), run_id: r.run_id, value: r.value}))
    |> group()
    |> pivot(rowKey: ["epoch"], columnKey: ["run_id"], valueColumn: "value")
    |> sort(columns: ["epoch"])
    |> yield(name: "epoch_curves")
""",
    params=(*_RANGE, RUN_IDS, METRIC),
)

ROUND_COMPARISON = FluxQuery(
    name="round_comparison",
    description="Federated runs, per round: the server's evaluation against the clients' "
    "weighted aggregate of one round field (loss, accuracy, recall...), and the gap "
    "server - aggregated.",
    flux=_points_of(schema.M_ROUND)
    + """\
    |> filter(fn: (r) => r._field == metric and (r.source == "server" or r.source == "aggregated"))
    |> map(fn: (r) => ({run_id: r.run_id, round: int(v: r.round), source: r.source, _value: r._value}))
    |> group(columns: ["run_id"])
    |> pivot(rowKey: ["round"], columnKey: ["source"], valueColumn: "_value")
    |> map(fn: (r) => ({r with gap: r.server - r.aggregated}))
    |> sort(columns: ["round"])
    |> yield(name: "round_comparison")
""",
    params=(*_RANGE, RUN_IDS, METRIC),
)

CLIENT_SPREAD = FluxQuery(
    name="client_spread",
    description="Federated runs, per round: how far apart the clients' replies are for one "
    "client_round field: clients, lowest and highest value with their client, mean, spread.",
    flux=_points_of(schema.M_CLIENT_ROUND)
    + """\
    |> filter(fn: (r) => r._field == metric)
    |> map(
        fn: (r) =>
            ({run_id: r.run_id, round: int(v: r.round), client_id: r.client_id, _value: r._value}),
    )
    |> group(columns: ["run_id", "round"])
    |> sort(columns: ["client_id"])
    |> reduce(
        identity: {
            clients: 0,
            lowest: 0.0,
            lowest_client: "",
            highest: 0.0,
            highest_client: "",
            total: 0.0,
        },
        fn: (r, accumulator) => {
            lower = accumulator.clients == 0 or r._value < accumulator.lowest
            higher = accumulator.clients == 0 or r._value > accumulator.highest

            return {
                clients: accumulator.clients + 1,
                lowest: if lower then r._value else accumulator.lowest,
                lowest_client: if lower then r.client_id else accumulator.lowest_client,
                highest: if higher then r._value else accumulator.highest,
                highest_client: if higher then r.client_id else accumulator.highest_client,
                total: accumulator.total + r._value,
            }
        },
    )
    |> map(
        fn: (r) => ({r with spread: r.highest - r.lowest, mean: r.total / float(v: r.clients)}),
    )
    |> drop(columns: ["total"])
    |> group(columns: ["run_id"])
    |> sort(columns: ["round"])
    |> yield(name: "client_spread")
""",
    params=(*_RANGE, RUN_IDS, METRIC),
)

GRADIENT_HEALTH = FluxQuery(
    name="gradient_health",
    description="Per run: total gradient norm samples, lowest, highest, mean and last norm, "
    "how many samples exceeded explode_above or fell under vanish_below, and how many were "
    "NaN/Inf (total_norm_nonfinite points).",
    flux=_points_of(schema.M_GRADIENT)
    + """\
    |> filter(fn: (r) => r._field == "total_norm" or r._field == "total_norm_nonfinite")
    |> group(columns: ["run_id", "experiment", "mode"])
    |> sort(columns: ["_time"])
    |> reduce(
        identity: {
            samples: 0,
            nonfinite: 0,
            exploding: 0,
            vanishing: 0,
            lowest: 0.0,
            highest: 0.0,
            last: 0.0,
            total: 0.0,
        },
        fn: (r, accumulator) => {
            finite = r._field == "total_norm"
            lower = finite and (accumulator.samples == 0 or r._value < accumulator.lowest)
            higher = finite and (accumulator.samples == 0 or r._value > accumulator.highest)

            return {
                samples: if finite then accumulator.samples + 1 else accumulator.samples,
                nonfinite: if finite then accumulator.nonfinite else accumulator.nonfinite + 1,
                exploding:
                    if finite and r._value > explode_above then
                        accumulator.exploding + 1
                    else
                        accumulator.exploding,
                vanishing:
                    if finite and r._value < vanish_below then
                        accumulator.vanishing + 1
                    else
                        accumulator.vanishing,
                lowest: if lower then r._value else accumulator.lowest,
                highest: if higher then r._value else accumulator.highest,
                last: if finite then r._value else accumulator.last,
                total: if finite then accumulator.total + r._value else accumulator.total,
            }
        },
    )
    |> map(fn: (r) => ({r with mean: if r.samples > 0 then r.total / float(v: r.samples) else 0.0}))
    |> drop(columns: ["total"])
    |> group()
    |> yield(name: "gradient_health")
""",
    params=(
        *_RANGE,
        RUN_IDS,
        QueryParam("explode_above", FluxType.FLOAT, "a total norm above this counts as exploding"),
        QueryParam("vanish_below", FluxType.FLOAT, "a total norm below this counts as vanishing"),
    ),
)

METRIC_NAMES = FluxQuery(
    name="metric_names",
    description="The metrics the chosen runs recorded, one row per run, measurement and "
    "field: client-less epoch fields, and round fields of the clients' weighted aggregate.",
    flux="""\
from(bucket: bucket)
    |> range(start: start, stop: stop)
    |> filter(
        fn: (r) =>
            r._measurement == "epoch" and not exists r.client_id
                or r._measurement == "round" and r.source == "aggregated",
    )
    |> filter(fn: (r) => contains(value: r.run_id, set: run_ids))
    |> keep(columns: ["run_id", "_measurement", "_field", "_value"])
    |> group(columns: ["run_id", "_measurement", "_field"])
    |> first()
    |> group()
    |> keep(columns: ["run_id", "_measurement", "_field"])
    |> yield(name: "metric_names")
""",
    params=(*_RANGE, RUN_IDS),
)

QUERIES: Mapping[str, FluxQuery] = MappingProxyType(
    {
        q.name: q
        for q in (
            RUNS,
            METRIC_SUMMARY,
            ROUND_SUMMARY,
            EPOCH_CURVES,
            ROUND_COMPARISON,
            CLIENT_SPREAD,
            GRADIENT_HEALTH,
            METRIC_NAMES,
        )
    }
)
"""Every query by name."""


def all_time(now: datetime | None = None) -> tuple[datetime, datetime]:
    """``(start, stop)`` covering every point written so far (stop a minute ahead, for clock
    skew between the trainer and InfluxDB)."""
    moment = now if now is not None else datetime.now(UTC)
    return datetime(1970, 1, 1, tzinfo=UTC), moment + timedelta(minutes=1)


def runs_window(run_ids: Sequence[str], now: datetime | None = None) -> tuple[datetime, datetime]:
    """``(start, stop)`` from the earliest of the runs' start times (a run_id begins with it;
    a day earlier, for clock skew), so InfluxDB scans only the shards that can hold them.
    Falls back to :func:`all_time` when one of the ids is not a runwatch run_id."""
    start, stop = all_time(now)
    started = [run_started_at(run_id) for run_id in run_ids]
    if not started or any(moment is None for moment in started):
        return start, stop
    earliest = min(moment for moment in started if moment is not None)
    return max(start, earliest - timedelta(days=1)), stop


# -- running -------------------------------------------------------------------------------


def run_query(
    settings: Settings,
    query: FluxQuery,
    values: Mapping[str, object],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> list[dict[str, Any]]:
    """Every row the query returns (one dict per record, columns by name).

    ``bucket`` is taken from the settings unless ``values`` gives it. Failures become one
    RunwatchError line naming the query; the token is never part of it.
    """
    if not settings.influx_url:
        raise ConfigError("INFLUXDB_V2_URL is not set: no InfluxDB to query")
    params = query.bind({BUCKET.name: settings.influx_bucket, **values})

    from influxdb_client.client.influxdb_client import InfluxDBClient
    from influxdb_client.rest import ApiException
    from urllib3.exceptions import HTTPError

    with InfluxDBClient(
        url=settings.influx_url,
        token=settings.influx_token or "",
        org=settings.influx_org or "",
        timeout=int(timeout_s * 1000),
    ) as client:
        try:
            tables = client.query_api().query(query.flux, params=params)
        except ApiException as exc:
            raise RunwatchError(
                f"InfluxDB query {query.name} failed (HTTP {exc.status}): {_api_message(exc)}"
            ) from None
        except (HTTPError, OSError) as exc:
            raise RunwatchError(
                f"InfluxDB at {mask_url(settings.influx_url)} is unreachable: "
                f"{type(exc).__name__}: {_first_line(exc)}"
            ) from None
    return [dict(record.values) for table in tables for record in table.records]


def _api_message(exc: Any) -> str:
    """InfluxDB's JSON error ``message`` when there is one, else the body's first line."""
    body = exc.body.decode("utf-8", "replace") if isinstance(exc.body, bytes) else exc.body
    try:
        message = json.loads(body)["message"]
    except (TypeError, ValueError, KeyError):
        message = body
    return _first_line(message or exc.reason or "no message")


def _first_line(text: object) -> str:
    lines = str(text).strip().splitlines()
    return lines[0] if lines else ""


def string_list(values: Iterable[str]) -> list[str]:
    """A ``run_ids`` value: a plain list of strings, duplicates dropped, order kept."""
    return list(dict.fromkeys(values))


def rows_by(rows: Sequence[Mapping[str, Any]], column: str) -> dict[str, Mapping[str, Any]]:
    """The rows keyed by one column's string value (the last row wins a duplicate)."""
    return {str(row[column]): row for row in rows if row.get(column) is not None}
