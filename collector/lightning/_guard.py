"""Telemetry never raises into training: hook exceptions are logged once per hook and counted.

The one exception is a refused run id (``RunIdInUseError``), raised from the first hook, before
training starts and before any point is written."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast

from collector.errors import RunIdInUseError

log = logging.getLogger("collector.lightning")

F = TypeVar("F", bound=Callable[..., Any])


class ErrorSink(Protocol):
    def telemetry_error(self) -> None: ...


class ErrorLedger:
    """Counts caught exceptions per place; the first one of each place is logged with its trace."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def report(self, where: str, exc: BaseException, sink: ErrorSink | None = None) -> None:
        with self._lock:
            self.counts[where] += 1
            first = self.counts[where] == 1
        if first:
            log.warning(
                "runwatch: telemetry error in %s (training goes on; later ones are only counted)",
                where,
                exc_info=exc,
            )
        if sink is not None:
            with contextlib.suppress(Exception):  # the counter itself must not raise either
                sink.telemetry_error()

    @property
    def total(self) -> int:
        return sum(self.counts.values())


#: Errors caught where no run session is known yet (or its exporter is gone).
GLOBAL_LEDGER = ErrorLedger()


def guarded(method: F) -> F:
    """Wrap a hook method: an exception is reported to ``self.error_ledger`` and swallowed.

    The object may provide ``error_ledger`` (an :class:`ErrorLedger`) and ``error_sink``
    (something with ``telemetry_error()``, e.g. the Prometheus exporter).
    """
    where = method.__qualname__

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except RunIdInUseError:
            raise  # refused before anything was written: the caller must see it
        except Exception as exc:
            ledger = getattr(self, "error_ledger", None) or GLOBAL_LEDGER
            ledger.report(where, exc, getattr(self, "error_sink", None))
            return None

    return cast(F, wrapper)
