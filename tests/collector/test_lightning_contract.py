"""runwatch's logger does what Lightning asks of a logger, the way Lightning's own loggers do:
it survives pickling and deep copies (``ddp_spawn``, copied trainers), follows the rank-zero
convention for ``experiment``, gives the trainer a real ``log_dir`` (LightningCLI saves its
config there), ends a run with the status of the last stage that ran, drops only the bad
values of a ``log_metrics`` call, and stores hyperparameters as the values they are.

Real Lightning training on the CPU, the real spool and a real SQLite store."""

from __future__ import annotations

import copy
import json
import logging
import os
import pickle
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.fabric.loggers.logger import _DummyExperiment
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.utilities import rank_zero_only

from collector.config import load_settings
from collector.lightning import RunwatchLogger, runwatch_telemetry
from collector.spool import list_streams
from collector.store import Store
from tests.collector.test_lightning import read_points
from tests.servers._process import free_port

REPO = Path(__file__).resolve().parents[2]


def trainer_for(
    logger: Any, callbacks: list[pl.Callback] | None = None, **options: Any
) -> pl.Trainer:
    settings: dict[str, Any] = {
        "max_epochs": 1,
        "limit_train_batches": 4,
        "limit_val_batches": 2,
        "accelerator": "cpu",
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "log_every_n_steps": 1,
    }
    return pl.Trainer(logger=logger, callbacks=callbacks or [], **{**settings, **options})


def stored_run(run_id: str) -> Any:
    store = Store.from_settings(load_settings())
    try:
        return store.get_run(run_id, with_metrics=True)
    finally:
        store.dispose()


def hyperparams_of(run_id: str) -> dict[str, Any]:
    return dict(stored_run(run_id).hyperparams or {})


class LoggingModel(BoringModel):
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        output = super().training_step(batch, batch_idx)
        self.log("train_loss", output["loss"])
        return output

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        output = super().validation_step(batch, batch_idx)
        self.log("val_loss", output["x"])
        return output


# -- pickling and copies --------------------------------------------------------------------


def test_a_logger_pickles_and_deep_copies_before_it_starts(runwatch_env: Path) -> None:
    logger = RunwatchLogger("copies")
    for twin in (pickle.loads(pickle.dumps(logger)), copy.deepcopy(logger)):
        assert isinstance(twin, RunwatchLogger)
        assert (twin.name, twin.version) == ("copies", logger.version)
        assert not twin.session.started
    assert not logger.session.started


def test_a_started_logger_copy_continues_the_same_run(runwatch_env: Path) -> None:
    logger = RunwatchLogger("copies")
    logger.log_metrics({"train_loss": 1.0}, step=0)
    assert logger.session.started
    twin = pickle.loads(pickle.dumps(logger))
    twin.log_metrics({"train_loss": 0.5}, step=1)  # no RunIdInUseError: the same run goes on
    twin.session.finish()
    logger.finalize("success")
    points = read_points(load_settings(), logger.version)
    assert sorted(p.fields["loss"] for p in points if p.measurement == "batch") == [0.5, 1.0]
    assert stored_run(logger.version).status == "completed"
    assert len(list_streams(load_settings().spool_dir, logger.version)) == 2


def test_a_trainer_with_runwatch_pickles_and_deep_copies_after_fit(runwatch_env: Path) -> None:
    telemetry = runwatch_telemetry("copies", system_interval_s=0)
    trainer = trainer_for(telemetry.logger, list(telemetry.callbacks))
    trainer.fit(LoggingModel())
    for twin in (pickle.loads(pickle.dumps(trainer)), copy.deepcopy(trainer)):
        loggers = [lg for lg in twin.loggers if isinstance(lg, RunwatchLogger)]
        assert [lg.version for lg in loggers] == [telemetry.run_id]
        # the logger and the callbacks still share one session in the copy
        sessions = {id(lg.session) for lg in loggers}
        sessions |= {id(cb.session) for cb in twin.callbacks if hasattr(cb, "_session")}
        assert len(sessions) == 1
    assert stored_run(telemetry.run_id).status == "completed"


