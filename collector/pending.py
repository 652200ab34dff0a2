"""The recorder's queue of points waiting for the flusher: what every ``record()`` call reads
and writes (the queue, the last timestamp, the counts), in one object.

Where runwatch's compiled module was built (``collector/_pending.c``), ``PendingPoints`` is
that module's type, which also queues ``record()``'s and ``record_series()``' common cases in C
(``put``, ``put_series``): inside a training step each Python line of those calls touches
memory the step has evicted from the caches, and a call costs several microseconds. Here is
the same type in Python for installs without a C compiler: its ``put`` and ``put_series``
queue nothing, and the recorder's Python path records every point.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

__all__ = ["PendingPoints", "compiled"]


class _PythonPendingPoints:
    """``collector._pending.PendingPoints`` without its compiled calls."""

    def __init__(
        self,
        entries: deque[Any],
        measurements: frozenset[str],
        observed: frozenset[str],
        flush_lines: int,
        when_full: Callable[[], None],
        series_type: type[tuple[Any, ...]],
    ) -> None:
        self.entries = entries
        self.flush_lines = flush_lines
        self._when_full = when_full
        self.last_ns = 0
        self.recorded = 0
        self.extra = 0
        """Points queued beyond one per entry (a series entry holds several)."""
        self.closed = False

    def put(
        self,
        measurement: str,
        fields: Mapping[str, object],
        tags: Mapping[str, object] | None,
    ) -> bool:
        return False

    def put_series(
        self,
        measurement: str,
        field: str,
        values: Sequence[float],
        tag: str,
        tag_values: Sequence[object],
        common: Mapping[str, float] | None,
        head: tuple[str, Mapping[str, float]] | None,
    ) -> bool:
        return False

    def stamp(self, count: int = 1) -> int:
        """The first of ``count`` strictly increasing timestamps (ns since the epoch): two
        points of one series never share one (InfluxDB would keep only the last)."""
        if count < 1:
            raise ValueError("stamp() of fewer than one point")
        first = time.time_ns()
        if first <= self.last_ns:
            first = self.last_ns + 1
        self.last_ns = first + count - 1
        return first

    def add(self, entry: object, points: int = 1) -> None:
        """Queue an entry holding ``points`` points; wake the flusher once enough wait."""
        entries = self.entries
        entries.append(entry)
        self.recorded += points
        self.extra += points - 1
        if len(entries) + self.extra >= self.flush_lines:
            self._when_full()


if TYPE_CHECKING:  # the compiled type's stub (_pending.pyi) is the interface
    from collector._pending import PendingPoints
else:
    try:
        from collector._pending import PendingPoints
    except ImportError:  # installed without a C compiler
        PendingPoints = _PythonPendingPoints

compiled = PendingPoints.__module__ == "collector._pending"
"""Whether ``put`` and ``put_series`` queue points (the compiled module is built)."""
