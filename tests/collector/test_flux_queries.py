"""collector.flux_queries: every query is valid Flux with its parameters declared, names come from
the schema, every query answers on the real InfluxDB 2 what the run store (or the spool) says
about real runs, and user input only ever travels as extern literals (checked on the request
body influxdb-client really sends, recorded by a proxy in front of the real server, and on
what that server answers)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from collector import schema
from collector.config import Settings
from collector.errors import ConfigError, RunwatchError
from collector.flux_queries import (
    BUCKET,
    CLIENT_SPREAD,
    EPOCH_CURVES,
    GRADIENT_HEALTH,
    METRIC_SUMMARY,
    QUERIES,
    ROUND_COMPARISON,
    ROUND_SUMMARY,
    RUN_IDS,
    RUNS,
    FluxQuery,
    FluxType,
    all_time,
    rows_by,
    run_query,
    runs_window,
    string_list,
)
from collector.flux_queries import START as START_PARAM
from collector.flux_queries import STOP as STOP_PARAM
from collector.ids import new_run_id
from collector.points import escape_tag_value
from collector.store import Store
from tests.collector.influx_wire import recording_proxy, spool_points
from tests.flux.checker import FluxChecker, params_prelude
from tests.servers._process import free_port
from tests.servers.influx_runs import CLIENTS, FAILING_ROUND, ROUNDS, LoadedRuns
from tests.servers.influxdb2 import InfluxDB2

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
        "metric_names",
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


# -- on the real InfluxDB 2, over runs that runwatch's own trainers wrote ----------------------
#
# ``influx_runs`` holds four real runs in one bucket and the SQLite store the same trainings
# wrote; each query's answer is checked against the store (or, for what the store does not
# keep, against the runs' spool files), never against numbers written here.


@pytest.fixture
def runs_store(influx_runs: LoadedRuns) -> Iterator[Store]:
    store = influx_runs.store()
    yield store
    store.dispose()


def window(loaded: LoadedRuns) -> dict[str, object]:
    return {"start": loaded.start, "stop": loaded.stop}


def epoch_values(store: Store, run_id: str, metric: str) -> dict[int, float]:
    """The run's own (client-less) epoch-end values of ``metric``, by epoch."""
    return {
        r.step: r.value
        for r in store.metrics_by_context(run_id, "epoch_end")
        if r.name == metric and r.client_id is None
    }


def aggregated_values(store: Store, run_id: str, metric: str) -> dict[int, float]:
    """The clients' weighted aggregate of ``metric`` per round, as the store keeps it."""
    return {
        cast(int, r.round_number): r.value
        for r in store.aggregated_metrics(run_id)
        if r.name == metric
    }


def best_and_last(values: dict[int, float], higher: bool) -> dict[str, object]:
    """What a best/last summary must say about ``values`` (the earliest epoch wins a tie)."""
    order = sorted(values)
    best = order[0]
    for epoch in order[1:]:
        if (values[epoch] > values[best]) if higher else (values[epoch] < values[best]):
            best = epoch
    return {
        "epochs": len(order),
        "best_value": pytest.approx(values[best], rel=1e-12),
        "best_epoch": best,
        "last_value": pytest.approx(values[order[-1]], rel=1e-12),
        "last_epoch": order[-1],
    }


def summary_of(row: dict[str, Any]) -> dict[str, object]:
    return {
        "epochs": row["epochs"],
        "best_value": row["best_value"],
        "best_epoch": int(row["best_epoch"]),
        "last_value": row["last_value"],
        "last_epoch": int(row["last_epoch"]),
    }


