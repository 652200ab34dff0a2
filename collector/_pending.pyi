"""Types of the compiled queue (``_pending.c``); absent where it was not built."""

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

class PendingPoints:
    entries: deque[Any]
    last_ns: int
    recorded: int
    extra: int
    closed: bool
    @property
    def flush_lines(self) -> int: ...
    def __init__(
        self,
        entries: deque[Any],
        measurements: frozenset[str],
        observed: frozenset[str],
        flush_lines: int,
        when_full: Callable[[], None],
        series_type: type[tuple[Any, ...]],
    ) -> None: ...
    def put(
        self, measurement: str, fields: Mapping[str, object], tags: Mapping[str, object] | None, /
    ) -> bool: ...
    def put_series(
        self,
        measurement: str,
        field: str,
        values: Sequence[float],
        tag: str,
        tag_values: Sequence[object],
        common: Mapping[str, float] | None,
        head: tuple[str, Mapping[str, float]] | None,
        /,
    ) -> bool: ...
    def stamp(self, count: int = 1, /) -> int: ...
    def add(self, entry: object, points: int = 1, /) -> None: ...
