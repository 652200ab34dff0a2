"""``runwatch compare``: the SQL path against a real SQLite store (known metrics, and a real
short training run), the InfluxDB path end to end through influxdb-client against a local HTTP
server answering annotated CSV, and the same table shape from both."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from collector.cli import main
from collector.config import load_settings
from collector.queries import METRIC_SUMMARY, ROUND_SUMMARY, RUNS
from collector.store import Store
from tests.servers.influx_query import InfluxQueryServer

SEEN = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)

# Epoch histories with known best and last values (different lengths on purpose).
LONG_RUN = [
    {"epoch": 0, "val_loss": 0.9, "val_recall": 0.5, "train_loss": 1.2},
    {"epoch": 1, "val_loss": 0.5, "val_recall": 0.7, "train_loss": 0.8},
    {"epoch": 2, "val_loss": 0.6, "val_recall": 0.9, "train_loss": 0.6},
    {"epoch": 3, "val_loss": 0.5, "val_recall": 0.9, "train_loss": 0.5},
]
SHORT_RUN = [
    {"epoch": 0, "val_loss": 0.8, "val_recall": 0.6},
    {"epoch": 1, "val_loss": 0.4, "val_recall": 0.95},
]
NO_VAL_RUN = [{"epoch": 0, "train_loss": 0.7}]

EXPECTED_VAL_LOSS = [
    {"epochs": 4, "best_value": 0.5, "best_epoch": 1, "last_value": 0.5, "last_epoch": 3},
    {"epochs": 2, "best_value": 0.4, "best_epoch": 1, "last_value": 0.4, "last_epoch": 1},
    {"epochs": 0, "best_value": None, "best_epoch": None, "last_value": None, "last_epoch": None},
]


@pytest.fixture
def store(runwatch_env: Path) -> Iterator[Store]:
    store = Store.from_settings(load_settings())
    yield store
    store.dispose()


@pytest.fixture
def three_runs(store: Store) -> list[str]:
    long_id = store.create_run("baseline")
    store.persist_epoch_metrics(long_id, LONG_RUN)
    store.complete_run(long_id)
    short_id = store.create_run("wider")
    store.persist_epoch_metrics(short_id, SHORT_RUN)
    # A client's epoch rows are not the run's own epochs: they must not win "best".
    store.persist_epoch_metrics(short_id, [{"epoch": 5, "val_loss": 0.01}], client_id="c1")
    store.complete_run(short_id)
    other_id = store.create_run("no-val")
    store.persist_epoch_metrics(other_id, NO_VAL_RUN)
    return [long_id, short_id, other_id]


def compare_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code = main(["compare", *argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert err == ""
    document: dict[str, Any] = json.loads(out)
    return document


def error_line(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["compare", *argv]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err
    return err.strip()


# -- SQL -------------------------------------------------------------------------------


def test_sql_is_the_default_without_influx_and_gives_known_values(
    three_runs: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    document = compare_json(capsys, *three_runs)
    assert document["metric"] == "val_loss" and document["higher_is_better"] is False
    assert document["source"] == "sql"
    assert [r["run_id"] for r in document["runs"]] == three_runs
    assert [r["experiment"] for r in document["runs"]] == ["baseline", "wider", "no-val"]
    assert {r["mode"] for r in document["runs"]} == {"centralized"}
    for row, expected in zip(document["runs"], EXPECTED_VAL_LOSS, strict=True):
        assert {k: row[k] for k in expected} == expected


def test_sql_higher_is_better_for_recall(
    three_runs: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    document = compare_json(capsys, three_runs[0], three_runs[1], "--metric", "val_recall")
    assert document["higher_is_better"] is True
    long_row, short_row = document["runs"]
    assert (long_row["best_value"], long_row["best_epoch"]) == (0.9, 2)  # earliest of the tie
    assert (long_row["last_value"], long_row["last_epoch"]) == (0.9, 3)
    assert (short_row["best_value"], short_row["best_epoch"]) == (0.95, 1)


def test_text_table(three_runs: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", *three_runs, "--source", "sql"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "val_loss (lower is better), from sql"
    header = lines[1]
    assert re.match(
        r"RUN_ID\s+EXPERIMENT\s+MODE\s+EPOCHS\s+BEST\s+BEST EPOCH\s+LAST\s+LAST EPOCH$", header
    )
    rows = {line.split()[0]: line.split() for line in lines[2:5]}
    assert rows[three_runs[0]][1:] == ["baseline", "centralized", "4", "0.5", "1", "0.5", "3"]
    assert rows[three_runs[1]][1:] == ["wider", "centralized", "2", "0.4", "1", "0.4", "1"]
    assert rows[three_runs[2]][1:] == ["no-val", "centralized", "0", "-", "-", "-", "-"]
    assert lines[-1] == f"best: {three_runs[1]} (val_loss=0.4 at epoch 1)"


def test_a_metric_no_run_has(three_runs: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", *three_runs, "--metric", "val_nothing"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "val_nothing (higher is better), from sql"
    assert out.rstrip().endswith("no run recorded val_nothing")


def test_unknown_runs_are_all_named_in_one_line(
    three_runs: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    line = error_line(capsys, three_runs[0], "nope", 'x")\n|> drop()', "--source", "sql")
    assert line.startswith("runwatch: error: unknown runs in the run store (sqlite:///")
    assert line.endswith(": 'nope', 'x\")\\n|> drop()'")


def test_influx_source_without_url_is_one_line(
    three_runs: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    line = error_line(capsys, three_runs[0], "--source", "influx")
    assert line == "runwatch: error: --source influx needs INFLUXDB_V2_URL (or use --source sql)"


def test_usage_errors_exit_2(runwatch_env: Path) -> None:
    with pytest.raises(SystemExit) as no_runs:
        main(["compare"])
    with pytest.raises(SystemExit) as bad_source:
        main(["compare", "a", "--source", "csv"])
    assert no_runs.value.code == bad_source.value.code == 2


@pytest.mark.slow
def test_sql_path_returns_the_values_of_a_real_training_run(
    runwatch_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["train", "centralized", "--epochs", "3", "--experiment", "real", "--seed", "5"])
    assert code == 0, capsys.readouterr().err
    run_id = re.search(r"run (\S+): completed", capsys.readouterr().out).group(1)  # type: ignore[union-attr]
    # The trainer's own epoch-history export is the independent record of what happened.
    with (runwatch_env / "exports" / run_id / "metrics.csv").open(encoding="utf-8") as handle:
        history = [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(handle)]
    assert len(history) == 3

    for metric, pick in (("val_loss", min), ("val_recall", max)):
        row = compare_json(capsys, run_id, "--metric", metric)["runs"][0]
        values = [h[metric] for h in history]
        best = pick(values)
        assert row["experiment"] == "real" and row["mode"] == "centralized"
        assert row["epochs"] == 3
        assert row["best_value"] == pytest.approx(best, rel=1e-12)
        assert row["best_epoch"] == values.index(best)
        assert row["last_value"] == pytest.approx(values[-1], rel=1e-12)
        assert row["last_epoch"] == 2


# -- InfluxDB ----------------------------------------------------------------------------


@pytest.fixture
def influx_env(
    runwatch_env: Path, influx_query_server: InfluxQueryServer, monkeypatch: pytest.MonkeyPatch
) -> InfluxQueryServer:
    monkeypatch.setenv("INFLUXDB_V2_URL", influx_query_server.url)
    monkeypatch.setenv("INFLUXDB_V2_ORG", "runwatch")
    monkeypatch.setenv("INFLUXDB_V2_TOKEN", "s3cret-token")
    monkeypatch.setenv("INFLUXDB_V2_BUCKET", "training")
    return influx_query_server


def answer_runs(server: InfluxQueryServer, runs: list[tuple[str, str, str]]) -> None:
    """RUNS as InfluxDB answers it: one table (grouped) with a row per run found."""
    rows = [
        {
            "run_id": run_id,
            "experiment": experiment,
            "mode": mode,
            "first_seen": SEEN,
            "last_seen": SEEN,
        }
        for run_id, experiment, mode in runs
    ]
    server.answer(RUNS.flux, [rows], result="runs")


def answer_val_loss_summary(server: InfluxQueryServer, long_id: str, short_id: str) -> None:
    """METRIC_SUMMARY for LONG_RUN and SHORT_RUN as InfluxDB would compute it (epoch is a
    float field, so best_epoch/last_epoch come back as doubles; epochs is a count)."""
    rows = [
        {
            "run_id": long_id,
            "experiment": "baseline",
            "mode": "centralized",
            "epochs": 4,
            "best_value": 0.5,
            "best_epoch": 1.0,
            "last_value": 0.5,
            "last_epoch": 3.0,
        },
        {
            "run_id": short_id,
            "experiment": "wider",
            "mode": "centralized",
            "epochs": 2,
            "best_value": 0.4,
            "best_epoch": 1.0,
            "last_value": 0.4,
            "last_epoch": 1.0,
        },
    ]
    server.answer(METRIC_SUMMARY.flux, [rows], result="metric_summary")


def assert_same_table_from_both_sources(
    capsys: pytest.CaptureFixture[str], run_ids: list[str]
) -> None:
    """``compare --json`` gives the same rows, values, column order and types from both."""
    from_influx = compare_json(capsys, *run_ids)
    from_sql = compare_json(capsys, *run_ids, "--source", "sql")
    assert from_influx["source"] == "influx" and from_sql["source"] == "sql"
    assert {**from_influx, "source": "sql"} == from_sql
    for influx_row, sql_row in zip(from_influx["runs"], from_sql["runs"], strict=True):
        assert list(influx_row) == list(sql_row)
        assert [type(v) for v in influx_row.values()] == [type(v) for v in sql_row.values()]


def test_influx_is_the_default_with_a_url_and_matches_the_sql_table(
    three_runs: list[str], influx_env: InfluxQueryServer, capsys: pytest.CaptureFixture[str]
) -> None:
    long_id, short_id, other_id = three_runs
    answer_runs(
        influx_env,
        [
            (long_id, "baseline", "centralized"),
            (short_id, "wider", "centralized"),
            (other_id, "no-val", "centralized"),
        ],
    )
    answer_val_loss_summary(influx_env, long_id, short_id)

    assert_same_table_from_both_sources(capsys, three_runs)

    runs_request, summary_request = influx_env.requests
    assert runs_request.query == RUNS.flux and summary_request.query == METRIC_SUMMARY.flux
    options = summary_request.extern_options
    assert [e["value"] for e in options["run_ids"]["elements"]] == three_runs
    assert options["metric"] == {"type": "StringLiteral", "value": "val_loss"}
    assert options["higher_is_better"] == {"type": "BooleanLiteral", "value": False}
    assert options["bucket"] == {"type": "StringLiteral", "value": "training"}
    assert runs_request.headers["Authorization"] == "Token s3cret-token"


def test_influx_text_output(
    influx_env: InfluxQueryServer, capsys: pytest.CaptureFixture[str]
) -> None:
    answer_runs(
        influx_env, [("run-a", "baseline", "centralized"), ("run-b", "wider", "centralized")]
    )
    answer_val_loss_summary(influx_env, "run-a", "run-b")
    assert main(["compare", "run-a", "run-b"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "val_loss (lower is better), from influx"
    assert lines[2].split() == ["run-a", "baseline", "centralized", "4", "0.5", "1", "0.5", "3"]
    assert lines[-1] == "best: run-b (val_loss=0.4 at epoch 1)"


def test_influx_unknown_runs_are_named_in_one_line(
    influx_env: InfluxQueryServer, capsys: pytest.CaptureFixture[str]
) -> None:
    answer_runs(influx_env, [("run-a", "baseline", "centralized")])
    line = error_line(capsys, "run-a", "run-b", "run-c")
    assert line == (
        "runwatch: error: unknown runs in InfluxDB bucket 'training' (not shipped yet? "
        "`runwatch sync`, or --source sql): 'run-b', 'run-c'"
    )
    assert len(influx_env.requests) == 1  # no summary query for an incomplete set


@pytest.mark.parametrize(
    "hostile",
    ['run") |> drop(columns: ["_value"]) //', "x\n|> yield()", "// comment", 'a"b'],
)
def test_influx_hostile_input_never_changes_the_query_text(
    influx_env: InfluxQueryServer, capsys: pytest.CaptureFixture[str], hostile: str
) -> None:
    answer_runs(influx_env, [(hostile, "e", "centralized")])
    document = compare_json(capsys, hostile, "--metric", hostile)
    assert document["runs"][0]["run_id"] == hostile and document["runs"][0]["epochs"] == 0
    runs_request, summary_request = influx_env.requests
    assert (runs_request.query, summary_request.query) == (RUNS.flux, METRIC_SUMMARY.flux)
    assert summary_request.extern_options["metric"] == {"type": "StringLiteral", "value": hostile}
    assert summary_request.extern_options["run_ids"]["elements"] == [
        {"type": "StringLiteral", "value": hostile}
    ]


def test_influx_failure_is_one_line(
    influx_env: InfluxQueryServer, capsys: pytest.CaptureFixture[str]
) -> None:
    influx_env.fail(
        RUNS.flux, 401, json.dumps({"code": "unauthorized", "message": "unauthorized access"})
    )
    line = error_line(capsys, "run-a")
    assert line == "runwatch: error: InfluxDB query runs failed (HTTP 401): unauthorized access"


# -- federated runs: rounds of the clients' weighted aggregate ---------------------------------

# Aggregated client metrics per round (the store keeps them as "aggregated" rows).
FEDERATED_ROUNDS = {
    1: {"val_loss": 0.7, "val_recall": 0.4, "train_loss": 0.9},
    2: {"val_loss": 0.3, "val_recall": 0.8, "train_loss": 0.5},
    3: {"val_loss": 0.45, "val_recall": 0.8, "train_loss": 0.4},
}


@pytest.fixture
def federated_run(store: Store) -> str:
    run_id = store.create_run("fed", "federated")
    for number, metrics in FEDERATED_ROUNDS.items():
        store.record_round(run_id, number, aggregated_metrics=metrics, num_clients=2)
    # A client's own epoch history must not count as the run's rounds.
    store.persist_epoch_metrics(run_id, [{"epoch": 0, "val_loss": 0.01}], client_id="c1")
    store.complete_run(run_id)
    return run_id


def test_sql_federated_rows_count_rounds_of_the_aggregate(
    three_runs: list[str], federated_run: str, capsys: pytest.CaptureFixture[str]
) -> None:
    document = compare_json(capsys, three_runs[0], federated_run, "--source", "sql")
    centralized, federated = document["runs"]
    assert centralized["unit"] == "epoch" and federated["unit"] == "round"
    assert {k: federated[k] for k in EXPECTED_FEDERATED_VAL_LOSS} == EXPECTED_FEDERATED_VAL_LOSS
    recall = compare_json(capsys, federated_run, "--metric", "val_recall")["runs"][0]
    assert (recall["best_value"], recall["best_epoch"], recall["last_epoch"]) == (0.8, 2, 3)
    # train_loss is no evaluation metric: InfluxDB's round points do not carry it either
    assert compare_json(capsys, federated_run, "--metric", "train_loss")["runs"][0]["epochs"] == 0

    assert main(["compare", three_runs[0], federated_run, "--source", "sql"]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"{federated_run}\s+fed\s+federated\s+3\s+0\.3\s+2\s+0\.45\s+3", out)
    assert "federated runs: their EPOCHS count rounds" in out
    assert f"best: {federated_run} (val_loss=0.3 at round 2)" in out


EXPECTED_FEDERATED_VAL_LOSS = {
    "epochs": 3,
    "best_value": 0.3,
    "best_epoch": 2,
    "last_value": 0.45,
    "last_epoch": 3,
}


def test_influx_federated_rows_read_the_aggregated_round_points(
    three_runs: list[str],
    federated_run: str,
    influx_env: InfluxQueryServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    long_id, short_id, _ = three_runs
    answer_runs(
        influx_env,
        [
            (long_id, "baseline", "centralized"),
            (short_id, "wider", "centralized"),
            (federated_run, "fed", "federated"),
        ],
    )
    answer_val_loss_summary(influx_env, long_id, short_id)
    round_row = {
        "run_id": federated_run,
        "experiment": "fed",
        "mode": "federated",
        **{k: float(v) for k, v in EXPECTED_FEDERATED_VAL_LOSS.items() if k != "epochs"},
        "epochs": 3,
    }
    influx_env.answer(ROUND_SUMMARY.flux, [[round_row]], result="round_summary")

    wanted = [long_id, short_id, federated_run]
    assert_same_table_from_both_sources(capsys, wanted)

    _, _, round_request = influx_env.requests
    assert round_request.query == ROUND_SUMMARY.flux
    options = round_request.extern_options
    assert [e["value"] for e in options["run_ids"]["elements"]] == [federated_run]
    assert options["metric"] == {"type": "StringLiteral", "value": "loss"}  # the round field
