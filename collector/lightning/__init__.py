"""Lightning adapter: ``RunwatchLogger``, the callback chain, and one-call setup.

    from collector.lightning import runwatch_telemetry

    telemetry = runwatch_telemetry("baseline")
    trainer = Trainer(logger=telemetry.logger, callbacks=telemetry.callbacks)
    # or: logger, callbacks = runwatch_telemetry("baseline")

This module imports lightning and torch; the collector core does not.
"""

from collector.lightning.callbacks import (
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
from collector.lightning.confusion import ConfusionMatrixCallback, confusion_fields
from collector.lightning.gradients import GradientNorms, gradient_norms
from collector.lightning.logger import RunwatchLogger
from collector.lightning.session import EpochAccumulator, RunSession
from collector.lightning.telemetry import Telemetry, runwatch_telemetry

__all__ = [
    "BatchMetricsCallback",
    "ConfusionMatrixCallback",
    "EpochAccumulator",
    "EpochMetricsCallback",
    "GradientMonitorCallback",
    "GradientNorms",
    "LearningRateCallback",
    "MetricsFileExporter",
    "RunSession",
    "RunwatchCallback",
    "RunwatchLogger",
    "SessionCallback",
    "StepTimerCallback",
    "SystemMetricsCallback",
    "Telemetry",
    "TrainingEventsCallback",
    "confusion_fields",
    "gradient_norms",
    "runwatch_telemetry",
]
