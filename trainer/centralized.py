"""The centralized reference trainer: the MLP on the bundled data (or a user's module and data
module, by import path), with runwatch telemetry, checkpointing and early stopping."""

from __future__ import annotations

import errno
import importlib
import logging
import math
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from collector.config import Settings
from collector.errors import RunwatchError
from collector.lightning import Telemetry, runwatch_telemetry
from trainer.data import BreastCancerDataModule
from trainer.defaults import DEFAULT_EXPERIMENT, DEFAULT_SEED
from trainer.model import MLPClassifier

log = logging.getLogger("trainer")


@dataclass(frozen=True)
class CentralizedConfig:
    epochs: int = 10
    experiment: str = DEFAULT_EXPERIMENT
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = DEFAULT_SEED
    hidden: int = 64
    model: str | None = None
    datamodule: str | None = None
    patience: int = 5
    test: bool = True
    progress_bar: bool = False
    accelerator: str = "auto"
    log_every_n_steps: int = 10
    batch_every_n: int = 10
    gradient_every_n: int = 20


@dataclass
class CentralizedResult:
    run_id: str
    status: str
    epochs_run: int
    global_step: int
    final_metrics: dict[str, float]
    test_metrics: dict[str, float]
    best_checkpoint: str | None
    exported_files: list[Path] = field(default_factory=list)
    telemetry_errors: int = 0
    prometheus_port: int | None = None
    """The port /metrics was served on during training (None: disabled or port busy)."""


def load_class(path: str, base: type, what: str) -> type:
    """``package.module:ClassName`` -> the class, which must subclass ``base``."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise RunwatchError(f"{what} must look like 'package.module:ClassName', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise RunwatchError(f"cannot import {what} module {module_name!r}: {exc}") from None
    found = module
    for part in attribute.split("."):
        found = getattr(found, part, None)  # type: ignore[assignment]
        if found is None:
            raise RunwatchError(f"{what} {path!r}: module {module_name!r} has no {attribute!r}")
    if not isinstance(found, type) or not issubclass(found, base):
        raise RunwatchError(f"{what} {path!r} is not a {base.__name__} subclass")
    return found


def build_datamodule(config: CentralizedConfig) -> pl.LightningDataModule:
    if config.datamodule is None:
        return BreastCancerDataModule(batch_size=config.batch_size, seed=config.seed)
    cls = load_class(config.datamodule, pl.LightningDataModule, "--datamodule")
    datamodule: pl.LightningDataModule = _instantiate(cls, "--datamodule")
    return datamodule


def build_model(
    config: CentralizedConfig, datamodule: pl.LightningDataModule
) -> pl.LightningModule:
    if config.model is None:
        return MLPClassifier(
            num_features=_num_features(datamodule), hidden=config.hidden, lr=config.lr
        )
    cls = load_class(config.model, pl.LightningModule, "--model")
    model: pl.LightningModule = _instantiate(cls, "--model")
    return model


def _instantiate(cls: type, what: str) -> Any:
    try:
        return cls()
    except Exception as exc:
        raise RunwatchError(f"{what} {cls.__qualname__}() failed: {exc}") from None


def _num_features(datamodule: pl.LightningDataModule) -> int:
    known = getattr(datamodule, "num_features", None)
    if isinstance(known, int):
        return known
    datamodule.setup("fit")
    features = next(iter(datamodule.train_dataloader()))[0]
    return int(features.shape[-1])


@contextmanager
def quiet_lightning(enabled: bool = True) -> Iterator[None]:
    """Lightning's info banners and advisory warnings off for the CLI."""
    if not enabled:
        yield
        return
    names = ("lightning", "lightning.pytorch", "lightning.fabric")
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"lightning(\..*)?")
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def run_centralized(
    config: CentralizedConfig, settings: Settings, *, quiet: bool = True
) -> CentralizedResult:
    """Train (and test) once; telemetry goes wherever ``settings`` says."""
    datamodule = build_datamodule(config)
    with quiet_lightning(quiet):
        pl.seed_everything(config.seed, workers=True, verbose=False)
        model = build_model(config, datamodule)
        telemetry = runwatch_telemetry(
            config.experiment,
            settings=settings,
            source_path=config.datamodule or "sklearn.datasets.load_breast_cancer",
            batch_every_n=config.batch_every_n,
            gradient_every_n=config.gradient_every_n,
        )
        trainer = _trainer(config, settings, telemetry)
        status = "completed"
        try:
            trainer.fit(model, datamodule=datamodule)
            test_metrics = _test(trainer, model, datamodule) if config.test else {}
        except Exception:
            status = "failed"
            raise
        finally:
            telemetry.session.finish(status)
    return _result(telemetry, trainer, status, test_metrics)


