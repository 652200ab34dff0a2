"""runwatch collector: the telemetry library (points, spool, shipper, Prometheus, run store).

The core never imports torch, lightning or flwr; adapters live in ``collector.lightning`` and
``collector.flower``.
"""

from typing import TYPE_CHECKING

from collector._lazy import lazy_attributes as _lazy_attributes
from collector.config import Settings, load_settings
from collector.errors import ConfigError, RunwatchError, UnknownRunError
from collector.ids import new_run_id

if TYPE_CHECKING:
    from collector.recorder import PointObserver, Recorder, RecorderStats, RecorderTuning
    from collector.run import Run

# Imported when first used: the recorder pulls in the shipper and HTTP client, which the
# command line (`runwatch --help`, `runs list`) never needs.
_LAZY = {
    "PointObserver": "collector.recorder",
    "Recorder": "collector.recorder",
    "RecorderStats": "collector.recorder",
    "RecorderTuning": "collector.recorder",
    "Run": "collector.run",
}

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


__getattr__ = _lazy_attributes(__name__, _LAZY)
