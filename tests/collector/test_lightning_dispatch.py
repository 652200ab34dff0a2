"""The bundle's hook dispatch (collector.lightning._guard.dispatcher): the compiled one and its
Python twin make the same calls with the same outcomes."""

from __future__ import annotations

import gc
import os
import sys
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

from collector.errors import RunIdInUseError
from collector.lightning import _guard
from collector.lightning._guard import dispatch_calls, dispatcher, guarded, python_dispatcher
from collector.run import ErrorLedger

Calls = list[tuple[Any, Callable[..., Any], str | None]]


def _compiled(calls: Calls) -> Callable[..., None]:
    if _guard._Dispatch is None:
        if os.environ.get("CI") == "true":
            pytest.fail("collector.lightning._dispatch is not built (pip install -e . builds it)")
        pytest.skip("collector.lightning._dispatch is not built (no C compiler at install)")
    return _guard._Dispatch(tuple(calls), _guard.report, RunIdInUseError)


IMPLEMENTATIONS = {"compiled": _compiled, "python": python_dispatcher}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def make_dispatch(request: pytest.FixtureRequest) -> Callable[[list[Any]], Callable[..., None]]:
    """``dispatcher(hooks)``, built by the implementation under test."""
    implementation = IMPLEMENTATIONS[request.param]

    def build(hooks: list[Any]) -> Callable[..., None]:
        return implementation(dispatch_calls(hooks))

    return build


class Part:
    def __init__(self, name: str, seen: list[tuple[Any, ...]]) -> None:
        self.name = name
        self.seen = seen
        self.error_ledger = ErrorLedger()

    @guarded
    def hook(self, *args: Any, **kwargs: Any) -> str:
        self.seen.append((self.name, args, kwargs))
        return "ignored"

    @guarded
    def broken(self, *args: Any, **kwargs: Any) -> None:
        self.seen.append((self.name, "broken"))
        raise ValueError(f"bug in {self.name}")

    @guarded
    def refused(self, *args: Any, **kwargs: Any) -> None:
        raise RunIdInUseError("taken", "the store")

    @guarded
    def interrupted(self, *args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt


def test_the_library_dispatcher_is_the_compiled_one_where_it_is_built() -> None:
    dispatch = dispatcher([Part("a", []).hook])
    if _guard._Dispatch is not None:
        assert isinstance(dispatch, _guard._Dispatch)
    elif os.environ.get("CI") == "true":
        pytest.fail("collector.lightning._dispatch is not built (pip install -e . builds it)")


@pytest.mark.parametrize("arguments", [0, 3, 12])  # 12: more than the compiled call's stack
def test_parts_get_the_hook_s_arguments_in_order(
    make_dispatch: Callable[[list[Any]], Callable[..., None]], arguments: int
) -> None:
    seen: list[tuple[Any, ...]] = []
    first, second = Part("first", seen), Part("second", seen)
    plain: list[tuple[Any, ...]] = []

    def unguarded(*args: Any, **kwargs: Any) -> None:
        plain.append((args, kwargs))

    dispatch = make_dispatch([first.hook, unguarded, second.hook])
    args = tuple(object() for _ in range(arguments))
    assert dispatch(*args, stage="fit", index=3) is None
    kwargs = {"stage": "fit", "index": 3}
    assert seen == [("first", args, kwargs), ("second", args, kwargs)]
    assert plain == [(args, kwargs)]


def test_a_part_s_exception_is_reported_with_its_traceback_and_the_next_parts_run(
    make_dispatch: Callable[[list[Any]], Callable[..., None]], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[Any, ...]] = []
    broken, after = Part("broken", seen), Part("after", seen)
    reported: list[tuple[Any, str, BaseException]] = []
    real_report = _guard.report

    def keep(owner: Any, where: str, exc: Exception) -> None:
        reported.append((owner, where, exc))
        real_report(owner, where, exc)

    monkeypatch.setattr(_guard, "report", keep)
    dispatch = make_dispatch([broken.broken, after.hook])
    for _ in range(2):
        dispatch("trainer")
    assert seen == [("broken", "broken"), ("after", ("trainer",), {})] * 2
    assert broken.error_ledger.counts == {Part.broken.__qualname__: 2}
    assert len(reported) == 2
    owner, where, exc = reported[0]
    assert owner is broken and where == Part.broken.__qualname__
    assert isinstance(exc, ValueError) and str(exc) == "bug in broken"
    assert exc.__traceback__ is not None


def test_a_refused_run_id_an_interrupt_and_an_unguarded_error_go_to_the_caller(
    make_dispatch: Callable[[list[Any]], Callable[..., None]],
) -> None:
    seen: list[tuple[Any, ...]] = []
    part = Part("p", seen)

    def unguarded() -> None:
        raise KeyError("not telemetry's to swallow")

    with pytest.raises(RunIdInUseError):
        make_dispatch([part.broken, part.refused, part.hook])()
    with pytest.raises(KeyboardInterrupt):
        make_dispatch([part.interrupted, part.hook])()
    with pytest.raises(KeyError):
        make_dispatch([unguarded, part.hook])()
    assert seen == [("p", "broken")]  # nothing after what went up
    assert part.error_ledger.total == 1


def test_an_error_in_the_report_goes_to_the_caller(
    make_dispatch: Callable[[list[Any]], Callable[..., None]], monkeypatch: pytest.MonkeyPatch
) -> None:
    part = Part("p", [])

    class LedgerBroken(ErrorLedger):
        def report(self, *args: Any) -> None:
            raise RuntimeError("ledger")

    part.error_ledger = LedgerBroken()
    with pytest.raises(RuntimeError, match="ledger"):
        make_dispatch([part.broken])()


def test_the_compiled_dispatch_holds_no_reference_it_should_not() -> None:
    """No reference leaks over many calls, failing ones included, and a dispatch that drops
    the last reference to its own parts mid-call survives it."""
    if _guard._Dispatch is None:
        pytest.skip("collector.lightning._dispatch is not built")
    part = Part("p", [])
    part.seen = _Discard()
    argument = object()
    dispatch = dispatcher([part.hook, part.broken])
    assert isinstance(dispatch, _guard._Dispatch)
    for _ in range(1000):
        dispatch(argument, key=argument)
    before = sys.getrefcount(argument), sys.getrefcount(part)
    gc.collect()
    tracemalloc.start()
    try:
        for _ in range(20_000):
            dispatch(argument, key=argument)
        gc.collect()
        grown, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (sys.getrefcount(argument), sys.getrefcount(part)) == before
    assert grown < 64 * 1024, grown  # 20,000 leaked exceptions would be megabytes
    assert part.error_ledger.total == 21_000

    holder: dict[str, Any] = {}

    def drop_myself() -> None:
        holder.clear()
        gc.collect()

    holder["dispatch"] = _compiled([(None, drop_myself, None), (None, lambda: None, None)])
    holder["dispatch"]()
    assert holder == {}


class _Discard(list):  # type: ignore[type-arg]
    def append(self, item: Any) -> None:
        pass
