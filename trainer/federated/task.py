"""The model and what is done with it: local training, local and central evaluation.

The model is the centralized trainer's ``MLPClassifier``; weights travel between server
and clients as a Flower ``ArrayRecord`` of its state dict.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from flwr.app import ArrayRecord
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader

from trainer.federated.config import FederatedConfig
from trainer.federated.data import ClientData
from trainer.model import MLPClassifier

_QUIET_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning")

Loader = DataLoader[tuple[torch.Tensor, ...]]


def quiet_lightning() -> None:
    """Keep Lightning's per-Trainer banners and small-dataset hints out of Flower's logs."""
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")


def build_model(num_features: int, config: FederatedConfig) -> MLPClassifier:
    return MLPClassifier(num_features=num_features, hidden=config.hidden, lr=config.lr)


def load_arrays(model: MLPClassifier, arrays: ArrayRecord) -> None:
    model.load_state_dict(arrays.to_torch_state_dict())


def model_arrays(model: MLPClassifier) -> ArrayRecord:
    return ArrayRecord(model.state_dict())


def _trainer(
    *, max_epochs: int = 1, logger: Logger | None = None, callbacks: Sequence[Callback] = ()
) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        logger=logger if logger is not None else False,
        callbacks=list(callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        deterministic=False,
    )


def train_locally(
    model: MLPClassifier,
    data: ClientData,
    config: FederatedConfig,
    *,
    seed: int,
    logger: Logger | None = None,
    callbacks: Sequence[Callback] = (),
) -> dict[str, float]:
    """Fit on the client's share for ``local_epochs``; the last epoch's logged metrics."""
    pl.seed_everything(seed, verbose=False)
    trainer = _trainer(max_epochs=config.local_epochs, logger=logger, callbacks=callbacks)
    trainer.fit(
        model,
        train_dataloaders=data.train_loader(config.batch_size, seed),
        val_dataloaders=data.val_loader(config.batch_size),
    )
    return _floats(trainer.callback_metrics)


def evaluate(model: MLPClassifier, loader: Loader, stage: str = "val") -> dict[str, float]:
    """``val_*`` (``stage="val"``) or ``test_*`` metrics of the model on ``loader``."""
    trainer = _trainer()
    if stage == "test":
        results = trainer.test(model, dataloaders=loader, verbose=False)
    else:
        results = trainer.validate(model, dataloaders=loader, verbose=False)
    return _floats(results[0] if results else {})


def _floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, value in metrics.items():
        try:
            out[str(name)] = float(value)
        except (TypeError, ValueError):
            continue
    return out
