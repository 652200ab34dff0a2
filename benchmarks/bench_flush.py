"""What a flush costs the flusher thread: a Lightning step's points at every-step logging (the
``batch`` point, the ``gradient`` summary, a ``gradient_layer`` norm per layer as one
``record_series``), the Prometheus exporter observing, spooled to a local file.

Per point, medians of interleaved repeats, in the same run:

- compiled: the flush as it runs (``collector._lines`` writes the queue in one call);
- Python: the same queue with the compiled flush declining it (``Recorder._lines``);
- of which observers: the exporter's ``observe_many`` alone, on the same points.

A warm loop (each flush right after the last): in a training step the flusher runs with the
training's data in the caches, and costs more (bench_lightning.py measures that). No target of
its own: it shows where the drain share of issue 15's step targets goes.

    python benchmarks/bench_flush.py [--steps 125] [--repeats 41]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from collector import Recorder, RecorderTuning, new_run_id
from collector import recorder as recorder_module
from collector.config import Settings
from collector.prometheus import PrometheusExporter

LAYERS = [f"net.{n}.{kind}" for n in (0, 2, 4) for kind in ("weight", "bias")]
POINTS_PER_STEP = 2 + len(LAYERS)


def record_steps(rec: Recorder, first: int, steps: int) -> None:
    for step in range(first, first + steps):
        rec.record(
            "batch",
            {
                "loss": random.random(),
                "train_acc": random.random(),
                "samples_per_s": 30_000 + random.random(),
                "batch_idx": float(step),
                "epoch": 0.0,
                "step": float(step),
            },
        )
        norms = [random.random() for _ in LAYERS]
        rec.record(
            "gradient",
            {
                "total_norm": sum(norms),
                "max_norm": max(norms),
                "min_norm": min(norms),
                "step": step,
            },
        )
        rec.record_series("gradient_layer", "norm", norms, "layer", LAYERS, {"step": float(step)})


def flush_seconds(rec: Recorder, first: int, steps: int, compiled: bool) -> float:
    record_steps(rec, first, steps)
    saved = recorder_module._queued_lines
    if not compiled:
        recorder_module._queued_lines = None
    try:
        started = time.perf_counter()
        rec.flush()
        return time.perf_counter() - started
    finally:
        recorder_module._queued_lines = saved


def observe_seconds(exporter: PrometheusExporter, observations: list[Any]) -> float:
    started = time.perf_counter()
    exporter.observe_many(observations)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=125, help="steps per flush")
    parser.add_argument("--repeats", type=int, default=41)
    args = parser.parse_args()
    if recorder_module._queued_lines is None:
        raise SystemExit("collector._lines is not built: pip install -e . compiles it")
    points = args.steps * POINTS_PER_STEP
    with tempfile.TemporaryDirectory(prefix="bench-flush-") as tmp:
        home = Path(tmp)
        settings = Settings(home=home, db_url=f"sqlite:///{home / 'runs.db'}")
        run_id = new_run_id()
        exporter = PrometheusExporter(run_id, experiment="bench")
        tuning = RecorderTuning(flush_lines=10**9, queue_limit=10**9, flush_interval_s=3600)
        times: dict[str, list[float]] = {"compiled": [], "Python": [], "observers": []}
        with Recorder(
            run_id, experiment="bench", settings=settings, observers=[exporter], tuning=tuning
        ) as rec:
            step = 0
            flush_seconds(rec, step, args.steps, compiled=False)  # resolves fields and tags
            observations: list[Any] = []
            for _ in range(args.repeats):
                for kind in ("compiled", "Python"):
                    step += args.steps
                    times[kind].append(flush_seconds(rec, step, args.steps, kind == "compiled"))
                step += args.steps
                record_steps(rec, step, args.steps)
                queued = list(rec._queue.entries)
                made = recorder_module._queued_lines(queued, 0, *rec._line_caches, rec._observed)
                assert made is not None and made[3] == len(queued), (
                    "a training loop's queue must be compiled"
                )
                observations = made[2]
                rec.flush()
                times["observers"].append(observe_seconds(exporter, observations))
    print(
        f"flush of {args.steps} steps ({points} points: batch, gradient, {len(LAYERS)} layers; "
        f"{len(observations)} observed), median of {args.repeats}, per point:"
    )
    for kind, seconds in times.items():
        print(f"  {kind:<10} {statistics.median(seconds) / points * 1e6:6.3f} µs")
    ratio = statistics.median(times["compiled"]) / statistics.median(times["Python"])
    print(f"  compiled / Python: {ratio:.2f}x")


if __name__ == "__main__":
    main()
