"""Telemetry never raises into training: hook exceptions are logged once per hook and counted.

The one exception is a refused run id (``RunIdInUseError``), raised from the first hook, before
training starts and before any point is written."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

from collector.errors import RunIdInUseError
from collector.run import ErrorLedger, ErrorSink

__all__ = ["GLOBAL_LEDGER", "ErrorLedger", "ErrorSink", "guarded"]

F = TypeVar("F", bound=Callable[..., Any])


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
