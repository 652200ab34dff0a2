"""The MLP classifier learns the bundled task and logs docs/design.md's epoch metric names."""

from __future__ import annotations

import lightning.pytorch as pl

from trainer.data import BreastCancerDataModule
from trainer.model import MLPClassifier


def test_learns_and_logs_the_schema_names() -> None:
    pl.seed_everything(0, verbose=False)
    model = MLPClassifier(num_features=30)
    trainer = pl.Trainer(
        max_epochs=4,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    data = BreastCancerDataModule()
    trainer.fit(model, datamodule=data)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for name in (
        "train_loss_epoch",
        "train_acc_epoch",
        "train_recall_epoch",
        "train_f1_epoch",
        "val_loss",
        "val_acc",
        "val_precision",
        "val_recall",
        "val_f1",
        "val_auroc",
        "val_cm_tp",
        "val_cm_tn",
        "val_cm_fp",
        "val_cm_fn",
    ):
        assert name in metrics, name
    assert metrics["val_acc"] > 0.9 and metrics["val_auroc"] > 0.95
    counts = [metrics[f"val_cm_{k}"] for k in ("tp", "tn", "fp", "fn")]
    assert sum(counts) == len(data.splits.val)
    recall = metrics["val_cm_tp"] / (metrics["val_cm_tp"] + metrics["val_cm_fn"])
    assert abs(recall - metrics["val_recall"]) < 1e-6
    test = trainer.test(model, datamodule=data, verbose=False)[0]
    assert test["test_acc"] > 0.9
