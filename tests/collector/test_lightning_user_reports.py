"""What Lightning users found missing or wrong, each against real training: a diverged metric
flagged in ``runs show``, checkpoint artifacts that match the files ModelCheckpoint keeps and
its file names, ``metrics.json``'s stopped epoch, the epoch value of a metric logged per step
only, a plain loop's step counter, and a loss tensor recorded without torch's warning."""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from collector import Run
from collector.cli import main
from collector.config import load_settings
from collector.lightning import runwatch_telemetry
from collector.store import Store
from tests.collector.test_lightning import read_points
from tests.servers._process import free_port


def trainer_for(telemetry: Any, **options: Any) -> pl.Trainer:
    settings: dict[str, Any] = {
        "max_epochs": 3,
        "limit_train_batches": 4,
        "limit_val_batches": 2,
        "accelerator": "cpu",
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "log_every_n_steps": 1,
    }
    callbacks = [*telemetry.callbacks, *options.pop("callbacks", [])]
    return pl.Trainer(logger=telemetry.logger, callbacks=callbacks, **{**settings, **options})


class Diverging(BoringModel):
    """val_loss finite in epochs 0 and 1, NaN from epoch 2 on."""

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        value = float("nan") if self.current_epoch >= 2 else 1.0 / (self.current_epoch + 1)
        self.log("val_loss", value)
        return super().validation_step(batch, batch_idx)


