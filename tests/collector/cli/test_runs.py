"""``runwatch runs``: driven through collector.cli.main against a real SQLite store."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from collector.cli import main
from collector.config import load_settings
from collector.store import Store


@pytest.fixture
def store(runwatch_env: Path) -> Store:
    store = Store.from_settings(load_settings())
    yield store
    store.dispose()


def _recorded_run(store: Store, experiment: str = "baseline") -> str:
    run_id = store.create_run(experiment, hyperparams={"lr": 0.001, "model": {"depth": 18}})
    store.persist_epoch_metrics(
        run_id,
        [
            {
                "epoch": e,
                "train_loss": 1.0 / (e + 1),
                "val_acc": 0.5 + e / 10,
                "val_cm_tp": 40,
                "val_cm_tn": 45,
                "val_cm_fp": 10,
                "val_cm_fn": 5,
            }
            for e in range(3)
        ],
    )
    store.add_artifact(run_id, "/ckpt/best.ckpt", epoch=2, metric_name="val_loss", metric_value=0.2)
    store.complete_run(run_id)
    return run_id


def test_list_json_on_an_empty_store_prints_an_empty_list(
    runwatch_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["runs", "list", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == [] and out.strip() == "[]"
    assert err == ""


def test_list_human_on_an_empty_store(
    runwatch_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["runs", "list"]) == 0
    assert "no runs" in capsys.readouterr().out


def test_list_json_lists_runs_newest_first_with_limit(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = _recorded_run(store, "one"), _recorded_run(store, "two")
    assert main(["runs", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in listed] == [second, first]
    assert listed[0]["status"] == "completed"
    assert listed[0]["hyperparams"] == {"lr": 0.001, "model.depth": 18}
    assert listed[0]["final_stats"]["final_accuracy_cm"] == pytest.approx(0.85)

    assert main(["runs", "list", "--json", "--limit", "1"]) == 0
    assert [r["run_id"] for r in json.loads(capsys.readouterr().out)] == [second]


def test_list_human_is_an_aligned_table(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    run_ids = [_recorded_run(store, "a-much-longer-experiment-name"), _recorded_run(store, "b")]
    assert main(["runs", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["RUN_ID", "EXPERIMENT", "MODE", "STATUS"]
    assert {line.split()[0] for line in lines[1:]} == set(run_ids)
    status_column = lines[0].index("STATUS")
    assert all(line[status_column:].startswith("completed") for line in lines[1:])


def test_show_human_and_json(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    run_id = _recorded_run(store)
    assert main(["runs", "show", run_id]) == 0
    out = capsys.readouterr().out
    for expected in (
        run_id,
        "baseline",
        "completed",
        "final_accuracy_cm",
        "train_loss",
        "/ckpt/best.ckpt",
        "model.depth",
    ):
        assert expected in out

    assert main(["runs", "show", run_id, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["run_id"] == run_id
    assert shown["latest_metrics"]["train_loss"] == pytest.approx(1 / 3)
    assert shown["artifacts"][0]["path"] == "/ckpt/best.ckpt"
    assert "metrics" not in shown


@pytest.mark.parametrize(
    "argv",
    [
        ["runs", "show", "20990101T000000Z-0000000000"],
        ["runs", "show", "no-such-run", "--json"],
        ["runs", "export", "no-such-run", "--format", "csv"],
    ],
)
def test_unknown_run_is_exit_1_with_one_line(
    runwatch_env: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("runwatch: error: unknown run:")


@pytest.mark.parametrize(
    "argv",
    [
        ["runs"],
        ["runs", "show"],
        ["runs", "list", "--limit", "0"],
        ["runs", "list", "--limit", "many"],
        ["runs", "export", "x"],
        ["runs", "export", "x", "--format", "xml"],
        ["runs", "frobnicate"],
    ],
)
def test_usage_errors_exit_2(
    runwatch_env: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_malformed_db_url_is_one_line_naming_the_variable(
    runwatch_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RUNWATCH_DB_URL", "nosuchdb://x/y")
    assert main(["runs", "list"]) == 2  # a configuration error
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RUNWATCH_DB_URL" in err


def test_export_csv_holds_every_metric_row(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_id = _recorded_run(store)
    out_dir = tmp_path / "exports"
    assert main(["runs", "export", run_id, "--format", "csv", "--out", str(out_dir)]) == 0
    written = Path(capsys.readouterr().out.strip())
    assert written == (out_dir / f"baseline_{run_id}.csv").resolve()
    with written.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 * 6 + 8  # epoch metrics + final_epoch stats
    assert {r["run_id"] for r in rows} == {run_id}
    losses = [float(r["value"]) for r in rows if r["metric_name"] == "train_loss"]
    assert losses == [1.0, 0.5, pytest.approx(1 / 3)]


def test_export_json_round_trips(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_id = _recorded_run(store)
    assert main(["runs", "export", run_id, "--format", "json", "--out", str(tmp_path)]) == 0
    document = json.loads(Path(capsys.readouterr().out.strip()).read_text())
    assert document["run_id"] == run_id
    assert len(document["metrics"]) == 3 * 6 + 8
    assert document["server_evaluations"] == []
    assert all(math.isfinite(m["value"]) for m in document["metrics"])


@pytest.mark.parametrize(
    "experiment", ["../../x", "/etc/passwd", "a\x00b", "..", "", "a/../../b", "C:\\temp\\x"]
)
def test_export_never_leaves_the_output_directory(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str], experiment: str
) -> None:
    run_id = _recorded_run(store, experiment)
    out_dir = tmp_path / "out"
    assert main(["runs", "export", run_id, "--format", "json", "--out", str(out_dir)]) == 0
    written = Path(capsys.readouterr().out.strip())
    assert written.parent == out_dir.resolve()
    assert written.is_file()
    assert "\x00" not in written.name and not written.name.startswith(".")
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file() and p.suffix == ".json") == [
        written.name
    ]


def test_export_experiment_with_path_characters_stays_inside(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Run ids with path characters are refused everywhere (test_hostile_input.py); an
    # experiment name may hold anything and names the file too.
    run_id = store.create_run("../../../escape")
    assert main(["runs", "export", run_id, "--format", "csv", "--out", str(tmp_path / "o")]) == 0
    written = Path(capsys.readouterr().out.strip())
    assert written.parent == (tmp_path / "o").resolve()
