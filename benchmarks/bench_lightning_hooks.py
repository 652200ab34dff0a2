"""What Lightning charges a callback for a hook it does not implement, and what the bundle's
unset hooks save of it.

Lightning's hook loop (``_call_callback_hooks``) looks up every hook on every callback and,
where the attribute is callable, calls it inside a profiler context, whether the callback
overrides the hook or not. ``RunwatchCallback`` answers None to that loop for a per-batch hook
none of its parts implements, where the loop is known to skip it (``skipping_hook_loop``).
This times the loop for one such hook (``on_before_backward``; a training step fires three:
``on_before_backward``, ``on_after_backward``, ``on_before_zero_grad``): with no callback, with
a plain ``Callback``, with the bundle, and with the bundle where the loop is not vouched for
(every hook dispatched). Hot loop, interleaved repeats, medians: inside a training step, with
cold caches, each call costs more.

    python benchmarks/bench_lightning_hooks.py [--repeats 15] [--calls 100000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.trainer.call import _call_callback_hooks

from collector.lightning import callbacks

HOOK = "on_before_backward"
UNUSED_HOOKS_PER_STEP = 3


def trainer_with(*hooked: pl.Callback) -> Any:
    """What the hook loop reads of a trainer."""
    return SimpleNamespace(
        lightning_module=None, callbacks=list(hooked), profiler=PassThroughProfiler()
    )


def empty_bundle() -> callbacks.RunwatchCallback:
    """A bundle with no parts: every per-batch hook unset (no session needed to time the loop)."""
    bundle = callbacks.RunwatchCallback.__new__(callbacks.RunwatchCallback)
    bundle.parts = []
    return bundle


def loop_call(trainer: Any) -> Callable[[], None]:
    return lambda: _call_callback_hooks(trainer, HOOK, None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--calls", type=int, default=100_000)
    args = parser.parse_args(argv)
    if callbacks.skipping_hook_loop() is None:
        print(f"Lightning {pl.__version__}: its hook loop is not vouched for; nothing to time")
        return 0
    vouched = callbacks.skipping_hook_loop
    bundle = trainer_with(empty_bundle())
    cases: dict[str, tuple[Callable[[], None], bool]] = {
        "no callback": (loop_call(trainer_with()), True),
        "a plain Callback": (loop_call(trainer_with(pl.Callback())), True),
        "the bundle, hook unset": (loop_call(bundle), True),
        "the bundle, every hook dispatched": (loop_call(bundle), False),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, (call, skip) in cases.items():
            callbacks.skipping_hook_loop = vouched if skip else (lambda: None)  # type: ignore[assignment]
            try:
                seconds = timeit.timeit(call, number=args.calls)
            finally:
                callbacks.skipping_hook_loop = vouched
            times[name].append(seconds / args.calls * 1e6)
    print(
        f"Lightning {pl.__version__}, hook loop for {HOOK}, {args.repeats} x {args.calls:,} calls"
    )
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, values in times.items():
        print(f"  {name:36s} {medians[name]:.2f} µs (range {min(values):.2f}-{max(values):.2f})")
    saved = medians["the bundle, every hook dispatched"] - medians["the bundle, hook unset"]
    print(
        f"  saved per unset hook: {saved:.2f} µs; per training step "
        f"({UNUSED_HOOKS_PER_STEP} unset hooks): {saved * UNUSED_HOOKS_PER_STEP:.1f} µs, hot"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