def test_runs_show_flags_a_metric_whose_latest_epoch_was_not_finite(
    runwatch_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    telemetry = runwatch_telemetry("diverging", system_interval_s=0)
    trainer_for(telemetry).fit(Diverging())
    assert main(["runs", "show", telemetry.run_id, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["latest_metrics"]["val_loss"] is None
    assert shown["nonfinite_metrics"]["val_loss"] == {
        "step": 2,
        "last_finite_value": 0.5,
        "last_finite_step": 1,
    }
    assert "val_loss_nonfinite" not in shown["latest_metrics"]
    assert main(["runs", "show", telemetry.run_id]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("val_loss"))
    assert "NaN/Inf at epoch 2 (last finite 0.5 at epoch 1)" in line


class Scored(BoringModel):
    """val_score rises every epoch, so a top-1 ModelCheckpoint replaces its file each epoch."""

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        self.log("val_score", float(self.current_epoch))
        return super().validation_step(batch, batch_idx)


def test_checkpoint_artifacts_are_the_files_kept_with_lightnings_step(
    runwatch_env: Path, tmp_path: Path
) -> None:
    telemetry = runwatch_telemetry("checkpoints", system_interval_s=0)
    keeper = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", monitor="val_score", mode="max", save_top_k=1
    )
    trainer = trainer_for(telemetry, callbacks=[keeper], enable_checkpointing=True)
    trainer.fit(Scored())
    on_disk = sorted(str(p) for p in (tmp_path / "ckpt").glob("*.ckpt"))
    assert len(on_disk) == 1
    store = Store.from_settings(load_settings())
    try:
        artifacts = store.get_run(telemetry.run_id).artifacts
    finally:
        store.dispose()
    assert [a.path for a in artifacts] == on_disk  # the deleted ones are gone
    named = re.search(r"epoch=(\d+)-step=(\d+)", on_disk[0])
    assert named is not None
    assert (artifacts[0].epoch, artifacts[0].step) == (int(named[1]), int(named[2]))


def test_metrics_json_stopped_epoch_is_the_last_epoch_trained(runwatch_env: Path) -> None:
    telemetry = runwatch_telemetry("stopped", system_interval_s=0)
    trainer_for(telemetry).fit(Scored())
    exported = runwatch_env / "exports" / telemetry.run_id / "metrics.json"
    document = json.loads(exported.read_text(encoding="utf-8"))
    assert [row["epoch"] for row in document["metrics_history"]] == [0, 1, 2]
    assert document["stopped_epoch"] == 2


class StepLogged(BoringModel):
    def __init__(self, on_epoch: bool) -> None:
        super().__init__()
        self.on_epoch = on_epoch
        self.losses: dict[int, list[float]] = {}

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        value = float(batch_idx + 1 + 10 * self.current_epoch)
        self.losses.setdefault(self.current_epoch, []).append(value)
        self.log("train_loss", value, on_step=True, on_epoch=self.on_epoch)
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize("on_epoch", [False, True])
def test_a_metric_logged_per_step_has_lightnings_epoch_value(
    runwatch_env: Path, on_epoch: bool
) -> None:
    telemetry = runwatch_telemetry("reduction", system_interval_s=0)
    model = StepLogged(on_epoch)
    trainer_for(telemetry, max_epochs=2).fit(model)
    points = read_points(load_settings(), telemetry.run_id)
    epoch_loss = {
        int(p.fields["epoch"]): p.fields["train_loss"]
        for p in points
        if p.measurement == "epoch" and "train_loss" in p.fields
    }
    if on_epoch:  # Lightning's reduction: the mean over the epoch's steps, never the last one
        assert epoch_loss == {e: pytest.approx(sum(v) / len(v)) for e, v in model.losses.items()}
    else:  # Lightning gives no epoch value: none is made up from the last step
        assert epoch_loss == {}
    batch_losses = sorted(p.fields["loss"] for p in points if p.measurement == "batch")
    assert batch_losses == sorted(v for values in model.losses.values() for v in values)


def test_a_plain_loops_step_counter_counts_every_step(
    runwatch_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from collector.prometheus import OPTIMIZER_STEPS

    monkeypatch.setenv("RUNWATCH_PROMETHEUS_PORT", str(free_port()))
    with Run("plain", prometheus=True) as run:
        for step in range(30):
            run.record("batch", {"loss": 1.0 / (step + 1), "step": float(step)})
        exporter = run.exporter
        assert exporter is not None
        run.flush()
        assert exporter.registry.get_sample_value(OPTIMIZER_STEPS, {"run_id": run.run_id}) == 30


def test_recording_a_loss_tensor_that_requires_grad_warns_nothing(runwatch_env: Path) -> None:
    weight = torch.ones(1, requires_grad=True)
    loss = (weight * 2).sum()
    with Run("tensor") as run, warnings.catch_warnings():
        warnings.simplefilter("error")
        run.record("batch", {"loss": loss, "step": 0.0})
        run.flush()
    batches = [p for p in read_points(load_settings(), run.run_id) if p.measurement == "batch"]
    assert [p.fields["loss"] for p in batches] == [2.0]
    assert not math.isnan(batches[0].fields["loss"])


# -- torchmetrics confusion matrices ----------------------------------------------------------


class Classifier(pl.LightningModule):
    """A tiny classifier holding a torchmetrics confusion matrix, logging nothing by hand."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        from torchmetrics.classification import (
            BinaryConfusionMatrix,
            MulticlassConfusionMatrix,
        )

        self.layer = torch.nn.Linear(4, num_classes if num_classes > 2 else 1)
        self.num_classes = num_classes
        self.val_cm = (
            BinaryConfusionMatrix() if num_classes == 2 else MulticlassConfusionMatrix(num_classes)
        )
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        out = self(x)
        if self.num_classes == 2:
            return torch.nn.functional.binary_cross_entropy_with_logits(out.squeeze(1), y.float())
        return torch.nn.functional.cross_entropy(out, y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        out = self(x)
        preds = (out.squeeze(1) > 0).long() if self.num_classes == 2 else out.argmax(1)
        self.val_cm.update(preds, y)
        self.log("val_loss", float(batch_idx))

    def on_validation_epoch_end(self) -> None:
        self.seen.append(self.val_cm.compute().clone())
        self.val_cm.reset()  # the user's own reset: runwatch read it first

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loaders(num_classes: int) -> tuple[Any, Any]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=generator)
    y = torch.randint(0, num_classes, (64,), generator=generator)
    data = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(data, batch_size=16), torch.utils.data.DataLoader(
        data, batch_size=16
    )


def epoch_fields(run_id: str) -> dict[int, dict[str, float]]:
    merged: dict[int, dict[str, float]] = {}
    for p in read_points(load_settings(), run_id):
        if p.measurement == "epoch":
            merged.setdefault(int(p.fields["epoch"]), {}).update(p.fields)
    return merged


def test_a_binary_confusion_matrix_gives_the_counts_and_the_final_stats(
    runwatch_env: Path,
) -> None:
    telemetry = runwatch_telemetry("binary-cm", system_interval_s=0)
    model = Classifier(2)
    train, val = loaders(2)
    trainer_for(telemetry, max_epochs=2, limit_train_batches=None, limit_val_batches=None).fit(
        model, train, val
    )
    fields = epoch_fields(telemetry.run_id)
    for epoch, matrix in enumerate(model.seen[-2:]):
        (tn, fp), (fn, tp) = matrix.tolist()
        got = fields[epoch]
        assert (got["val_cm_tp"], got["val_cm_tn"], got["val_cm_fp"], got["val_cm_fn"]) == (
            tp,
            tn,
            fp,
            fn,
        )
    store = Store.from_settings(load_settings())
    try:
        stats = store.get_run(telemetry.run_id).final_stats
    finally:
        store.dispose()
    (tn, fp), (fn, tp) = model.seen[-1].tolist()
    assert stats["final_cm_tp"] == tp and stats["final_cm_fn"] == fn
    assert stats["final_accuracy_cm"] == pytest.approx((tp + tn) / 64)


def test_a_multiclass_confusion_matrix_gives_per_class_precision_recall_f1(
    runwatch_env: Path,
) -> None:
    telemetry = runwatch_telemetry("multiclass-cm", system_interval_s=0)
    model = Classifier(3)
    train, val = loaders(3)
    trainer_for(telemetry, max_epochs=1, limit_train_batches=None, limit_val_batches=None).fit(
        model, train, val
    )
    got = epoch_fields(telemetry.run_id)[0]
    matrix = model.seen[-1].double()
    f1s = []
    for k in range(3):
        tp = matrix[k, k].item()
        predicted, actual = matrix[:, k].sum().item(), matrix[k, :].sum().item()
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        f1s.append(f1)
        assert got[f"val_precision_c{k}"] == pytest.approx(precision)
        assert got[f"val_recall_c{k}"] == pytest.approx(recall)
        assert got[f"val_f1_c{k}"] == pytest.approx(f1)
    assert got["val_f1_macro"] == pytest.approx(sum(f1s) / 3)
    assert "val_cm_tp" not in got


def test_confusion_fields_refuse_a_matrix_that_is_not_square() -> None:
    from collector.lightning import confusion_fields

    with pytest.raises(ValueError, match="not a square confusion matrix"):
        confusion_fields(torch.zeros(2, 3))


class ExternalMatrixClassifier(Classifier):
    """Updates a confusion matrix that is not one of its submodules (held outside the module)."""

    def __init__(self, matrix: Any) -> None:
        super().__init__(2)
        object.__setattr__(self, "external_cm", matrix)  # not registered: only passing finds it
        del self.val_cm

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.external_cm.update((self(x).squeeze(1) > 0).long(), y)
        self.log("val_loss", float(batch_idx))

    def on_validation_epoch_end(self) -> None:
        self.seen.append(self.external_cm.compute().clone())
        self.external_cm.reset()


def test_a_confusion_matrix_passed_to_telemetry_is_recorded(runwatch_env: Path) -> None:
    from torchmetrics.classification import BinaryConfusionMatrix

    matrix = BinaryConfusionMatrix()
    telemetry = runwatch_telemetry("passed-cm", system_interval_s=0, confusion_matrices=[matrix])
    model = ExternalMatrixClassifier(matrix)
    train, val = loaders(2)
    trainer_for(telemetry, max_epochs=1, limit_train_batches=None, limit_val_batches=None).fit(
        model, train, val
    )
    (tn, fp), (fn, tp) = model.seen[-1].tolist()
    got = epoch_fields(telemetry.run_id)[0]
    assert (got["val_cm_tp"], got["val_cm_tn"], got["val_cm_fp"], got["val_cm_fn"]) == (
        tp,
        tn,
        fp,
        fn,
    )
