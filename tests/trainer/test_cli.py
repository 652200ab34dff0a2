"""``runwatch train centralized`` and ``runwatch demo`` end to end (no server needed)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from collector.cli._main import main
from collector.config import load_settings
from collector.store import RunSummary, Store


def all_runs() -> list[RunSummary]:
    store = Store.from_settings(load_settings(dotenv=None))
    try:
        return list(store.list_runs())
    finally:
        store.dispose()


def only_run(home: Path) -> tuple[str, str]:
    runs = all_runs()
    assert len(runs) == 1
    return runs[0].run_id, runs[0].status


def test_train_centralized(runwatch_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "train",
            "centralized",
            "--epochs",
            "2",
            "--experiment",
            "cli-run",
            "--batch-size",
            "64",
            "--lr",
            "0.01",
            "--seed",
            "3",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    run_id, status = only_run(runwatch_env)
    assert status == "completed"
    assert f"run {run_id}: completed, 2 epochs" in out
    assert re.search(r"final val\s+loss=\d", out) and re.search(r"test\s+loss=\d", out)
    assert "Epoch" not in out + err  # no progress bar
    store = Store.from_settings(load_settings(dotenv=None))
    try:
        run = store.get_run(run_id)
    finally:
        store.dispose()
    assert run.experiment == "cli-run"
    assert run.hyperparams["lr"] == 0.01 and run.hyperparams["batch_size"] == 64


def test_demo_summarises_what_was_recorded(
    runwatch_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["demo", "--epochs", "2"])
    out, err = capsys.readouterr()
    assert code == 0, err
    runs = {run.mode: run for run in all_runs()}
    assert set(runs) == {"centralized", "federated"}
    assert {run.status for run in runs.values()} == {"completed"}
    assert runs["federated"].experiment == "demo-federated"
    federated_id = runs["federated"].run_id
    assert re.search(rf"run id\s+{federated_id} \(completed, simulation engine, 3 rounds", out)
    run_id = runs["centralized"].run_id
    assert f"run id        {run_id} (completed, 2 epochs" in out
    assert f"sqlite:///{runwatch_env}/runs.db" in out
    points = int(re.search(r"points\s+(\d+) in (\S+)", out).group(1))  # type: ignore[union-attr]
    spool = Path(re.search(r"points\s+\d+ in (\S+)", out).group(1))  # type: ignore[union-attr]
    assert spool.is_file() and points == spool.read_bytes().count(b"\n") and points > 10
    assert "not configured" in out and "disabled" in out  # no InfluxDB, exporter port 0
    assert "metrics.csv" in out and "metrics.json" in out
    assert re.search(r"final val\s+loss=\d\.\d{4} acc=", out)


def test_user_module_by_import_path(
    runwatch_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    package = runwatch_env.parent / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(
        textwrap.dedent("""
        from lightning.pytorch.demos.boring_classes import BoringDataModule, BoringModel

        class MyModel(BoringModel):
            pass

        class MyData(BoringDataModule):
            pass
    """)
    )
    monkeypatch.syspath_prepend(str(runwatch_env.parent))
    code = main(
        [
            "train",
            "centralized",
            "--epochs",
            "1",
            "--model",
            "userpkg.models:MyModel",
            "--datamodule",
            "userpkg.models:MyData",
        ]
    )
    _, err = capsys.readouterr()
    assert code == 0, err
    assert only_run(runwatch_env)[1] == "completed"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "nope.nowhere:Model"], "cannot import --model module 'nope.nowhere'"),
        (["--model", "collector.config:Missing"], "has no 'Missing'"),
        (["--model", "collector.config:Settings"], "is not a LightningModule subclass"),
        (["--datamodule", "justamodule"], "must look like 'package.module:ClassName'"),
    ],
)
def test_bad_import_path_is_one_clear_error_line(
    runwatch_env: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code = main(["train", "centralized", "--epochs", "1", *argv])
    _, err = capsys.readouterr()
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("runwatch: error: ") and message in lines[0]


def test_usage_errors_exit_2(runwatch_env: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "centralized", "--epochs", "0"])
    assert exit_info.value.code == 2