@pytest.mark.integration
@pytest.mark.slow
def test_runs_lists_exactly_the_runs_with_experiment_and_mode(
    influx_runs: LoadedRuns, runs_store: Store
) -> None:
    def runs(experiment: str = "", mode: str = "", run_ids: list[str] | None = None) -> Any:
        values = {
            **window(influx_runs),
            "experiment": experiment,
            "training_mode": mode,
            "run_ids": run_ids or [],
        }
        return run_query(influx_runs.reader, RUNS, values)

    rows = runs()
    assert sorted(r["run_id"] for r in rows) == sorted(influx_runs.all)
    for row in rows:
        stored = runs_store.get_run(row["run_id"])
        assert (row["experiment"], row["mode"]) == (stored.experiment, stored.mode)
        assert stored.end_time is not None
        assert stored.start_time <= row["first_seen"] <= row["last_seen"]
        assert row["last_seen"] <= stored.end_time + timedelta(seconds=5)
    assert [r["first_seen"] for r in rows] == sorted(r["first_seen"] for r in rows)

    federated = runs_store.get_run(influx_runs.federated)
    assert [r["run_id"] for r in runs(mode="federated")] == [influx_runs.federated]
    assert [r["run_id"] for r in runs(experiment=federated.experiment)] == [influx_runs.federated]
    assert runs(experiment=federated.experiment, mode="centralized") == []
    chosen = [influx_runs.diverging, influx_runs.healthy]
    assert sorted(r["run_id"] for r in runs(run_ids=chosen)) == sorted(chosen)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("metric", ["val_loss", "val_recall", "train_loss"])
def test_metric_summary_equals_the_stores_epoch_metrics(
    influx_runs: LoadedRuns, runs_store: Store, metric: str
) -> None:
    higher = not metric.endswith("loss")
    rows = run_query(
        influx_runs.reader,
        METRIC_SUMMARY,
        {
            **window(influx_runs),
            "run_ids": list(influx_runs.all),
            "metric": metric,
            "higher_is_better": higher,
        },
    )
    by_run = rows_by(rows, "run_id")
    # the federated run has no epochs of its own (its clients' epoch points carry client_id)
    assert set(by_run) == set(influx_runs.centralized)
    for run_id in influx_runs.centralized:
        expected = best_and_last(epoch_values(runs_store, run_id, metric), higher)
        assert summary_of(dict(by_run[run_id])) == expected, run_id
        stored = runs_store.get_run(run_id)
        assert (by_run[run_id]["experiment"], by_run[run_id]["mode"]) == (
            stored.experiment,
            stored.mode,
        )
    if metric != "val_recall":
        # NaN from epoch 1 on: only the finite epochs count
        assert by_run[influx_runs.nonfinite]["epochs"] == 1


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize(("metric", "field"), [("val_loss", "loss"), ("val_recall", "recall")])
def test_round_summary_equals_the_stores_aggregated_round_metrics(
    influx_runs: LoadedRuns, runs_store: Store, metric: str, field: str
) -> None:
    higher = not field.endswith("loss")
    rows = run_query(
        influx_runs.reader,
        ROUND_SUMMARY,
        {
            **window(influx_runs),
            "run_ids": list(influx_runs.all),
            "metric": field,
            "higher_is_better": higher,
        },
    )
    assert [r["run_id"] for r in rows] == [influx_runs.federated]
    expected = aggregated_values(runs_store, influx_runs.federated, metric)
    assert sorted(expected) == list(range(1, ROUNDS + 1))
    assert summary_of(rows[0]) == best_and_last(expected, higher)


