"""How runwatch wraps a Flower strategy so that Flower cannot tell it from the strategy.

``run.wrap(FedAvg(...))`` returns an instance of a class generated once per wrapped class,
``FedAvg(RunwatchStrategy, FedAvg)`` (same name), whose instances share the wrapped
strategy's ``__dict__``:

- it *is* the wrapped class: ``isinstance(wrapped, FedAvg)``, Flower's own type checks (DP
  fixed clipping's accountant wants a FedAvg whose class uses ``FedAvg.aggregate_train``),
  and ``Starting FedAvg strategy`` in Flower's log;
- every attribute read and write is the wrapped strategy's (``wrapped.fraction_train = 0.5``,
  ``wrapped.current_arrays = ...``); runwatch's own state lives in a slot, outside that
  dict, so no attribute of the strategy (``strategy`` on Flower's DP wrappers) is shadowed.
  ``wrapped_strategy`` and ``runwatch_run`` name the wrapped strategy and the run;
- the generated class defines none of the strategy's methods: they are the wrapped class's
  own, ``start`` overrides included. Telemetry hooks in per instance, when one of
  :data:`HOOKED_METHODS` is looked up on the wrapped strategy: the lookup returns the
  strategy's own method, recorded. So whatever loop calls them records the rounds: Flower's
  ``Strategy.start``, a subclass's own ``start``, or a DP wrapper around the wrapped strategy.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from flwr.serverapp.strategy import Strategy

if TYPE_CHECKING:
    from collector.flower.server import FederatedRun

HOOKED_METHODS = frozenset(
    {"start", "configure_train", "aggregate_train", "configure_evaluate", "aggregate_evaluate"}
)

S = TypeVar("S", bound=Strategy)


class StrategyHooks(Protocol):
    """What records a wrapped strategy (``collector.flower.server``)."""

    strategy: Strategy
    run: FederatedRun

    def hook(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        """``method`` (the strategy's own, bound) as the wrapped strategy's ``name``."""
        ...


class RunwatchStrategy:
    """The base runwatch adds to a wrapped strategy's class (see the module doc):
    ``isinstance(s, RunwatchStrategy)`` tells a wrapped strategy."""

    __slots__ = ()
    _runwatch: StrategyHooks  # a slot of each generated class

    @property
    def wrapped_strategy(self) -> Strategy:
        """The strategy this one wraps (the same state: reads and writes are shared)."""
        hooks: StrategyHooks = object.__getattribute__(self, "_runwatch")
        return hooks.strategy

    @property
    def runwatch_run(self) -> FederatedRun:
        """The run this strategy's rounds are recorded in."""
        hooks: StrategyHooks = object.__getattribute__(self, "_runwatch")
        return hooks.run

    def __getattribute__(self, name: str) -> Any:
        attribute = super().__getattribute__(name)
        if name in HOOKED_METHODS and callable(attribute):
            hooks: StrategyHooks = object.__getattribute__(self, "_runwatch")
            return hooks.hook(name, attribute)
        return attribute


def wrap_strategy(strategy: S, hooks: StrategyHooks) -> S:
    """``strategy`` recorded by ``hooks``; raises TypeError for a strategy without a
    ``__dict__`` (all of its state in ``__slots__``): there is no state to share."""
    if not hasattr(strategy, "__dict__"):
        raise TypeError(f"{type(strategy).__name__} keeps its state in __slots__")
    wrapped = object.__new__(recorded_class(type(strategy)))
    object.__setattr__(wrapped, "__dict__", vars(strategy))
    object.__setattr__(wrapped, "_runwatch", hooks)
    return cast(S, wrapped)


@functools.cache
def recorded_class(cls: type[Strategy]) -> type[Strategy]:
    """The class of ``cls``'s wrapped strategies (one per class, so they are all alike)."""
    namespace = {
        "__slots__": ("_runwatch",),
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
    }
    made = types.new_class(
        cls.__name__, (RunwatchStrategy, cls), {}, lambda ns: ns.update(namespace)
    )
    return cast(type[Strategy], made)
