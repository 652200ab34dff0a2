"""Python's cyclic collector during long every-step fits: what each logger makes it do.

An object the collector tracks (a list, a function, a dict or tuple holding one) that is still
alive at a collection is promoted; every object promoted into the oldest generation counts
towards a full collection, which next to torch and Lightning (~450,000 tracked objects) takes
0.2 s and more of the thread that triggers it. A logger whose queue holds tracked objects
until its next flush makes those full collections come sooner. bench_lightning.py's 400-step
runs never reach one, so this runs long fits (60,000 steps by default, ~2 minutes each) of
the same MLP, every-step logging, one after another in one process after a warm-up fit:
bare, runwatch with and without gradient norms, CSVLogger. For each: the collections of
each generation during the fit (its setup and teardown included) and the time they took, per
step.

Full collections are rare events, so one fit shows whether they happen at all, not a rate:
the collector's threshold counts promotions since the last full collection, whoever made
them (the fit before, the warm-up): with ``--rounds`` above one the order rotates.

    python benchmarks/bench_gc.py [--steps 60000] [--rounds 1]
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_lightning as bench

CONFIGS: dict[str, bench.Factory] = {
    "bare": bench.bare,
    "runwatch": bench.runwatch(1),
    "runwatch, no norms": bench.runwatch(1, gradients=False),
    "CSVLogger": bench.csv_logger,
}


class Collections:
    """Count and time of the collector's passes per generation, from ``gc.callbacks``, and
    the objects each generation-1 pass promoted into the oldest generation (its size just
    after the pass minus just before: nothing else enters it, and nothing leaves it while
    the pass runs). Those promotions are what bring the next full collection: CPython runs
    one once they exceed a quarter of the objects the oldest generation held after the last
    full collection."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.promoted = 0
        self._started = 0.0
        self._oldest = 0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        generation = info["generation"]
        if phase == "start":
            if generation == 1:  # sized outside the timed pass
                self._oldest = len(gc.get_objects(generation=2))
            self._started = time.perf_counter()
            return
        elapsed = time.perf_counter() - self._started
        self.count[generation] += 1
        self.seconds[generation] += elapsed
        if generation == 1:
            self.promoted += len(gc.get_objects(generation=2)) - self._oldest


def measure(factory: bench.Factory, steps: int, workdir: Path) -> Collections:
    passes = Collections()
    gc.callbacks.append(passes)
    try:
        bench.run_once(factory, 1, steps, workdir)
    finally:
        gc.callbacks.remove(passes)
    return passes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--only", help="comma-separated configurations (default: all)")
    args = parser.parse_args(argv)
    bench.torch.set_num_threads(args.threads)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="bench-gc-") as tmp:
        workdir = Path(tmp)
        bench.run_once(bench.runwatch(1), 1, 300, workdir / "warm-up")
        names = args.only.split(",") if args.only else list(CONFIGS)
        print(
            f"{args.steps:,} steps a fit, every-step logging, torch threads={args.threads}; "
            "collections during the fit (count, ms) per generation, their time per step, "
            "objects promoted into the oldest generation"
        )
        for round_index in range(args.rounds):
            order = names[round_index % len(names) :] + names[: round_index % len(names)]
            for name in order:
                spent = measure(CONFIGS[name], args.steps, workdir / f"{name}-{round_index}")
                per_step = sum(spent.seconds) / args.steps * 1e6
                generations = "  ".join(
                    f"gen{g} {spent.count[g]:>5} {spent.seconds[g] * 1e3:7.1f} ms" for g in range(3)
                )
                promoted = spent.promoted / args.steps * 1000
                print(
                    f"  {name:<20} {generations}   {per_step:5.1f} µs/step   "
                    f"promoted {promoted:6.0f} per 1,000 steps",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
