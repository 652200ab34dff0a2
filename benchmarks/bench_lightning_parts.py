"""Where runwatch's code on the training thread goes, part by part, inside training steps.

bench_lightning.py times runwatch's hooks together: its "code on the training thread" figure,
which issue 15 wants at 60 µs or less per step at every-step logging. This breaks that figure
down on the same MLP and the same every-step logging: each part of the bundle (the callbacks
``RunwatchCallback`` dispatches to) per hook, the logger's methods, and inside them the
compiled gradient norms and the recorder's calls. Each is timed where it runs, inside a fit,
with the caches a training step leaves: there every first touch of a code path or an object
costs microseconds, and a hot loop of the same calls reads several times less.

Beside runwatch, the floor of the same points: bench_lightning's ``MinimalTelemetry`` and its
list-appending logger (the compiled norms and their summary, each step's values appended to a
list; no checks, no queue, no lines), timed the same way. The floor shows what any telemetry
of these points written in Python pays; the lines above it, what runwatch adds.

Every timed call adds two clock reads (~0.2 µs) to its line and to the line it runs inside, so
the total here reads a few µs above bench_lightning's figure, which times the hooks alone.
Medians over ``--runs`` fits of each configuration, taking turns (range in brackets).

    python benchmarks/bench_lightning_parts.py [--runs 5] [--steps 400]
"""

from __future__ import annotations

import argparse
import functools
import logging
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_lightning as bench
import torch

from collector import recorder as recorder_module
from collector.lightning import callbacks as callbacks_module
from collector.lightning import gradients
from collector.lightning import logger as logger_module

STEP_HOOKS = (
    "on_train_batch_start",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_train_batch_end",
)
INSIDE = (
    "gradient norms (compiled)",
    "norms and their points, queued (compiled)",
    "Recorder.record",
    "Recorder.record_series",
)
"""Timed inside the hooks: their time is part of a hook's line."""


class Timings:
    """Seconds per name, counted while ``active`` (the timed steps of one fit)."""

    def __init__(self) -> None:
        self.active = False
        self.seconds: dict[str, float] = defaultdict(float)


CURRENT = Timings()
"""The fit under way's timings: the patched methods below report to it."""


def _reporting(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        timings = CURRENT
        if not timings.active:
            return function(*args, **kwargs)
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            timings.seconds[name] += time.perf_counter() - started

    return timed


def _timed_method(owner: Any, attribute: str, name: str) -> Any:
    """``owner.attribute`` timed under ``name``; a ``guarded`` hook stays guarded (its
    dispatcher unwraps it to the timed function)."""
    original = vars(owner)[attribute]
    inner = getattr(original, "_guarded", None)
    if inner is None:
        return _reporting(name, original)
    return callbacks_module.guarded(_reporting(name, inner[0]))


def _session_parts() -> Iterator[type]:
    pending = [callbacks_module.SessionCallback]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        yield cls


@contextmanager
def timed_code() -> Iterator[None]:
    """The per-step methods of runwatch's parts, its logger, the norms, the recorder and the
    floor's callback and logger, timed into ``CURRENT`` (restored afterwards)."""
    targets: list[tuple[Any, str, str]] = []
    for part in _session_parts():
        for hook in STEP_HOOKS:
            if hook in vars(part):
                targets.append((part, hook, f"{part.__name__}.{hook}"))
    targets += [
        (logger_module.RunwatchLogger, "log_metrics", "RunwatchLogger.log_metrics"),
        (logger_module.RunwatchLogger, "save", "RunwatchLogger.save"),
        (gradients.ParameterNorms, "values", INSIDE[0]),
        (gradients, "_queue_norms", INSIDE[1]),  # bound per fit by ParameterNorms.point_queue
        (recorder_module.Recorder, "record", INSIDE[2]),
        (recorder_module.Recorder, "record_series", INSIDE[3]),
        (
            bench.MinimalTelemetry,
            "on_before_optimizer_step",
            "floor: optimizer step (norms, summary, append)",
        ),
        (bench.MinimalTelemetry, "on_train_batch_end", "floor: batch end, append"),
        (bench.KeepingLogger, "log_metrics", "floor: log_metrics, append"),
    ]
    targets = [target for target in targets if vars(target[0])[target[1]] is not None]
    saved = [(owner, attribute, vars(owner)[attribute]) for owner, attribute, _ in targets]
    try:
        for owner, attribute, name in targets:
            setattr(owner, attribute, _timed_method(owner, attribute, name))
        yield
    finally:
        for owner, attribute, original in saved:
            setattr(owner, attribute, original)


RUNWATCH = "runwatch, gradient norms every step"
CONFIGS: dict[str, bench.Factory] = {
    RUNWATCH: bench.runwatch(1),
    "runwatch, no gradient norms": bench.runwatch(1, gradients=False),
    "floor, gradient norms every step": bench.minimal_telemetry(gradients=True),
    "floor, no gradient norms": bench.minimal_telemetry(gradients=False),
}


def per_step(build: bench.Factory, steps: int, workdir: Path) -> dict[str, float]:
    """Seconds per timed step in each timed method during one every-step fit."""
    global CURRENT
    CURRENT = Timings()

    def windowed(workdir: Path, every: int) -> tuple[Any, list[Any]]:
        logger, callbacks = build(workdir, every)
        return logger, [bench.SelfTimeWindow(CURRENT), *callbacks]

    bench.run_once(windowed, 1, steps, workdir)
    timed_steps = steps - bench.WARMUP_STEPS
    return {name: seconds / timed_steps for name, seconds in CURRENT.seconds.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)

    figures: dict[str, dict[str, list[float]]] = {c: defaultdict(list) for c in CONFIGS}
    with tempfile.TemporaryDirectory(prefix="bench-parts-") as tmp, timed_code():
        workdir = Path(tmp)
        bench.run_once(bench.bare, 1, args.steps, workdir)  # warm caches and imports
        for _ in range(args.runs):
            for config, build in CONFIGS.items():
                for name, seconds in per_step(build, args.steps, workdir).items():
                    figures[config][name].append(seconds)

    print(
        f"µs per training step inside each method, every-step logging; median of {args.runs} "
        f"fits of {args.steps - bench.WARMUP_STEPS} timed steps (range)"
    )
    for config in CONFIGS:
        print(f"\n{config}")
        timed = figures[config]
        top = [name for name in timed if name not in INSIDE]
        top.sort(key=lambda name: -statistics.median(timed[name]))
        for name in top + [name for name in INSIDE if name in timed]:
            values = timed[name]
            label = f"inside them: {name}" if name in INSIDE else name
            print(
                f"  {label:<55} {statistics.median(values) * 1e6:6.1f} "
                f"({min(values) * 1e6:.1f}..{max(values) * 1e6:.1f})"
            )
        totals = [sum(run) for run in zip(*(timed[name] for name in top), strict=True)]
        target = f"; target {bench.CODE_TARGET_S * 1e6:.0f} µs" if config == RUNWATCH else ""
        print(
            f"  {'total (the lines not inside another)':<55} "
            f"{statistics.median(totals) * 1e6:6.1f} ({min(totals) * 1e6:.1f}.."
            f"{max(totals) * 1e6:.1f}){target}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