@pytest.mark.integration
@pytest.mark.slow
def test_epoch_curves_has_a_column_per_run_with_the_stores_values(
    influx_runs: LoadedRuns, runs_store: Store
) -> None:
    rows = run_query(
        influx_runs.reader,
        EPOCH_CURVES,
        {**window(influx_runs), "run_ids": list(influx_runs.all), "metric": "val_loss"},
    )
    expected = {r: epoch_values(runs_store, r, "val_loss") for r in influx_runs.centralized}
    epochs = sorted({e for values in expected.values() for e in values})
    assert [r["epoch"] for r in rows] == epochs
    for row in rows:
        run_columns = set(row) - {"result", "table", "epoch"}
        assert run_columns == set(influx_runs.centralized)  # no column for the federated run
        for run_id, values in expected.items():
            if row["epoch"] in values:
                assert row[run_id] == pytest.approx(values[row["epoch"]], rel=1e-12)
            else:
                assert row[run_id] is None  # stopped earlier, or NaN at that epoch


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize(("metric", "field"), [("loss", "loss"), ("recall", "recall")])
def test_round_comparison_is_server_against_aggregated(
    influx_runs: LoadedRuns, runs_store: Store, metric: str, field: str
) -> None:
    rows = run_query(
        influx_runs.reader,
        ROUND_COMPARISON,
        {**window(influx_runs), "run_ids": list(influx_runs.all), "metric": field},
    )
    assert {r["run_id"] for r in rows} == {influx_runs.federated}
    by_round = {r["round"]: r for r in rows}
    server = {
        e.round_number: getattr(e, field)
        for e in runs_store.server_evaluations(influx_runs.federated)
    }
    aggregated = aggregated_values(runs_store, influx_runs.federated, f"val_{metric}")
    assert set(server) == set(aggregated) == set(range(1, ROUNDS + 1))
    assert set(server) <= set(by_round)
    assert [r["round"] for r in rows] == sorted(by_round)
    for number, row in by_round.items():
        if number not in server:
            # the initial evaluation (round 0) comes before any client replied
            assert number == 0 and row["aggregated"] is None and row["gap"] is None
            continue
        assert row["server"] == pytest.approx(server[number], rel=1e-12)
        assert row["aggregated"] == pytest.approx(aggregated[number], rel=1e-12)
        assert row["gap"] == pytest.approx(server[number] - aggregated[number], abs=1e-12)


@pytest.mark.integration
@pytest.mark.slow
def test_client_spread_counts_the_clients_that_replied_each_round(
    influx_runs: LoadedRuns, runs_store: Store
) -> None:
    values = {**window(influx_runs), "run_ids": list(influx_runs.all)}
    rows = run_query(influx_runs.reader, CLIENT_SPREAD, {**values, "metric": "train_loss"})

    # The store's per-client training history: the failing client has no round FAILING_ROUND.
    replies: dict[int, dict[str, float]] = {}
    for client_id, records in runs_store.metrics_grouped_by_client(influx_runs.federated).items():
        for record in records:
            if record.name == "train_loss":
                replies.setdefault(cast(int, record.round_number), {})[client_id] = record.value
    expected_clients = [CLIENTS - (number == FAILING_ROUND) for number in range(1, ROUNDS + 1)]
    assert [len(replies[n]) for n in sorted(replies)] == expected_clients  # 2, 1, 2

    assert {r["run_id"] for r in rows} == {influx_runs.federated}
    assert [r["round"] for r in rows] == sorted(replies)
    for row in rows:
        clients = replies[row["round"]]
        low_client = min(clients, key=lambda c: clients[c])
        high_client = max(clients, key=lambda c: clients[c])
        assert row["clients"] == len(clients)
        assert (row["lowest_client"], row["highest_client"]) == (low_client, high_client)
        assert row["lowest"] == pytest.approx(clients[low_client], rel=1e-12)
        assert row["highest"] == pytest.approx(clients[high_client], rel=1e-12)
        assert row["spread"] == pytest.approx(row["highest"] - row["lowest"], abs=1e-12)
        assert row["mean"] == pytest.approx(sum(clients.values()) / len(clients), rel=1e-12)

    # Evaluation replies: every client evaluated every round; the store's weighted aggregate
    # lies between the lowest and the highest reply.
    accuracy = run_query(influx_runs.reader, CLIENT_SPREAD, {**values, "metric": "val_acc"})
    aggregated = aggregated_values(runs_store, influx_runs.federated, "val_acc")
    assert [r["round"] for r in accuracy] == sorted(aggregated)
    for row in accuracy:
        assert row["clients"] == CLIENTS
        assert row["lowest"] <= aggregated[row["round"]] + 1e-12
        assert aggregated[row["round"]] <= row["highest"] + 1e-12


