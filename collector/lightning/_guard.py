"""Telemetry never raises into training: hook exceptions are logged once per hook and counted.

The one exception is a refused run id (``RunIdInUseError``), raised from the first hook, before
training starts and before any point is written."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

from collector.errors import RunIdInUseError
from collector.run import ErrorLedger, ErrorSink

try:
    from collector.lightning._dispatch import Dispatch as _Dispatch
except ImportError:  # installed without a C compiler: the dispatch is Python's
    _Dispatch = None  # type: ignore[assignment,misc]

__all__ = ["GLOBAL_LEDGER", "ErrorLedger", "ErrorSink", "dispatcher", "guarded", "report"]

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
            report(self, where, exc)
            return None

    wrapper._guarded = (method, where)  # type: ignore[attr-defined]
    return cast(F, wrapper)


def report(owner: Any, where: str, exc: Exception) -> None:
    """What ``guarded`` does with an exception ``owner``'s hook ``where`` raised."""
    ledger = getattr(owner, "error_ledger", None) or GLOBAL_LEDGER
    ledger.report(where, exc, getattr(owner, "error_sink", None))


def dispatcher(hooks: list[Callable[..., Any]]) -> Callable[..., None]:
    """One function calling ``hooks`` in order, each as it would be called alone. Bound
    ``guarded`` methods are guarded here instead: a hook that runs every training step then
    pays one Python call per part, not two (a call costs ~1 µs with the cold caches of a
    training step). Where the compiled module was built, the dispatch itself is C
    (``_dispatch.Dispatch``): no Python frame of its own either."""
    calls = dispatch_calls(hooks)
    if _Dispatch is not None:
        return _Dispatch(tuple(calls), report, RunIdInUseError)
    return python_dispatcher(calls)


def dispatch_calls(
    hooks: list[Callable[..., Any]],
) -> list[tuple[Any, Callable[..., Any], str | None]]:
    """(owner, inner function, where) of each bound ``guarded`` method, (None, hook, None) of
    anything else: what a dispatcher calls."""
    calls: list[tuple[Any, Callable[..., Any], str | None]] = []
    for hook in hooks:
        inner = getattr(getattr(hook, "__func__", None), "_guarded", None)
        owner = getattr(hook, "__self__", None)
        if inner is None or owner is None:
            calls.append((None, hook, None))
        else:
            calls.append((owner, inner[0], inner[1]))
    return calls


def python_dispatcher(
    calls: list[tuple[Any, Callable[..., Any], str | None]],
) -> Callable[..., None]:
    """``dispatcher``'s calls made in Python: where the compiled module is not built."""

    def dispatch(*args: Any, **kwargs: Any) -> None:
        for owner, function, where in calls:
            if owner is None:
                function(*args, **kwargs)
                continue
            try:
                function(owner, *args, **kwargs)
            except RunIdInUseError:
                raise
            except Exception as exc:
                report(owner, where or "", exc)

    return dispatch
