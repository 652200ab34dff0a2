"""``runwatch compare``: the SQL path against a real SQLite store (known metrics, and a real
short training run); the InfluxDB path end to end through the CLI against the real InfluxDB 2
holding real centralized and federated runs, giving the same table as the store for every
metric the dashboards compare, and failing in one line."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from collector.cli import main
from collector.config import Settings, load_settings
from collector.flux_queries import METRIC_SUMMARY, RUNS
from collector.store import Store
from collector.values import canonical_name, round_field
from grafana.dashboards import LOSSES, VALIDATION_SCORES
from tests.collector.influx_wire import RecordingProxy, recording_proxy
from tests.servers._process import free_port
from tests.servers.influx_runs import EPOCHS_DIVERGING, EPOCHS_HEALTHY, ROUNDS, LoadedRuns

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


def error_line(capsys: pytest.CaptureFixture[str], *argv: str, code: int = 1) -> str:
    assert main(["compare", *argv]) == code
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
    assert lines[-2] == f"best: {three_runs[1]} (val_loss=0.4 at epoch 1)"
    assert lines[-1] == "no val_loss in 1 run(s); metrics this run recorded: train_loss"


def test_a_metric_no_run_has(three_runs: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", *three_runs, "--metric", "val_nothing"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "val_nothing (higher is better), from sql"
    assert out.rstrip().endswith(
        "no run recorded val_nothing\n"
        "no val_nothing in 3 run(s); metrics these runs recorded: train_loss, val_loss, val_recall"
    )  # the client's rows are not the run's


def test_unknown_runs_are_all_named_in_one_line(
    three_runs: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    line = error_line(capsys, three_runs[0], "nope", 'x")\n|> drop()', "--source", "sql")
    assert line.startswith("runwatch: error: unknown runs in the run store (sqlite:///")
    assert line.endswith(": 'nope', 'x\")\\n|> drop()'")


def test_influx_source_without_url_is_one_line(
    three_runs: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    line = error_line(capsys, three_runs[0], "--source", "influx", code=2)  # configuration
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
    # the aggregate of a training metric is compared too (InfluxDB's round points carry it)
    train = compare_json(capsys, federated_run, "--metric", "train_loss")["runs"][0]
    assert (train["epochs"], train["best_value"], train["best_epoch"]) == (3, 0.4, 3)

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


# -- InfluxDB: the real server, real runs, the same table as the store ----------------------

DASHBOARD_METRICS = (*LOSSES, *VALIDATION_SCORES)
"""Every epoch metric the dashboards compare runs on."""


def point_env_at(monkeypatch: pytest.MonkeyPatch, settings: Settings, cwd: Path) -> None:
    """The environment ``runwatch`` reads for these settings (the read-only token)."""
    env = {
        "RUNWATCH_HOME": str(settings.home),
        "RUNWATCH_DB_URL": settings.db_url,
        "INFLUXDB_V2_URL": settings.influx_url or "",
        "INFLUXDB_V2_ORG": settings.influx_org or "",
        "INFLUXDB_V2_TOKEN": settings.influx_token or "",
        "INFLUXDB_V2_BUCKET": settings.influx_bucket,
        "RUNWATCH_PROMETHEUS_PORT": "0",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(cwd)  # no stray .env is read


@pytest.fixture
def real_runs(
    influx_runs: LoadedRuns, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> LoadedRuns:
    point_env_at(monkeypatch, influx_runs.reader, tmp_path)
    return influx_runs


@pytest.fixture
def proxied_runs(
    influx_runs: LoadedRuns, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[RecordingProxy]:
    """As ``real_runs``, through a proxy that records what reaches the real server."""
    with recording_proxy(influx_runs.influxdb2.url) as proxy:
        point_env_at(monkeypatch, influx_runs.reader.with_overrides(influx_url=proxy.url), tmp_path)
        yield proxy


def assert_same_table_from_both_sources(
    capsys: pytest.CaptureFixture[str], run_ids: Sequence[str], *options: str
) -> dict[str, Any]:
    """``compare --json`` gives the same rows, values, column order and types from both;
    returns InfluxDB's document."""
    from_influx = compare_json(capsys, *run_ids, *options)
    from_sql = compare_json(capsys, *run_ids, *options, "--source", "sql")
    assert from_influx["source"] == "influx" and from_sql["source"] == "sql"
    assert {**from_influx, "source": "sql"} == from_sql
    for influx_row, sql_row in zip(from_influx["runs"], from_sql["runs"], strict=True):
        assert list(influx_row) == list(sql_row)
        assert [type(v) for v in influx_row.values()] == [type(v) for v in sql_row.values()]
    return from_influx