@pytest.mark.integration
@pytest.mark.slow
def test_gradient_health_counts_the_spooled_gradient_samples(influx_runs: LoadedRuns) -> None:
    explode_above, vanish_below = 0.5, 0.3
    rows = run_query(
        influx_runs.reader,
        GRADIENT_HEALTH,
        {
            **window(influx_runs),
            "run_ids": list(influx_runs.all),
            "explode_above": explode_above,
            "vanish_below": vanish_below,
        },
    )
    by_run = rows_by(rows, "run_id")
    assert set(by_run) == set(influx_runs.all)
    for run_id in influx_runs.all:
        points = spool_points(influx_runs.settings.home, run_id, schema.M_GRADIENT)
        norms = [p.fields["total_norm"] for p in points if "total_norm" in p.fields]
        finite = [float(n) for n in norms]
        nonfinite = sum(1 for p in points if "total_norm_nonfinite" in p.fields)
        row = by_run[run_id]
        assert finite, run_id
        assert row["samples"] == len(finite)
        assert row["nonfinite"] == nonfinite
        assert row["exploding"] == sum(1 for n in finite if n > explode_above)
        assert row["vanishing"] == sum(1 for n in finite if n < vanish_below)
        assert row["lowest"] == pytest.approx(min(finite), rel=1e-12)
        assert row["highest"] == pytest.approx(max(finite), rel=1e-12)
        assert row["mean"] == pytest.approx(sum(finite) / len(finite), rel=1e-9)
    # the NaN run's gradients turned non-finite; the healthy run's never did
    assert by_run[influx_runs.nonfinite]["nonfinite"] > 0
    assert by_run[influx_runs.healthy]["nonfinite"] == 0


# -- user input on the wire and in the real server -----------------------------------------


def hostile_values(
    query: FluxQuery, text: str, bucket: str, loaded: LoadedRuns
) -> dict[str, object]:
    values = sample_values(query, text)
    values.update(window(loaded))
    values[BUCKET.name] = bucket
    values[RUN_IDS.name] = [text]
    return values


