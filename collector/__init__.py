"""runwatch collector: the telemetry library (points, spool, shipper, Prometheus, run store).

The core never imports torch, lightning or flwr; adapters live in ``collector.lightning`` and
``collector.flower``.
"""

from collector.config import Settings, load_settings
from collector.errors import ConfigError, RunwatchError, UnknownRunError
from collector.ids import new_run_id
from collector.recorder import PointObserver, Recorder, RecorderStats, RecorderTuning
from collector.run import Run

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "PointObserver",
    "Recorder",
    "RecorderStats",
    "RecorderTuning",
    "Run",
    "RunwatchError",
    "Settings",
    "UnknownRunError",
    "__version__",
    "load_settings",
    "new_run_id",
]