def _monitoring_callbacks(
    config: CentralizedConfig, settings: Settings, run_id: str
) -> list[pl.Callback]:
    """Best-recall checkpoint and early stopping on val_loss for the built-in model; a user's
    module may log other names, so it gets the last checkpoint only."""
    dirpath = settings.home / "checkpoints" / run_id
    if config.model is not None:
        return [DiskTolerantCheckpoint(dirpath=dirpath, filename="last-{epoch}")]
    return [
        DiskTolerantCheckpoint(
            dirpath=dirpath, monitor="val_recall", mode="max", save_top_k=1, filename="best-{epoch}"
        ),
        EarlyStopping(monitor="val_loss", mode="min", patience=config.patience),
    ]


DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM})
"""The disk refused to write (full, read-only, over quota, not writable)."""


class DiskTolerantCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint that never ends a training: the first checkpoint the disk refuses is
    removed, one warning says so, and the run trains on without further checkpoints (keeping
    the last one saved, if any)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.disk_error: OSError | None = None

    def _should_skip_saving_checkpoint(self, trainer: pl.Trainer) -> bool:
        return self.disk_error is not None or super()._should_skip_saving_checkpoint(trainer)

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        if self.disk_error is not None:
            return
        try:
            super()._save_checkpoint(trainer, filepath)
        except OSError as exc:
            if exc.errno not in DISK_ERRNOS:
                raise
            self._give_up(filepath, exc)

    def _remove_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        if self.disk_error is None:  # after a refused save, the older one is the only one left
            super()._remove_checkpoint(trainer, filepath)

    def _give_up(self, filepath: str, exc: OSError) -> None:
        self.disk_error = exc
        with suppress(OSError):
            Path(filepath).unlink(missing_ok=True)  # a torn, partly written file
        self.best_k_models.pop(filepath, None)
        saved = self._last_checkpoint_saved
        self.best_model_path = saved if saved and Path(saved).exists() else ""
        log.warning(
            "runwatch: checkpoint not saved (%s: %s); training goes on without checkpoints",
            exc.strerror or exc,
            Path(filepath).parent,
        )


def _trainer(config: CentralizedConfig, settings: Settings, telemetry: Telemetry) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=config.epochs,
        accelerator=config.accelerator,
        devices=1,
        logger=telemetry.logger,
        callbacks=[
            *telemetry.callbacks,
            *_monitoring_callbacks(config, settings, telemetry.run_id),
        ],
        enable_progress_bar=config.progress_bar,
        enable_model_summary=False,
        log_every_n_steps=config.log_every_n_steps,
        default_root_dir=settings.home,
        deterministic=True,
    )


def _test(
    trainer: pl.Trainer, model: pl.LightningModule, datamodule: pl.LightningDataModule
) -> dict[str, float]:
    if not _overrides_test(model, datamodule):
        return {}
    results = trainer.test(model, datamodule=datamodule, verbose=False)
    return _floats(results[0]) if results else {}


def _overrides_test(model: pl.LightningModule, datamodule: pl.LightningDataModule) -> bool:
    has_step = type(model).test_step is not pl.LightningModule.test_step
    has_data = type(datamodule).test_dataloader is not pl.LightningDataModule.test_dataloader
    return has_step and has_data


def _floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    values: dict[str, float] = {}
    for name, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            values[name] = float(value.item())
        elif isinstance(value, int | float):
            values[name] = float(value)
    return values


def _result(
    telemetry: Telemetry, trainer: pl.Trainer, status: str, test_metrics: dict[str, float]
) -> CentralizedResult:
    history = telemetry.session.epochs.history
    final = {k: v for k, v in history[-1].items() if k != "epoch"} if history else {}
    final = {k: v for k, v in final.items() if not k.startswith("test_")}
    checkpoint = trainer.checkpoint_callback
    best_path = getattr(checkpoint, "best_model_path", "") or None
    from collector.lightning import MetricsFileExporter

    exporter = telemetry.callback.part(MetricsFileExporter)
    written = list(exporter.written) if isinstance(exporter, MetricsFileExporter) else []
    live = telemetry.session.exporter
    exporter_port = live.port if live is not None else None
    return CentralizedResult(
        run_id=telemetry.run_id,
        status=status,
        epochs_run=len(history),
        global_step=trainer.global_step,
        final_metrics={k: v for k, v in final.items() if math.isfinite(v)},
        test_metrics=test_metrics,
        best_checkpoint=best_path,
        exported_files=written,
        telemetry_errors=telemetry.session.error_ledger.total,
        prometheus_port=exporter_port,
    )
