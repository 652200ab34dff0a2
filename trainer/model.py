"""A small MLP binary classifier with torchmetrics, logging the names docs/design.md's epoch schema uses.

Logged per epoch: ``train_loss``, ``train_acc``, ``train_recall``, ``train_f1`` and
``val_loss``, ``val_acc``, ``val_precision``, ``val_recall``, ``val_f1``, ``val_auroc``,
``val_cm_tp/tn/fp/fn`` (``test_*`` likewise). Train metrics are also logged per step
(Lightning then suffixes ``_step``/``_epoch``; runwatch strips the suffix).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryConfusionMatrix,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
)

Batch = tuple[torch.Tensor, torch.Tensor]


def _eval_metrics() -> MetricCollection:
    return MetricCollection(
        {
            "acc": BinaryAccuracy(),
            "precision": BinaryPrecision(),
            "recall": BinaryRecall(),
            "f1": BinaryF1Score(),
            "auroc": BinaryAUROC(),
        }
    )


class MLPClassifier(pl.LightningModule):
    """``num_features -> hidden -> hidden -> 1`` with ReLU and dropout; BCE-with-logits loss."""

    def __init__(
        self,
        num_features: int = 30,
        hidden: int = 64,
        lr: float = 1e-3,
        dropout: float = 0.1,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.lr = lr
        self.weight_decay = weight_decay
        self.net = nn.Sequential(
            nn.Linear(num_features, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )
        self.loss_fn = nn.BCEWithLogitsLoss()
        self.train_metrics = MetricCollection(
            {"acc": BinaryAccuracy(), "recall": BinaryRecall(), "f1": BinaryF1Score()},
            prefix="train_",
        )
        self.val_metrics = _eval_metrics().clone(prefix="val_")
        self.test_metrics = _eval_metrics().clone(prefix="test_")
        self.val_confusion = BinaryConfusionMatrix()
        self.test_confusion = BinaryConfusionMatrix()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.net(features).squeeze(-1)
        return logits

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        features, labels = batch
        logits = self(features)
        loss: torch.Tensor = self.loss_fn(logits, labels)
        batch_size = labels.shape[0]
        self.log("train_loss", loss, on_step=True, on_epoch=True, batch_size=batch_size)
        self.train_metrics(torch.sigmoid(logits), labels.int())
        self.log_dict(self.train_metrics, on_step=True, on_epoch=True, batch_size=batch_size)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_metrics, self.val_confusion)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_metrics, self.test_confusion)

    def _evaluate(
        self,
        batch: Batch,
        stage: str,
        metrics: MetricCollection,
        confusion: BinaryConfusionMatrix,
    ) -> None:
        features, labels = batch
        logits = self(features)
        loss = self.loss_fn(logits, labels)
        probabilities = torch.sigmoid(logits)
        metrics.update(probabilities, labels.int())
        confusion.update(probabilities, labels.int())
        self.log(f"{stage}_loss", loss, on_epoch=True, batch_size=labels.shape[0])

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val", self.val_metrics, self.val_confusion)

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test", self.test_metrics, self.test_confusion)

    def _log_epoch_metrics(
        self, stage: str, metrics: MetricCollection, confusion: BinaryConfusionMatrix
    ) -> None:
        self.log_dict(metrics.compute())
        metrics.reset()
        # torchmetrics' binary matrix is [[tn, fp], [fn, tp]]
        (tn, fp), (fn, tp) = confusion.compute().float().tolist()
        confusion.reset()
        self.log_dict(
            {f"{stage}_cm_tp": tp, f"{stage}_cm_tn": tn, f"{stage}_cm_fp": fp, f"{stage}_cm_fn": fn}
        )

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
