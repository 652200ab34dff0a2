"""collector.queries: every query is valid Flux with its parameters declared, names come from
the schema, and user input only ever travels as extern literals (checked on the request body
influxdb-client really sends, captured by a local HTTP server)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from collector import schema
from collector.config import Settings
from collector.errors import ConfigError, RunwatchError
from collector.ids import new_run_id
from collector.queries import (
    GRADIENT_HEALTH,
    METRIC_SUMMARY,
    QUERIES,
    RUNS,
    FluxQuery,
    FluxType,
    all_time,
    rows_by,
    run_query,
    runs_window,
    string_list,
)
from tests.flux.checker import FluxChecker, params_prelude
from tests.servers._process import free_port
from tests.servers.influx_query import InfluxQueryServer

START = datetime(2024, 1, 1, tzinfo=UTC)
STOP = datetime(2024, 2, 1, tzinfo=UTC)

HOSTILE = (
    'run") |> drop(columns: ["_value"]) //',
    'a"b',
    'x)\n    |> yield(name: "pwned")\nfrom(bucket: "other")',
    "// a comment swallowing the rest",
    'r.run_id == "" or true',
    "${bucket}",
    "back\\slash",
    "tab\tand unicode é ✓",
)


def sample_values(query: FluxQuery, text: str = "run-a") -> dict[str, object]:
    """A value of the declared type for every parameter; every string (and string list) is
    ``text``."""
    samples: dict[FluxType, object] = {
        FluxType.STRING: text,
        FluxType.STRINGS: [text, "run-b"],
        FluxType.TIME: START,
        FluxType.FLOAT: 2.5,
        FluxType.BOOL: True,
    }
    return {p.name: samples[p.type] for p in query.params}


def settings_for(url: str, tmp_path: Path, bucket: str = "training") -> Settings:
    return Settings(
        home=tmp_path,
        db_url=f"sqlite:///{tmp_path / 'runs.db'}",
        influx_url=url,
        influx_org="runwatch",
        influx_token="s3cret-token",
        influx_bucket=bucket,
    )


# -- the queries as Flux -----------------------------------------------------------------


@pytest.mark.integration
def test_every_query_is_valid_flux_with_its_params_declared(flux_checker: FluxChecker) -> None:
    for query in QUERIES.values():
        flux_checker.assert_valid(
            {query.name: query.flux}, prelude=params_prelude(sample_values(query))
        )


@pytest.mark.integration
def test_each_query_uses_exactly_the_params_it_declares(flux_checker: FluxChecker) -> None:
    found = flux_checker.errors({q.name: q.flux for q in QUERIES.values()})
    for query in QUERIES.values():
        undefined = {
            m.group(1)
            for d in found.get(query.name, [])
            if (m := re.fullmatch(r"undefined identifier (\w+)", d.message))
        }
        assert undefined == set(query.param_names), query.name


@pytest.mark.integration
def test_queries_stay_valid_when_every_param_holds_hostile_text(
    flux_checker: FluxChecker,
) -> None:
    for text in HOSTILE[:3]:
        values: dict[str, object] = {}
        for query in QUERIES.values():
            values.update(sample_values(query, text))
        flux_checker.assert_valid(
            {q.name: q.flux for q in QUERIES.values()}, prelude=params_prelude(values)
        )


def test_queries_name_only_schema_measurements_fields_and_sources() -> None:
    known_fields = {f for m in schema.MEASUREMENTS.values() for f in m.fields}
    for query in QUERIES.values():
        measurements = re.findall(r'r\._measurement == "(\w+)"', query.flux)
        fields = re.findall(r'r\._field == "(\w+)"', query.flux)
        sources = re.findall(r'r\.source == "(\w+)"', query.flux)
        assert measurements, query.name
        assert set(measurements) <= set(schema.MEASUREMENTS), query.name
        assert {f.removesuffix(schema.NONFINITE_SUFFIX) for f in fields} <= known_fields
        assert set(sources) <= set(schema.SOURCES)


def test_every_query_has_a_description_and_typed_unique_params() -> None:
    assert set(QUERIES) == {
        "runs",
        "metric_summary",
        "round_summary",
        "epoch_curves",
        "round_comparison",
        "client_spread",
        "gradient_health",
    }
    for name, query in QUERIES.items():
        assert query.name == name and query.description
        assert len(set(query.param_names)) == len(query.params)
        assert {"bucket", "start", "stop"} <= set(query.param_names)
        assert all(p.description for p in query.params)


def test_several_runs_are_filtered_with_contains_over_an_array_param() -> None:
    for query in QUERIES.values():
        assert "contains(value: r.run_id, set: run_ids)" in query.flux
        assert "params." not in query.flux  # influxdb-client sends options, not a record


# -- binding -----------------------------------------------------------------------------


def test_bind_returns_every_param_with_utc_times() -> None:
    values = sample_values(RUNS) | {"start": datetime(2024, 1, 1), "run_ids": ("a", "b")}
    bound = RUNS.bind(values)
    assert bound["start"] == datetime(2024, 1, 1, tzinfo=UTC)
    assert bound["run_ids"] == ["a", "b"]
    assert set(bound) == set(RUNS.param_names)


def test_bind_rejects_missing_stray_and_mistyped_params() -> None:
    values = sample_values(METRIC_SUMMARY)
    with pytest.raises(ValueError, match=r"missing params \['metric'\]"):
        METRIC_SUMMARY.bind({k: v for k, v in values.items() if k != "metric"})
    with pytest.raises(ValueError, match=r"unknown params \['query'\]"):
        METRIC_SUMMARY.bind({**values, "query": "x"})
    with pytest.raises(TypeError, match="higher_is_better must be bool"):
        METRIC_SUMMARY.bind({**values, "higher_is_better": "yes"})
    with pytest.raises(TypeError, match=r"run_ids must be \[string\]"):
        METRIC_SUMMARY.bind({**values, "run_ids": "run-a"})
    with pytest.raises(TypeError, match="explode_above must be float"):
        GRADIENT_HEALTH.bind({**sample_values(GRADIENT_HEALTH), "explode_above": 10})


def test_small_helpers() -> None:
    assert string_list(["b", "a", "b"]) == ["b", "a"]
    start, stop = all_time(datetime(2024, 5, 1, tzinfo=UTC))
    assert start == datetime(1970, 1, 1, tzinfo=UTC)
    assert stop == datetime(2024, 5, 1, tzinfo=UTC) + timedelta(minutes=1)
    assert rows_by([{"k": "a", "v": 1}, {"k": None}], "k") == {"a": {"k": "a", "v": 1}}


def test_runs_window_starts_a_day_before_the_earliest_run() -> None:
    now = datetime(2026, 6, 1, tzinfo=UTC)
    early, late = datetime(2026, 2, 1, 12, tzinfo=UTC), datetime(2026, 5, 1, tzinfo=UTC)
    start, stop = runs_window([new_run_id(late), new_run_id(early)], now)
    assert (start, stop) == (early - timedelta(days=1), now + timedelta(minutes=1))
    # a name that is not a runwatch run_id carries no time: every point is searched
    assert runs_window([new_run_id(late), "imported-run"], now) == all_time(now)


# -- what goes over the wire -------------------------------------------------------------


def test_user_input_travels_only_as_extern_literals(
    influx_query_server: InfluxQueryServer, tmp_path: Path
) -> None:
    inputs = ("run-plain", *HOSTILE)
    for text in inputs:
        settings = settings_for(influx_query_server.url, tmp_path, bucket=text)
        for query in QUERIES.values():
            run_query(settings, query, {k: v for k, v in sample_values(query, text).items()})

    requests = influx_query_server.requests
    assert len(requests) == len(inputs) * len(QUERIES)
    by_query: dict[str, list[dict[str, object]]] = {}
    for index, request in enumerate(requests):
        text, query = inputs[index // len(QUERIES)], list(QUERIES.values())[index % len(QUERIES)]
        assert request.path == "/api/v2/query?org=runwatch"
        assert request.headers["Content-Type"] == "application/json"
        assert request.query == query.flux  # byte for byte the library's text
        assert text not in request.query
        without_extern = {k: v for k, v in request.body.items() if k != "extern"}
        by_query.setdefault(query.name, []).append(without_extern)

        options = request.extern_options
        assert set(options) == set(query.param_names)
        for param in query.params:
            literal = options[param.name]
            if param.type is FluxType.STRING:
                assert literal == {"type": "StringLiteral", "value": text}
            elif param.type is FluxType.STRINGS:
                assert literal == {
                    "type": "ArrayExpression",
                    "elements": [
                        {"type": "StringLiteral", "value": text},
                        {"type": "StringLiteral", "value": "run-b"},
                    ],
                }
            elif param.type is FluxType.TIME:
                assert literal == {
                    "type": "DateTimeLiteral",
                    "value": "2024-01-01T00:00:00.000000000Z",
                }
            elif param.type is FluxType.BOOL:
                assert literal == {"type": "BooleanLiteral", "value": True}
            else:
                assert literal == {"type": "FloatLiteral", "value": 2.5}

    for name, bodies in by_query.items():
        assert all(body == bodies[0] for body in bodies), name


def test_results_come_back_as_rows(influx_query_server: InfluxQueryServer, tmp_path: Path) -> None:
    seen = datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    influx_query_server.answer(
        RUNS.flux,
        [
            [
                {
                    "run_id": 'odd "id", with comma',
                    "experiment": "e",
                    "mode": "centralized",
                    "first_seen": seen,
                    "last_seen": seen,
                }
            ],
            [{"run_id": "b", "experiment": "e", "mode": "federated", "first_seen": seen}],
        ],
        result="runs",
    )
    rows = run_query(settings_for(influx_query_server.url, tmp_path), RUNS, sample_values(RUNS))
    assert [r["run_id"] for r in rows] == ['odd "id", with comma', "b"]
    assert rows[0]["first_seen"] == seen and rows[0]["result"] == "runs"
    assert rows[1]["mode"] == "federated"


def test_an_influx_error_is_one_line_naming_the_query_without_the_token(
    influx_query_server: InfluxQueryServer, tmp_path: Path
) -> None:
    influx_query_server.fail(
        RUNS.flux, 400, json.dumps({"code": "invalid", "message": "compilation failed: x\ny"})
    )
    with pytest.raises(RunwatchError) as caught:
        run_query(settings_for(influx_query_server.url, tmp_path), RUNS, sample_values(RUNS))
    assert str(caught.value) == "InfluxDB query runs failed (HTTP 400): compilation failed: x"


def test_an_unreachable_influx_is_one_line(tmp_path: Path) -> None:
    settings = settings_for(f"http://user:pw@127.0.0.1:{free_port()}", tmp_path)
    with pytest.raises(RunwatchError) as caught:
        run_query(settings, RUNS, sample_values(RUNS), timeout_s=5)
    message = str(caught.value)
    assert message.startswith("InfluxDB at http://user:***@127.0.0.1:")
    assert "unreachable" in message and "\n" not in message
    assert "pw@" not in message and "s3cret" not in message


def test_no_influx_url_is_a_config_error(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, db_url="sqlite://")
    with pytest.raises(ConfigError, match="INFLUXDB_V2_URL"):
        run_query(settings, RUNS, sample_values(RUNS))