def expected_row(store: Store, run_id: str, metric: str) -> dict[str, Any]:
    """What the comparison must say about one run, worked out here from the store's rows:
    client-less epoch-end values, or a federated run's aggregated rounds of a metric a round
    point holds (evaluation metrics, train_loss)."""
    run = store.get_run(run_id)
    if run.mode == "federated":
        rounds = store.aggregated_metrics(run_id) if round_field(metric) else []
        values = {cast(int, r.round_number): r.value for r in rounds if r.name == metric}
    else:
        values = {
            r.step: r.value
            for r in store.metrics_by_context(run_id, "epoch_end")
            if r.name == metric and r.client_id is None
        }
    row: dict[str, Any] = {"run_id": run_id, "experiment": run.experiment, "mode": run.mode}
    if not values:
        return {**row, "epochs": 0, "best_value": None, "last_value": None}
    order = sorted(values)
    pick = min if metric.endswith("loss") else max
    best = pick(values.values())
    return {
        **row,
        "epochs": len(order),
        "best_value": best,
        "best_epoch": next(e for e in order if values[e] == best),
        "last_value": values[order[-1]],
        "last_epoch": order[-1],
    }


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("metric", DASHBOARD_METRICS)
def test_influx_and_sql_agree_on_real_runs(
    real_runs: LoadedRuns, capsys: pytest.CaptureFixture[str], metric: str
) -> None:
    # influx is the default with a URL set: the first call reads InfluxDB
    document = assert_same_table_from_both_sources(capsys, real_runs.all, "--metric", metric)
    assert document["metric"] == metric
    assert [r["run_id"] for r in document["runs"]] == list(real_runs.all)
    store = real_runs.store()
    try:
        for row in document["runs"]:
            expected = expected_row(store, row["run_id"], metric)
            assert {k: row[k] for k in expected} == expected
    finally:
        store.dispose()
    by_run = {r["run_id"]: r for r in document["runs"]}
    assert by_run[real_runs.healthy]["epochs"] == EPOCHS_HEALTHY
    assert by_run[real_runs.diverging]["epochs"] == EPOCHS_DIVERGING
    federated = by_run[real_runs.federated]
    assert federated["unit"] == "round"
    if round_field(metric) is not None:
        assert (federated["epochs"], federated["last_epoch"]) == (ROUNDS, ROUNDS)


