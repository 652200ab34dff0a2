"""One producer per value, with Lightning's own step: runwatch beside CSVLogger in one Trainer.

Lightning's CSVLogger writes exactly what Lightning hands its loggers, with Lightning's step;
runwatch must write the same values, once each, with the same steps, and its gradient points
must join its batch points on that step.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger, Logger

from collector.config import Settings
from collector.lightning import Telemetry, runwatch_telemetry
from tests.collector.test_lightning import make_settings, of, quiet_trainer, read_points

TRAIN_BATCHES = 13
EPOCHS = 4
STEPS = TRAIN_BATCHES * EPOCHS  # 52, as in the issue


class LogsEverything(BoringModel):
    """Logs a step-level loss (so the logged value and the output's loss differ), a value with
    an odd name, and epoch-level train and validation metrics."""

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        output = super().training_step(batch, batch_idx)
        loss = output["loss"]
        self.log("train_loss", loss + 1000.0, on_step=True, on_epoch=False)
        self.log("loss (smoothed)", loss * 0.5, on_step=True, on_epoch=False)
        self.log("train_acc", 0.5 + self.global_step / 1000, on_step=False, on_epoch=True)
        return output

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        output = super().validation_step(batch, batch_idx)
        self.log("val_loss", output["x"])
        self.log("val/acc@1", 0.25 + self.current_epoch / 10)
        return output


def _fit_with_telemetry(
    tmp_path: Path,
    name: str,
    *,
    gradient_every_n: int,
    with_logger: bool = True,
    other_loggers: Sequence[Logger] = (),
    **trainer_args: Any,
) -> tuple[Settings, Telemetry, pl.Trainer]:
    """A run's settings and telemetry (no Prometheus, no system samples) and a quiet trainer
    with its callbacks, its logger unless not ``with_logger``, and ``other_loggers``."""
    settings = make_settings(tmp_path / "home")
    telemetry = runwatch_telemetry(
        name,
        settings=settings,
        gradient_every_n=gradient_every_n,
        system_interval_s=0,
        prometheus=False,
    )
    loggers = [telemetry.logger] if with_logger else []
    trainer = quiet_trainer(
        logger=[*loggers, *other_loggers] or False,
        callbacks=telemetry.callbacks,
        enable_checkpointing=False,
        **trainer_args,
    )
    return settings, telemetry, trainer


def _csv_rows(directory: Path) -> list[dict[str, str]]:
    (path,) = directory.rglob("metrics.csv")
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("log_every_n_steps", [1, 5])
def test_batch_points_are_lightnings_logged_steps_once_each(
    tmp_path: Path, log_every_n_steps: int
) -> None:
    settings = make_settings(tmp_path / "home")
    telemetry = runwatch_telemetry(
        "steps", settings=settings, gradient_every_n=1, system_interval_s=0, prometheus=False
    )
    csv_logger = CSVLogger(tmp_path / "csv", name="steps")
    pl.seed_everything(3, verbose=False)
    trainer = quiet_trainer(
        max_epochs=EPOCHS,
        limit_train_batches=TRAIN_BATCHES,
        limit_val_batches=2,
        log_every_n_steps=log_every_n_steps,
        logger=[telemetry.logger, csv_logger],
        callbacks=telemetry.callbacks,
        enable_checkpointing=False,
    )
    trainer.fit(LogsEverything())
    assert trainer.global_step == STEPS

    rows = _csv_rows(tmp_path / "csv")
    step_rows = [r for r in rows if r.get("train_loss")]
    points = read_points(settings, telemetry.run_id)
    batches = of(points, "batch")

    expected = STEPS // log_every_n_steps
    assert len(step_rows) == expected
    assert len(batches) == expected
    assert [p.fields["step"] for p in batches] == [float(r["step"]) for r in step_rows]
    # the logged value, not the output's loss: one value per step, from one producer
    assert [p.fields["loss"] for p in batches] == [float(r["train_loss"]) for r in step_rows]
    assert [p.fields["loss_smoothed"] for p in batches] == [
        float(r["loss (smoothed)"]) for r in step_rows
    ]
    assert all(p.fields["loss"] > 999 for p in batches)
    assert all("samples_per_s" in p.fields and "batch_idx" in p.fields for p in batches)
    assert [p.fields["batch_idx"] for p in batches] == [
        p.fields["step"] % TRAIN_BATCHES for p in batches
    ]

    # gradient points (every optimizer step) share the step numbering: an exact join
    gradient_steps = [p.fields["step"] for p in of(points, "gradient")]
    assert gradient_steps == [float(s) for s in range(STEPS)]
    assert {p.fields["step"] for p in batches} <= set(gradient_steps)

    # one epoch point per epoch, each value once, equal to CSVLogger's epoch rows
    epochs = of(points, "epoch")
    assert [p.fields["epoch"] for p in epochs] == [float(e) for e in range(EPOCHS)]
    val_rows = [r for r in rows if r.get("val_loss")]
    train_rows = [r for r in rows if r.get("train_acc")]
    assert [p.fields["val_loss"] for p in epochs] == [float(r["val_loss"]) for r in val_rows]
    assert [p.fields["val_acc_1"] for p in epochs] == [float(r["val/acc@1"]) for r in val_rows]
    assert [p.fields["train_acc"] for p in epochs] == [float(r["train_acc"]) for r in train_rows]
    for point in epochs:
        assert not any(name.startswith(("train_loss", "loss")) for name in point.fields)
    # the export files use the canonical names too, the logged one kept beside it
    export_dir = settings.home / "exports" / telemetry.run_id
    document = json.loads((export_dir / "metrics.json").read_text())
    assert document["metric_names"] == {"val_acc_1": "val/acc@1"}
    assert [row["val_acc_1"] for row in document["metrics_history"]] == [
        p.fields["val_acc_1"] for p in epochs
    ]
    with (export_dir / "metrics.csv").open() as handle:
        header = next(csv.reader(handle))
    assert "val_acc_1" in header and "val/acc@1" not in header
    assert telemetry.session.error_ledger.total == 0


def test_without_logged_step_values_the_sampler_writes_the_step_point(tmp_path: Path) -> None:
    settings, telemetry, trainer = _fit_with_telemetry(
        tmp_path,
        "quiet",
        gradient_every_n=3,
        max_epochs=2,
        limit_train_batches=6,
        limit_val_batches=1,
        log_every_n_steps=3,
    )
    trainer.fit(BoringModel())  # logs nothing with self.log
    points = read_points(settings, telemetry.run_id)
    batches = of(points, "batch")
    assert [p.fields["step"] for p in batches] == [2.0, 5.0, 8.0, 11.0]
    assert all(math.isfinite(p.fields["loss"]) for p in batches)
    # gradients every 3 steps from step 0: 0, 3, 6, 9; the join is on the same numbering
    assert [p.fields["step"] for p in of(points, "gradient")] == [0.0, 3.0, 6.0, 9.0]


class _CompareFitSteps(pl.Callback):
    """At every batch end and optimizer step: FitSteps reads what the trainer says."""

    def __init__(self) -> None:
        self.steps: Any = None
        self.checked = 0
        self.logged = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from collector.lightning.callbacks import FitSteps

        self.steps = FitSteps(trainer)

    def _check(self, trainer: pl.Trainer) -> None:
        assert self.steps.global_step(trainer) == trainer.global_step
        self.checked += 1

    def on_before_optimizer_step(self, trainer: pl.Trainer, *args: Any) -> None:
        self._check(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        from collector.lightning.callbacks import lightning_logs_this_step, lightning_step

        self._check(trainer)
        logged = lightning_step(trainer) if lightning_logs_this_step(trainer) else None
        assert self.steps.logged_step(trainer) == logged
        self.logged += logged is not None


@pytest.mark.parametrize(("every", "accumulate"), [(1, 1), (3, 1), (2, 2), (0, 1)])
def test_fit_steps_read_what_the_trainer_says(every: int, accumulate: int) -> None:
    compare = _CompareFitSteps()
    trainer = quiet_trainer(
        max_epochs=2,
        limit_train_batches=7,
        limit_val_batches=0,
        log_every_n_steps=every,
        accumulate_grad_batches=accumulate,
        logger=False,
        enable_checkpointing=False,
        callbacks=[compare],
    )
    trainer.fit(BoringModel())
    assert compare.checked >= 14
    assert (compare.logged > 0) == (every > 0)  # both answers were met


class ReturnsItsLoss(BoringModel):
    """Logs nothing; ``training_step`` returns ``kind`` of output, under manual optimization
    (which lets it return anything), and keeps the loss of each step."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.kind = kind
        self.losses: dict[int, float] = {}

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        optimizer = self.optimizers()
        loss = super().training_step(batch, batch_idx)["loss"]
        self.losses[self.global_step] = float(loss.detach())
        optimizer.zero_grad()  # type: ignore[union-attr]
        self.manual_backward(loss)
        optimizer.step()  # type: ignore[union-attr]
        if self.kind == "tensor":
            return loss.detach()
        if self.kind == "mapping":
            return {"loss": loss.detach()}
        return {"loss": loss.detach().repeat(2)}  # two numbers: no loss to read


@pytest.mark.parametrize("with_logger", [True, False], ids=["logger", "callbacks only"])
@pytest.mark.parametrize("kind", ["tensor", "mapping", "two numbers"])
def test_the_batch_point_takes_the_loss_the_step_returned(
    tmp_path: Path, kind: str, with_logger: bool
) -> None:
    """Read by the logger on a step that logged no loss, or by the batch callback itself
    when there is no runwatch logger."""
    settings, telemetry, trainer = _fit_with_telemetry(
        tmp_path,
        "returned",
        gradient_every_n=0,
        with_logger=with_logger,
        max_epochs=1,
        limit_train_batches=6,
        limit_val_batches=0,
        log_every_n_steps=2,
    )
    model = ReturnsItsLoss(kind)
    trainer.fit(model)
    batches = of(read_points(settings, telemetry.run_id), "batch")
    assert [p.fields["batch_idx"] for p in batches] == [1.0, 3.0, 5.0]
    if kind == "two numbers":
        assert not any("loss" in p.fields for p in batches)
    else:  # one optimizer step a batch: the loss kept at global_step i is batch i's
        expected = [model.losses[int(p.fields["batch_idx"])] for p in batches]
        assert [p.fields["loss"] for p in batches] == pytest.approx(expected, rel=1e-6)
    assert telemetry.session.error_ledger.total == 0


class ChangesWhatItLogs(BoringModel):
    """Logs a loss every step, a second metric from step 5 on and, from step 8 on, an
    evaluation metric per training step (which batch points do not hold)."""

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        output = super().training_step(batch, batch_idx)
        self.log("train_loss", output["loss"] + 1000.0, on_step=True, on_epoch=False)
        if self.global_step >= 5:
            self.log("train_late", 0.5 + self.global_step, on_step=True, on_epoch=False)
        if self.global_step >= 8:
            self.log("val_in_training", 7.0, on_step=True, on_epoch=False)
        return output


def test_metrics_that_appear_mid_fit_reach_the_steps_that_log_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The step path reads names met before in one pass; a name it has not met takes the
    general one, from the step it first appears, and an unfiled name warns once."""
    settings, telemetry, trainer = _fit_with_telemetry(
        tmp_path,
        "changes",
        gradient_every_n=0,
        other_loggers=[CSVLogger(tmp_path / "csv", name="changes")],
        max_epochs=1,
        limit_train_batches=12,
        limit_val_batches=0,
        log_every_n_steps=1,
    )
    with caplog.at_level("WARNING", logger="collector.lightning"):
        trainer.fit(ChangesWhatItLogs())
    rows = [r for r in _csv_rows(tmp_path / "csv") if r.get("train_loss")]
    batches = of(read_points(settings, telemetry.run_id), "batch")
    assert [p.fields["step"] for p in batches] == [float(s) for s in range(12)]
    assert [p.fields["loss"] for p in batches] == [float(r["train_loss"]) for r in rows]
    assert [p.fields.get("late") for p in batches] == [None] * 5 + [0.5 + s for s in range(5, 12)]
    assert not any("in_training" in name for p in batches for name in p.fields)
    unfiled = [r for r in caplog.records if "val_in_training" in r.getMessage()]
    assert len(unfiled) == 1
    assert telemetry.session.error_ledger.total == 0