@pytest.mark.integration
@pytest.mark.slow
def test_hostile_input_matches_nothing_and_travels_only_as_extern_literals(
    influx_runs: LoadedRuns,
) -> None:
    bucket = influx_runs.bucket
    with recording_proxy(influx_runs.influxdb2.url) as proxy:
        settings = influx_runs.reader.with_overrides(influx_url=proxy.url)
        for text in HOSTILE:
            for query in QUERIES.values():
                # every string parameter holds the text: the real server answers, with nothing
                assert (
                    run_query(settings, query, hostile_values(query, text, bucket, influx_runs))
                    == []
                )
        # the same queries with a real run beside the hostile id find that run, and only it
        control = {}
        for query in QUERIES.values():
            values = hostile_values(query, HOSTILE[4], bucket, influx_runs)
            values.update(
                {
                    p.name: ""
                    for p in query.params
                    if p.type is FluxType.STRING and p.name != "bucket"
                }
            )
            if "metric" in values:
                values["metric"] = (
                    "val_loss" if query.name in ("metric_summary", "epoch_curves") else "loss"
                )
            if query.name == "client_spread":
                values["metric"] = "train_loss"
            values[RUN_IDS.name] = [HOSTILE[4], influx_runs.healthy, influx_runs.federated]
            control[query.name] = run_query(settings, query, values)

    assert all(control.values()), {k for k, v in control.items() if not v}
    for name, rows in control.items():
        if name != "epoch_curves":
            assert {r["run_id"] for r in rows} <= {influx_runs.healthy, influx_runs.federated}

    requests = proxy.queries
    assert len(requests) == len(HOSTILE) * len(QUERIES) + len(QUERIES)
    queries = list(QUERIES.values())
    for index, request in enumerate(requests[: len(HOSTILE) * len(QUERIES)]):
        text, query = HOSTILE[index // len(QUERIES)], queries[index % len(QUERIES)]
        assert request.path == f"/api/v2/query?org={influx_runs.influxdb2.org}"
        assert request.query == query.flux  # byte for byte the library's text
        assert text not in request.query
        options = request.extern_options
        assert set(options) == set(query.param_names)
        for param in query.params:
            literal = options[param.name]
            if param.name == BUCKET.name:
                assert literal == {"type": "StringLiteral", "value": bucket}
            elif param.type is FluxType.STRING:
                assert literal == {"type": "StringLiteral", "value": text}
            elif param.type is FluxType.STRINGS:
                assert literal == {
                    "type": "ArrayExpression",
                    "elements": [{"type": "StringLiteral", "value": text}],
                }
            elif param.type is FluxType.TIME:
                assert literal["type"] == "DateTimeLiteral"
            elif param.type is FluxType.BOOL:
                assert literal == {"type": "BooleanLiteral", "value": True}
            else:
                assert literal == {"type": "FloatLiteral", "value": 2.5}
        # the text appears nowhere in the request but in those literals
        without_extern = {k: v for k, v in request.body.items() if k != "extern"}
        assert text not in json.dumps(without_extern)


@pytest.mark.integration
def test_a_run_id_made_of_flux_syntax_is_just_a_string(
    influxdb2: InfluxDB2, influxdb2_bucket: str, tmp_path: Path
) -> None:
    """Points of a run whose id is Flux syntax are found by that id, exactly."""
    hostile = 'run") |> drop(columns: ["_value"]) //'
    other = "run"
    lines = []
    for run_id, losses in ((hostile, [0.9, 0.4, 0.6]), (other, [0.1, 0.05])):
        tag = escape_tag_value(run_id)
        assert tag is not None
        for epoch, loss in enumerate(losses):
            lines.append(
                f"epoch,run_id={tag},experiment=e,mode=centralized "
                f"val_loss={loss!r},epoch={float(epoch)!r} {1_700_000_000 + epoch}"
            )
    written = influxdb2.write(influxdb2_bucket, "\n".join(lines).encode(), precision="s")
    assert written.status == 204, written.text

    settings = influxdb2.reader_settings(influxdb2.settings(tmp_path, influxdb2_bucket))
    rows = run_query(
        settings,
        METRIC_SUMMARY,
        {
            "start": datetime(2023, 1, 1, tzinfo=UTC),
            "stop": datetime(2024, 1, 1, tzinfo=UTC),
            "run_ids": [hostile],
            "metric": "val_loss",
            "higher_is_better": False,
        },
    )
    assert [(r["run_id"], r["epochs"], r["best_value"], r["best_epoch"]) for r in rows] == [
        (hostile, 3, 0.4, 1.0)
    ]


# -- failures: one line, no token ------------------------------------------------------------


@pytest.mark.integration
def test_a_wrong_token_is_one_line_naming_the_query_without_the_token(
    influxdb2: InfluxDB2, influxdb2_bucket: str, tmp_path: Path
) -> None:
    settings = influxdb2.settings(tmp_path, influxdb2_bucket).with_overrides(
        influx_token="s3cret-wrong-token"
    )
    with pytest.raises(RunwatchError) as caught:
        run_query(settings, RUNS, sample_values(RUNS))
    assert str(caught.value) == "InfluxDB query runs failed (HTTP 401): unauthorized access"


@pytest.mark.integration
def test_a_query_influxdb_rejects_is_one_line_naming_the_query(
    influxdb2: InfluxDB2, influxdb2_bucket: str, tmp_path: Path
) -> None:
    settings = influxdb2.reader_settings(influxdb2.settings(tmp_path, influxdb2_bucket))
    broken = FluxQuery(
        "broken",
        "calls a function Flux does not have",
        "from(bucket: bucket)\n    |> range(start: start, stop: stop)\n    |> no_such_fn()\n",
        (BUCKET, START_PARAM, STOP_PARAM),
    )
    window_values = {"start": START, "stop": STOP}
    with pytest.raises(RunwatchError) as caught:
        run_query(settings, broken, window_values)
    message = str(caught.value)
    assert message.startswith("InfluxDB query broken failed (HTTP 400): ")
    assert "undefined identifier no_such_fn" in message
    assert "\n" not in message and settings.influx_token not in message

    with pytest.raises(RunwatchError) as caught:
        run_query(settings, RUNS, {**sample_values(RUNS), "stop": STOP, "bucket": "no-such-bucket"})
    assert str(caught.value) == (
        "InfluxDB query runs failed (HTTP 404): failed to initialize execute state: "
        'could not find bucket "no-such-bucket"'
    )


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