DDP_SPAWN = textwrap.dedent(
    """
    import json, sys, warnings
    warnings.filterwarnings("ignore")
    import lightning.pytorch as pl
    from collector.lightning import runwatch_telemetry
    from trainer.data import BreastCancerDataModule
    from trainer.model import MLPClassifier

    if __name__ == "__main__":
        pl.seed_everything(3, verbose=False)
        telemetry = runwatch_telemetry("spawn", batch_every_n=2, gradient_every_n=2)
        trainer = pl.Trainer(
            accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=2,
            logger=telemetry.logger, callbacks=telemetry.callbacks,
            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
            log_every_n_steps=2,
        )
        trainer.fit(MLPClassifier(num_features=30), datamodule=BreastCancerDataModule())
        json.dump({"run_id": telemetry.run_id, "log_dir": trainer.log_dir}, open(sys.argv[1], "w"))
    """
)


def run_script(
    tmp_path: Path, source: str, home: Path, *, timeout: int, prometheus_port: int = 0
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run ``source`` as a script in a child process with ``home`` as its RUNWATCH_HOME (no
    database URL or InfluxDB from the environment); it must succeed and write a JSON report to
    the path it gets as its argument. Returns the process and the report."""
    script = tmp_path / "script.py"
    script.write_text(source, encoding="utf-8")
    env = {
        **os.environ,
        "RUNWATCH_HOME": str(home),
        "RUNWATCH_PROMETHEUS_PORT": str(prometheus_port),
        "PYTHONPATH": str(REPO),
    }
    for name in ("RUNWATCH_DB_URL", "INFLUXDB_V2_URL", "INFLUXDB_V2_TOKEN"):
        env.pop(name, None)
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, str(script), str(report)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, json.loads(report.read_text())


def run_ddp_spawn(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """DDP_SPAWN in a fresh directory: (its RUNWATCH_HOME, its report). torch's gloo teardown
    can abort a worker at exit after the fit has finished ("terminate called without an
    active exception", SIGABRT; seen once under a full suite's load): that case, and only
    that one, gets one fresh rerun."""
    for attempt in (1, 2):
        workdir = tmp_path / f"attempt-{attempt}"
        workdir.mkdir()
        home = workdir / "home"
        try:
            _done, report = run_script(
                workdir, DDP_SPAWN, home, timeout=540, prometheus_port=free_port()
            )
        except AssertionError as failure:
            text = str(failure)
            aborted_after_fit = "`Trainer.fit` stopped" in text and "signal SIGABRT" in text
            if attempt == 2 or not aborted_after_fit:
                raise
            continue
        return home, report
    raise AssertionError("unreachable")


@pytest.mark.slow
def test_ddp_spawn_with_two_cpu_processes_records_one_run(tmp_path: Path) -> None:
    home, report = run_ddp_spawn(tmp_path)
    run_id = report["run_id"]
    settings = load_settings({"RUNWATCH_HOME": str(home)}, dotenv=None)
    store = Store.from_settings(settings)
    try:
        runs = store.list_runs()
        assert [r.run_id for r in runs] == [run_id]
        assert runs[0].status == "completed"
        epochs = sorted(
            r.step for r in store.metrics_by_context(run_id, "epoch_end") if r.name == "val_loss"
        )
    finally:
        store.dispose()
    assert epochs == [0, 1]
    points = read_points(settings, run_id)
    epoch_points = [p for p in points if p.measurement == "epoch" and "val_loss" in p.fields]
    assert sorted(int(p.fields["epoch"]) for p in epoch_points) == [0, 1]  # rank zero only
    assert len(list_streams(settings.spool_dir, run_id)) == 1


def test_experiment_on_other_ranks_is_lightnings_dummy(
    runwatch_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logger = RunwatchLogger("ranks")
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert isinstance(logger.experiment, _DummyExperiment)
    assert not logger.session.started
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    assert logger.experiment is logger.session and logger.session.started
    logger.finalize("success")


def test_log_metrics_on_other_ranks_records_nothing(
    runwatch_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logger = RunwatchLogger("ranks")
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger.log_metrics({"train_loss": 0.5}, step=7)
    assert not logger.session.started and logger.session.last_step == 0
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    logger.log_metrics({"train_loss": 0.5}, step=7)
    assert logger.session.started and logger.session.last_step == 7
    logger.finalize("success")


# -- directories ----------------------------------------------------------------------------


def test_the_trainer_has_a_real_log_dir_under_the_runs_home(runwatch_env: Path) -> None:
    logger = RunwatchLogger("dirs")
    trainer = trainer_for(logger, enable_checkpointing=True)
    run_dir = runwatch_env / "runs" / logger.version
    assert trainer.log_dir == str(run_dir) == logger.save_dir == logger.log_dir
    assert logger.root_dir == str(runwatch_env / "runs")
    assert (logger.name, logger.version) == ("dirs", logger.version)
    trainer.fit(LoggingModel())
    everywhere = list(Path.cwd().rglob("*.ckpt"))  # the test's directory holds the home
    assert everywhere and all(run_dir in path.parents for path in everywhere), everywhere


def test_lightning_cli_saves_its_config_in_the_runs_directory(runwatch_env: Path) -> None:
    from lightning.pytorch.cli import LightningCLI

    cli = LightningCLI(
        LoggingModel,
        args=[
            "fit",
            "--trainer.logger=collector.lightning.RunwatchLogger",
            "--trainer.logger.experiment=cli",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false",
            "--trainer.accelerator=cpu",
        ],
        save_config_kwargs={"overwrite": False},
    )
    logger = cli.trainer.logger
    assert isinstance(logger, RunwatchLogger) and logger.name == "cli"
    saved = runwatch_env / "runs" / logger.version / "config.yaml"
    assert saved.is_file()
    assert "max_epochs: 1" in saved.read_text(encoding="utf-8")
    assert stored_run(logger.version).status == "completed"


# -- statuses -------------------------------------------------------------------------------


class CrashingModel(LoggingModel):
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        raise RuntimeError("diverged")


def test_a_crash_after_validate_is_the_runs_final_status(runwatch_env: Path) -> None:
    logger = RunwatchLogger("stages")
    model = CrashingModel()
    trainer_for(logger).validate(model)
    with pytest.raises(RuntimeError, match="diverged"):
        trainer_for(logger).fit(model)
    assert stored_run(logger.version).status == "failed"


def test_a_completed_fit_after_a_failed_stage_completes_the_run(runwatch_env: Path) -> None:
    logger = RunwatchLogger("stages")
    with pytest.raises(RuntimeError, match="diverged"):
        trainer_for(logger).fit(CrashingModel())
    trainer_for(logger).fit(LoggingModel())
    assert stored_run(logger.version).status == "completed"


# -- values ---------------------------------------------------------------------------------


def test_one_bad_value_drops_only_itself_with_one_warning_per_name(
    runwatch_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    logger = RunwatchLogger("values")
    with caplog.at_level(logging.WARNING, logger="collector"):
        logger.log_metrics({"train_loss": 0.5, "train_acc": "high", "train_f1": 0.25}, step=0)
        logger.log_metrics({"train_loss": 0.4, "train_acc": "higher", "train_f1": 0.2}, step=1)
        logger.log_metrics({"train_loss": torch.tensor([1.0, 2.0])}, step=2)
        logger.log_metrics({"train_loss": 0.3, "train_f1": None}, step=3)
        logger.log_metrics({"train_loss": 0.2, "train_f1": np.array([0.1, 0.2])}, step=4)
    logger.finalize("success")
    batches = [p for p in read_points(load_settings(), logger.version) if p.measurement == "batch"]
    assert [(p.fields["loss"], p.fields.get("f1")) for p in batches] == [
        (0.5, 0.25),
        (0.4, 0.2),
        (0.3, None),
        (0.2, None),
    ]
    warned = [r.getMessage() for r in caplog.records if "train_acc" in r.getMessage()]
    assert len(warned) == 1 and "'high'" in warned[0]
    assert len([r for r in caplog.records if "train_f1" in r.getMessage()]) == 1
    assert [r for r in caplog.records if "train_loss" in r.getMessage()]  # the 2-element tensor
    assert logger.session.error_ledger.total == 0  # dropped values are not telemetry errors


@dataclass
class Config:
    lr: float = 0.01
    layers: int = 3
    name: str = "mlp"


def test_hyperparameters_are_stored_as_the_values_they_are(
    runwatch_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    logger = RunwatchLogger("params")
    with caplog.at_level(logging.WARNING, logger="collector"):
        logger.log_hyperparams(
            {
                "lr": np.float32(0.5),
                "epochs": np.int64(3),
                "flag": np.bool_(True),
                "shape": np.array([2, 3]),
                "when": object(),
            }
        )
    params = hyperparams_of(logger.version)
    assert params["lr"] == 0.5 and isinstance(params["lr"], float)
    assert params["epochs"] == 3 and isinstance(params["epochs"], int)
    assert params["flag"] is True
    assert params["shape"] == [2, 3]
    assert isinstance(params["when"], str)  # stored as its text, and said so
    assert [r for r in caplog.records if "'when'" in r.getMessage()]
    logger.finalize("success")


def test_a_dataclass_of_hyperparameters_is_stored_as_its_fields(runwatch_env: Path) -> None:
    logger = RunwatchLogger("params")
    logger.log_hyperparams(Config(lr=0.1))  # type: ignore[arg-type]
    assert hyperparams_of(logger.version) == {"lr": 0.1, "layers": 3, "name": "mlp"}
    logger.finalize("success")


@pytest.mark.parametrize("experiment", ["", None, "   "])
def test_an_empty_experiment_name_records_under_the_default_name(
    runwatch_env: Path, experiment: Any
) -> None:
    logger = RunwatchLogger(experiment)
    logger.log_metrics({"train_loss": 1.0}, step=0)
    logger.finalize("success")
    assert logger.name == "default"
    assert stored_run(logger.version).experiment == "default"


# -- validate() -----------------------------------------------------------------------------


def epoch_numbers(run_id: str) -> list[int]:
    points = read_points(load_settings(), run_id)
    return sorted(int(p.fields["epoch"]) for p in points if p.measurement == "epoch")


WITH_AND_WITHOUT_CALLBACKS = pytest.mark.parametrize(
    "callbacks", [True, False], ids=["telemetry", "logger-alone"]
)


def runwatch_for(callbacks: bool) -> tuple[RunwatchLogger, list[pl.Callback]]:
    if not callbacks:
        return RunwatchLogger("validate"), []
    telemetry = runwatch_telemetry("validate", system_interval_s=0)
    return telemetry.logger, list(telemetry.callbacks)


@WITH_AND_WITHOUT_CALLBACKS
def test_validate_after_fit_is_filed_under_the_last_trained_epoch(
    runwatch_env: Path, callbacks: bool
) -> None:
    logger, chain = runwatch_for(callbacks)
    model = LoggingModel()
    trainer_for(logger, chain, max_epochs=2).fit(model)
    trainer_for(logger, chain).validate(model)
    logger.session.finish()
    assert set(epoch_numbers(logger.version)) == {0, 1}
    assert stored_run(logger.version).status == "completed"


@WITH_AND_WITHOUT_CALLBACKS
def test_validate_before_fit_writes_no_second_epoch_zero(
    runwatch_env: Path, callbacks: bool
) -> None:
    logger, chain = runwatch_for(callbacks)
    model = LoggingModel()
    validated = trainer_for(logger, chain)
    validated.validate(model)
    before_fit = float(validated.callback_metrics["val_loss"])
    trainer = trainer_for(logger, chain, max_epochs=2)
    trainer.fit(model)
    assert epoch_numbers(logger.version) == [0, 1]
    epoch_zero = [
        p.fields["val_loss"]
        for p in read_points(load_settings(), logger.version)
        if p.measurement == "epoch" and p.fields["epoch"] == 0
    ]
    assert len(epoch_zero) == 1 and epoch_zero[0] != pytest.approx(before_fit)
    assert stored_run(logger.version).status == "completed"
    if not callbacks:
        return
    store = Store.from_settings(load_settings())
    try:
        rows = [
            r.step
            for r in store.metrics_by_context(logger.version, "epoch_end")
            if r.name == "val_loss"
        ]
    finally:
        store.dispose()
    assert sorted(rows) == [0, 1]


VALIDATE_ONLY = textwrap.dedent(
    """
    import json, sys, warnings
    warnings.filterwarnings("ignore")
    from collector.lightning import RunwatchLogger
    from tests.collector.test_lightning_contract import LoggingModel, trainer_for

    logger = RunwatchLogger("validate-only")
    trainer = trainer_for(logger)
    trainer.validate(LoggingModel(), verbose=False)
    json.dump(
        {"run_id": logger.version, "val_loss": float(trainer.callback_metrics["val_loss"])},
        open(sys.argv[1], "w"),
    )
    """
)


def test_a_validate_only_run_with_the_logger_alone_keeps_its_values(tmp_path: Path) -> None:
    """Its epoch-0 values wait for a fit that never comes: they are written at exit."""
    home = tmp_path / "home"
    done, result = run_script(tmp_path, VALIDATE_ONLY, home, timeout=300)
    assert "telemetry error" not in done.stderr
    settings = load_settings({"RUNWATCH_HOME": str(home)}, dotenv=None)
    epochs = [p.fields for p in read_points(settings, result["run_id"]) if p.measurement == "epoch"]
    assert epochs == [{"epoch": 0.0, "val_loss": pytest.approx(result["val_loss"])}]
    store = Store.from_settings(settings)
    try:
        assert store.get_run(result["run_id"]).status == "completed"
    finally:
        store.dispose()