@pytest.mark.integration
@pytest.mark.slow
def test_influx_text_output_on_real_runs(
    real_runs: LoadedRuns, capsys: pytest.CaptureFixture[str]
) -> None:
    from_influx = compare_json(capsys, real_runs.healthy, real_runs.federated)
    assert main(["compare", real_runs.healthy, real_runs.federated]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "val_loss (lower is better), from influx"
    rows = {line.split()[0]: line.split() for line in lines[2:4]}
    for row in from_influx["runs"]:
        cells = rows[row["run_id"]]
        assert cells[1:4] == [row["experiment"], row["mode"], str(row["epochs"])]
        assert float(cells[4]) == pytest.approx(row["best_value"], rel=1e-5)
        assert cells[5] == str(row["best_epoch"])
    best = min(from_influx["runs"], key=lambda r: r["best_value"])
    assert f"best: {best['run_id']} (val_loss=" in lines[-2]
    assert lines[-1].startswith("federated runs: their EPOCHS count rounds")


@pytest.mark.integration
@pytest.mark.slow
def test_influx_and_sql_name_the_same_recorded_metrics_for_a_metric_no_run_has(
    real_runs: LoadedRuns, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = [real_runs.healthy, real_runs.federated]
    lines = {}
    for source in ("influx", "sql"):
        assert main(["compare", *runs, "--metric", "val_nothing", "--source", source]) == 0
        lines[source] = capsys.readouterr().out.splitlines()[-1]
    assert lines["influx"] == lines["sql"]
    prefix = "no val_nothing in 2 run(s); metrics these runs recorded: "
    assert lines["sql"].startswith(prefix)
    names = lines["sql"].removeprefix(prefix).split(", ")
    assert {"val_loss", "val_acc", "train_loss"} <= set(names)  # the federated aggregate's too
    for name in names:  # each one it names is one compare finds
        document = compare_json(capsys, *runs, "--metric", name, "--source", "sql")
        assert any(row["epochs"] for row in document["runs"]), name


@pytest.mark.integration
@pytest.mark.slow
def test_influx_unknown_runs_are_named_in_one_line(
    influx_runs: LoadedRuns, proxied_runs: RecordingProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    line = error_line(capsys, influx_runs.healthy, "run-b", "run-c")
    assert line == (
        f"runwatch: error: unknown runs in InfluxDB bucket {influx_runs.bucket!r} (not shipped "
        "yet? `runwatch sync`, or --source sql): 'run-b', 'run-c'"
    )
    assert len(proxied_runs.queries) == 1  # no summary query for an incomplete set


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize(
    "hostile",
    ['run") |> drop(columns: ["_value"]) //', "x\n|> yield()", "// comment", 'a"b', '" or true'],
)
def test_influx_hostile_input_never_changes_the_query_text(
    influx_runs: LoadedRuns,
    proxied_runs: RecordingProxy,
    capsys: pytest.CaptureFixture[str],
    hostile: str,
) -> None:
    # as a run id: the real server finds no such run
    line = error_line(capsys, hostile)
    assert line.startswith("runwatch: error: unknown run in InfluxDB bucket")
    assert line.endswith(f": {hostile!r}")
    # as a metric: a real run is found, with no epochs of that metric
    document = compare_json(capsys, influx_runs.healthy, "--metric", hostile)
    assert [(r["run_id"], r["epochs"]) for r in document["runs"]] == [(influx_runs.healthy, 0)]

    lookup, runs_request, summary_request = proxied_runs.queries
    assert (lookup.query, runs_request.query, summary_request.query) == (
        RUNS.flux,
        RUNS.flux,
        METRIC_SUMMARY.flux,
    )
    assert lookup.extern_options["run_ids"]["elements"] == [
        {"type": "StringLiteral", "value": hostile}
    ]
    # the metric is asked for by its canonical name, the one InfluxDB fields carry
    canonical = canonical_name(hostile)
    assert canonical and canonical != hostile
    assert summary_request.extern_options["metric"] == {"type": "StringLiteral", "value": canonical}
    for request in proxied_runs.queries:
        assert hostile not in json.dumps({k: v for k, v in request.body.items() if k != "extern"})


@pytest.mark.integration
@pytest.mark.slow
def test_influx_wrong_token_is_one_line_without_the_token(
    real_runs: LoadedRuns, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("INFLUXDB_V2_TOKEN", "s3cret-wrong-token")
    line = error_line(capsys, real_runs.healthy)
    assert line == "runwatch: error: InfluxDB query runs failed (HTTP 401): unauthorized access"


def test_influx_unreachable_is_one_line(
    runwatch_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("INFLUXDB_V2_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("INFLUXDB_V2_ORG", "runwatch")
    monkeypatch.setenv("INFLUXDB_V2_TOKEN", "s3cret-token")
    line = error_line(capsys, "20240101T000000Z-aaaa")
    assert line.startswith("runwatch: error: InfluxDB at http://127.0.0.1:")
    assert "unreachable" in line and "s3cret" not in line
