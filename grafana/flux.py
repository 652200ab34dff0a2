"""Flux targets for grafana-foundation-sdk, and the small vocabulary queries are written in.

The SDK has no InfluxDB query type: :class:`FluxQuery` is the target Grafana's InfluxDB
datasource stores in Flux mode (``refId``, ``query``, ``datasource``), usable wherever the
SDK takes a ``Dataquery`` (panel targets, alert-rule queries).

Queries read Grafana's macros (``v.timeRangeStart``, ``v.timeRangeStop``, ``v.windowPeriod``,
``v.defaultBucket``), which the datasource provides on dashboards and in alert rules alike,
and the dashboard variable ``${run_id:regex}``: Grafana replaces it with the selected run ids,
regex-escaped and joined by ``|`` (or ``.*`` for "All").
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models.dashboard import AnnotationTarget

from collector import schema
from grafana import datasources

RUN_ID_VARIABLE = schema.RUN_ID
SELECTED_RUNS = f"r.{schema.RUN_ID} =~ /^${{{RUN_ID_VARIABLE}:regex}}$/"
"""Predicate: the point belongs to one of the runs the dashboard's ``run_id`` variable selects."""

FROM_BUCKET = "from(bucket: v.defaultBucket)"
DASHBOARD_RANGE = "range(start: v.timeRangeStart, stop: v.timeRangeStop)"
ROUND_NUMBER = "round_number"
"""A column holding the ``round`` tag as an integer (tags are strings; axes need numbers)."""

_NAME = re.compile(r"[a-z][a-z0-9_]*")
_INDENT = "\n    |> "


class FluxQuery(cogvariants.Dataquery):
    """A Flux target of the provisioned InfluxDB datasource."""

    def __init__(
        self,
        query: str,
        ref_id: str = "A",
        *,
        interval_ms: int | None = None,
        max_data_points: int | None = None,
    ) -> None:
        self.query = query
        self.ref_id = ref_id
        self.interval_ms = interval_ms
        self.max_data_points = max_data_points

    def to_json(self) -> dict[str, object]:
        payload: dict[str, object] = {
            "datasource": datasources.influxdb().to_json(),
            "query": self.query,
            "refId": self.ref_id,
        }
        if self.interval_ms is not None:
            payload["intervalMs"] = self.interval_ms
        if self.max_data_points is not None:
            payload["maxDataPoints"] = self.max_data_points
        return payload


class FluxTarget(cogbuilder.Builder[FluxQuery]):
    """Builder of a :class:`FluxQuery`, for the SDK's ``with_target`` and ``model``."""

    def __init__(self, query: str, ref_id: str = "A") -> None:
        self._internal = FluxQuery(query, ref_id)

    def ref_id(self, ref_id: str) -> FluxTarget:
        self._internal.ref_id = ref_id
        return self

    def for_alerting(self, *, interval_ms: int = 1000, max_data_points: int = 43200) -> FluxTarget:
        """The evaluation settings Grafana stores with an alert-rule query."""
        self._internal.interval_ms = interval_ms
        self._internal.max_data_points = max_data_points
        return self

    def build(self) -> FluxQuery:
        return self._internal


class FluxAnnotationTarget(AnnotationTarget):
    """An annotation query's target in Flux (the SDK's type only fits Grafana's own
    annotations: it has no ``query``)."""

    def __init__(self, query: str) -> None:
        super().__init__()
        self.query = query

    def to_json(self) -> dict[str, object]:
        return {"query": self.query, "refId": "Annotations"}


class FluxAnnotation(cogbuilder.Builder[FluxAnnotationTarget]):
    def __init__(self, query: str) -> None:
        self._internal = FluxAnnotationTarget(query)

    def build(self) -> FluxAnnotationTarget:
        return self._internal


def literal(name: str) -> str:
    """A Flux string literal of a schema name (plain lowercase names only, so no escaping and
    no ``${`` interpolation can hide in it)."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"not a schema name: {name!r}")
    return f'"{name}"'


def equals(column: str, value: str) -> str:
    return f"r.{column} == {literal(value)}"


def any_of(column: str, values: Iterable[str]) -> str:
    """``r.column == "a" or r.column == "b"``, parenthesised when there are several."""
    terms = [equals(column, value) for value in values]
    if not terms:
        raise ValueError(f"no values for {column}")
    return terms[0] if len(terms) == 1 else "(" + " or ".join(terms) + ")"


def columns(names: Iterable[str]) -> str:
    """A Flux array of column names: ``["a", "b"]``."""
    return "[" + ", ".join(f'"{name}"' for name in names) + "]"


def select(
    measurement: str,
    fields: Iterable[str] = (),
    *conditions: str,
    selected_runs: bool = True,
) -> list[str]:
    """The stages reading ``measurement``'s ``fields`` in the time range: ``from``, ``range``
    and the filters (the dashboard's selected runs and any extra ``conditions``)."""
    predicate = [equals("_measurement", measurement)]
    if selected_runs:
        predicate.append(SELECTED_RUNS)
    predicate.extend(conditions)
    stages = [FROM_BUCKET, DASHBOARD_RANGE, f"filter(fn: (r) => {' and '.join(predicate)})"]
    field_list = list(dict.fromkeys(fields))  # each field once, in order
    if field_list:
        stages.append(f"filter(fn: (r) => {any_of('_field', field_list)})")
    return stages


def pipeline(*stages: str) -> str:
    """Stages joined by ``|>``, one per line."""
    return _INDENT.join(stages)


def query(*stages: str) -> str:
    """A whole query of one pipeline, ending with a newline."""
    return pipeline(*stages) + "\n"


def with_round_number() -> str:
    """Adds :data:`ROUND_NUMBER`; call it on ungrouped rows (``round`` is then no group key)."""
    return f"map(fn: (r) => ({{r with {ROUND_NUMBER}: int(v: r.{schema.ROUND})}}))"
