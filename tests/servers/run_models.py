"""LightningModules for the runs loaded into InfluxDB 2 (``tests/servers/influx_runs.py``):
the reference MLP, made to misbehave the way real trainings do, on purpose and repeatably."""

from __future__ import annotations

import torch

from trainer.model import MLPClassifier

Batch = tuple[torch.Tensor, torch.Tensor]

NONFINITE_FROM_EPOCH = 1
"""Epoch (0-based) from which the training loss is NaN, as in a run whose weights blew up."""
VAL_LOSS_RISE_PER_EPOCH = 0.5
"""Added to val_loss at each epoch: it rises at every epoch end (an overfitting run)."""


class NonFiniteLossMLP(MLPClassifier):
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        if self.current_epoch < NONFINITE_FROM_EPOCH:
            return super().training_step(batch, batch_idx)
        features, labels = batch
        loss = self.loss_fn(self(features), labels) * float("nan")
        self.log("train_loss", loss, on_step=True, on_epoch=True, batch_size=labels.shape[0])
        return loss


class DivergingValLossMLP(MLPClassifier):
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        features, labels = batch
        logits = self(features)
        probabilities = torch.sigmoid(logits)
        self.val_metrics.update(probabilities, labels.int())
        self.val_confusion.update(probabilities, labels.int())
        penalty = VAL_LOSS_RISE_PER_EPOCH * (self.current_epoch + 1)
        loss = self.loss_fn(logits, labels) + penalty
        self.log("val_loss", loss, on_epoch=True, batch_size=labels.shape[0])
