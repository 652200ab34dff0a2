"""Confusion matrices from torchmetrics, as epoch fields: counts and per-class statistics.

A LightningModule that keeps a ``BinaryConfusionMatrix`` or ``MulticlassConfusionMatrix``
(as an attribute, so Lightning sees it as a submodule) gets, at the end of every validation
epoch of fit, without logging anything by hand:

- two classes: ``val_cm_tp``, ``val_cm_tn``, ``val_cm_fp``, ``val_cm_fn`` (class 1 is the
  positive one), the fields the store's final statistics, the dashboards and the alerts read;
- more classes: ``val_precision_c<k>``, ``val_recall_c<k>``, ``val_f1_c<k>`` per class (up to
  ``max_classes``), and their macro averages ``val_precision_macro``, ``val_recall_macro``,
  ``val_f1_macro``.

The prefix is the attribute's (``test_cm`` -> ``test_``; ``val_`` otherwise). The matrix is
read before the module's own ``on_validation_epoch_end`` (Lightning calls callbacks first),
so a module that resets it there is read in full. ``ConfusionMatrixCallback(metrics=...)``
names the metrics instead of finding them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn

from collector.lightning._guard import guarded
from collector.lightning.callbacks import SessionCallback
from collector.lightning.session import RunSession

log = logging.getLogger("collector.lightning")

CONFUSION_MATRIX_CLASSES = ("BinaryConfusionMatrix", "MulticlassConfusionMatrix")
DEFAULT_MAX_CLASSES = 100


def confusion_fields(
    matrix: torch.Tensor, prefix: str = "val_", *, max_classes: int = DEFAULT_MAX_CLASSES
) -> dict[str, float]:
    """Epoch fields of a square confusion matrix (rows: true class, columns: predicted)."""
    counts = matrix.detach().to("cpu", torch.float64)
    if counts.dim() != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] < 2:
        raise ValueError(f"not a square confusion matrix: shape {tuple(counts.shape)}")
    if counts.shape[0] == 2:
        (tn, fp), (fn, tp) = counts.tolist()
        return {
            f"{prefix}cm_tp": tp,
            f"{prefix}cm_tn": tn,
            f"{prefix}cm_fp": fp,
            f"{prefix}cm_fn": fn,
        }
    hits = counts.diagonal()
    predicted = counts.sum(dim=0)
    actual = counts.sum(dim=1)
    fields: dict[str, float] = {}
    scores: dict[str, list[float]] = {"precision": [], "recall": [], "f1": []}
    for k, (tp, pred, true) in enumerate(
        zip(hits.tolist(), predicted.tolist(), actual.tolist(), strict=True)
    ):
        precision = tp / pred if pred else 0.0
        recall = tp / true if true else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        for name, value in (("precision", precision), ("recall", recall), ("f1", f1)):
            scores[name].append(value)
            if k < max_classes:
                fields[f"{prefix}{name}_c{k}"] = value
    for name, values in scores.items():
        fields[f"{prefix}{name}_macro"] = sum(values) / len(values)
    return fields


def is_confusion_matrix(module: object) -> bool:
    return type(module).__name__ in CONFUSION_MATRIX_CLASSES


def field_prefix(attribute: str) -> str:
    return "test_" if attribute.rsplit(".", 1)[-1].startswith("test") else "val_"


class ConfusionMatrixCallback(SessionCallback):
    """Records the module's torchmetrics confusion matrices (see the module doc)."""

    def __init__(
        self,
        session: RunSession | None = None,
        *,
        metrics: Sequence[Any] | None = None,
        max_classes: int = DEFAULT_MAX_CLASSES,
    ) -> None:
        super().__init__(session)
        self.metrics = list(metrics) if metrics is not None else None
        self.max_classes = max_classes
        self._warned: set[str] = set()

    def _found(self, pl_module: pl.LightningModule) -> list[tuple[str, Any]]:
        if self.metrics is not None:
            return [(f"metric{i}", m) for i, m in enumerate(self.metrics)]
        return [(name, m) for name, m in pl_module.named_modules() if is_confusion_matrix(m)]

    @guarded
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        found = self._found(pl_module)
        if not found:
            return
        # torchmetrics' compute() synchronises ranks: every rank calls it, rank zero records
        fields: dict[str, float] = {}
        for name, metric in found:
            if not getattr(metric, "update_count", 1):
                continue
            try:
                fields.update(
                    confusion_fields(
                        metric.compute(), field_prefix(name), max_classes=self.max_classes
                    )
                )
            except (ValueError, RuntimeError) as exc:
                if name not in self._warned:
                    self._warned.add(name)
                    log.warning("runwatch: confusion matrix %r not recorded: %s", name, exc)
        if fields and self.enabled:
            self.session.epochs.add(trainer.current_epoch, fields)
