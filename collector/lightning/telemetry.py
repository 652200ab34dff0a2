"""``runwatch_telemetry(...)``: the logger and the whole callback chain in one call."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning.pytorch.callbacks import Callback

from collector.config import Settings
from collector.lightning.callbacks import (
    DEFAULT_BATCH_EVERY_N,
    DEFAULT_GRADIENT_EVERY_N,
    DEFAULT_MONITOR,
    DEFAULT_MONITOR_MODE,
    DEFAULT_SYSTEM_INTERVAL_S,
    BatchMetricsCallback,
    EpochMetricsCallback,
    GradientMonitorCallback,
    LearningRateCallback,
    MetricsFileExporter,
    RunwatchCallback,
    SessionCallback,
    StepTimerCallback,
    SystemMetricsCallback,
    TrainingEventsCallback,
)
from collector.lightning.confusion import ConfusionMatrixCallback
from collector.lightning.gradients import DEFAULT_MAX_LAYERS
from collector.lightning.logger import RunwatchLogger
from collector.lightning.session import RunSession

if TYPE_CHECKING:
    from collector.store import Store


@dataclass
class Telemetry:
    """What ``Trainer(logger=..., callbacks=...)`` needs; unpacks as ``(logger, callbacks)``."""

    session: RunSession
    logger: RunwatchLogger
    callback: RunwatchCallback
    callbacks: list[Callback] = field(default_factory=list)

    def __iter__(self) -> Iterator[Any]:
        yield self.logger
        yield self.callbacks

    @property
    def run_id(self) -> str:
        return self.session.run_id

    def trainer_kwargs(self) -> dict[str, Any]:
        return {"logger": self.logger, "callbacks": list(self.callbacks)}


def runwatch_telemetry(
    experiment: str = "default",
    *,
    settings: Settings | None = None,
    run_id: str | None = None,
    store: Store | None = None,
    source_path: str | None = None,
    hyperparams: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    prometheus: bool = True,
    batch_every_n: int = DEFAULT_BATCH_EVERY_N,
    gradient_every_n: int = DEFAULT_GRADIENT_EVERY_N,
    gradient_max_layers: int = DEFAULT_MAX_LAYERS,
    system_interval_s: float = DEFAULT_SYSTEM_INTERVAL_S,
    monitor: str = DEFAULT_MONITOR,
    monitor_mode: str = DEFAULT_MONITOR_MODE,
    export_dir: Path | str | None = None,
    export_files: bool = True,
    persist: bool = True,
    confusion_matrices: bool | Sequence[Any] = True,
) -> Telemetry:
    """A logger and one bundled callback with the whole callback chain, sharing one run session.

    Batch points follow the trainer's ``log_every_n_steps`` with Lightning's step (the logger
    writes them; see docs/design.md); ``batch_every_n`` only switches the throughput part
    (``samples_per_s``, ``batch_idx``, the output's loss) on or off. Pass 0 for
    ``batch_every_n``, ``gradient_every_n`` or ``system_interval_s`` to leave that part out; ``export_files=False`` skips the CSV/JSON export, ``persist=False`` the bulk
    epoch-metric persistence, ``prometheus=False`` the exporter; ``tags`` go on every point
    of the run (as InfluxDB tags: keep their values few, a tag per value is a series), ``confusion_matrices=False``
    the reading of the module's torchmetrics confusion matrices; a list of them records those
    instead of the module's (``collector.lightning.confusion``).
    """
    session = RunSession(
        experiment,
        settings=settings,
        run_id=run_id,
        store=store,
        source_path=source_path,
        hyperparams=hyperparams,
        tags=tags,
        prometheus=prometheus,
    )
    parts: list[SessionCallback] = [
        EpochMetricsCallback(session, monitor=monitor, mode=monitor_mode, persist=persist),
        LearningRateCallback(session),
    ]
    if batch_every_n > 0:
        parts.append(
            BatchMetricsCallback(session, every_n_batches=batch_every_n, step_timing=prometheus)
        )
    if gradient_every_n > 0:
        parts.append(
            GradientMonitorCallback(
                session, every_n_steps=gradient_every_n, max_layers=gradient_max_layers
            )
        )
    if system_interval_s > 0:
        parts.append(SystemMetricsCallback(session, interval_s=system_interval_s))
    if prometheus and batch_every_n <= 0:  # else the batch callback times the steps
        parts.append(StepTimerCallback(session))
    if confusion_matrices is True:
        parts.append(ConfusionMatrixCallback(session))
    elif confusion_matrices:
        parts.append(ConfusionMatrixCallback(session, metrics=confusion_matrices))
    if export_files:
        parts.append(
            MetricsFileExporter(session, directory=export_dir, monitor=monitor, mode=monitor_mode)
        )
    parts.append(TrainingEventsCallback(session, monitor=monitor, mode=monitor_mode))
    callback = RunwatchCallback(session, parts)
    logger = RunwatchLogger(experiment, session=session)
    return Telemetry(session=session, logger=logger, callback=callback, callbacks=[callback])
