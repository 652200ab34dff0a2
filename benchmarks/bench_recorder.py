"""Cost of ``Recorder.record()`` on the calling (training) thread.

Prints, per point shape, the median per-call time (``perf_counter_ns`` around each call,
timer overhead subtracted) and the amortised mean (a block of calls timed as a whole, so the
lines built and appended every ``flush_lines`` points are included). Peer in the same run:
influxdb-client's ``Point`` serialisation of the same 5-field batch point (``Point(...)
.tag(...).field(...).time(...).to_line_protocol()``), medians likewise.
Target (issue 15): the 5-field point's median <= 0.2x that serialisation (about 0.5 µs).
Spool only (no InfluxDB): the shipper runs on its own thread and is measured by
bench_pipeline_throughput.py.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from collector import Recorder, new_run_id
from collector.config import Settings
from collector.lightning.gradients import gradient_points

FIVE_FIELDS = "batch (5 fields)"
_LAYER_NAMES = [f"net.{n}.{kind}" for n in (0, 2, 4) for kind in ("weight", "bias")]
_LAYER_NORMS = [0.5, 0.01, 0.4, 0.02, 0.3, 0.03]
PEER = "peer: influxdb-client Point, 5 fields"
SHAPES: dict[str, Callable[[Recorder, int], None]] = {
    FIVE_FIELDS: lambda rec, i: rec.record(
        "batch", {"loss": 0.5 + i * 1e-6, "acc": 0.75, "step": i, "epoch": 3, "batch_idx": i}
    ),
    "gradient_layer (2 fields, layer tag)": lambda rec, i: rec.record(
        "gradient_layer", {"norm": 0.01 * (i % 100), "step": i}, tags={"layer": "encoder.l1.weight"}
    ),
    "epoch (12 user metrics, names normalised)": lambda rec, i: rec.record(
        "epoch",
        {
            "train/loss": 0.5,
            "val/loss": 0.6,
            "val/acc": 0.8,
            "val/precision": 0.7,
            "val/recall": 0.9,
            "val/f1": 0.8,
            "val/auroc": 0.85,
            "val/cm_tp": 10,
            "val/cm_tn": 20,
            "val/cm_fp": 3,
            "val/cm_fn": 4,
            "lr": 1e-3,
        },
    ),
    "event (string field)": lambda rec, i: rec.event("checkpoint", text="epoch=3-step=1200.ckpt"),
    "record_series, 6 layers (µs per call)": lambda rec, i: rec.record_series(
        "gradient_layer", "norm", _LAYER_NORMS, "layer", _LAYER_NAMES, {"step": float(i)}
    ),
    "record_later, 1 + 6 points (µs per call)": lambda rec, i: rec.record_later(
        partial(gradient_points, _LAYER_NAMES, _LAYER_NORMS, float(i), len(_LAYER_NAMES)),
        1 + len(_LAYER_NAMES),
    ),
}


def peer_point(_rec: Recorder | None, i: int) -> None:
    from influxdb_client.client.write.point import Point

    Point("batch").tag("run_id", "20260101-000000-bench").tag("experiment", "bench").tag(
        "mode", "centralized"
    ).field("loss", 0.5 + i * 1e-6).field("acc", 0.75).field("step", float(i)).field(
        "epoch", 3.0
    ).field("batch_idx", float(i)).time(1_767_225_600_000_000_000 + i).to_line_protocol()


def timer_overhead_ns(samples: int = 100_000) -> float:
    clock = time.perf_counter_ns
    gaps = []
    for _ in range(samples):
        start = clock()
        gaps.append(clock() - start)
    return statistics.median(gaps)


def per_call_ns(rec: Recorder, shape: Callable[[Recorder, int], None], calls: int) -> list[int]:
    clock = time.perf_counter_ns
    durations = []
    for i in range(calls):
        start = clock()
        shape(rec, i)
        durations.append(clock() - start)
    return durations


def block_mean_ns(rec: Recorder, shape: Callable[[Recorder, int], None], calls: int) -> float:
    start = time.perf_counter_ns()
    for i in range(calls):
        shape(rec, i)
    return (time.perf_counter_ns() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    overhead = timer_overhead_ns()
    with tempfile.TemporaryDirectory(prefix="bench-recorder-") as tmp:
        settings = Settings(home=Path(tmp), db_url="sqlite://", prometheus_port=0)
        print(
            f"record() on the calling thread, {args.calls:,} calls x {args.repeats} repeats, "
            f"interleaved; timer overhead {overhead:.0f} ns subtracted"
        )
        shapes = {**SHAPES, PEER: peer_point}
        results: dict[str, tuple[list[float], list[float]]] = {s: ([], []) for s in shapes}
        with Recorder(new_run_id(), experiment="bench", settings=settings) as rec:
            for shape in shapes.values():  # warm-up: caches filled
                block_mean_ns(rec, shape, 2_000)
            for _ in range(args.repeats):
                for name, shape in shapes.items():
                    medians, means = results[name]
                    medians.append(
                        statistics.median(per_call_ns(rec, shape, args.calls)) - overhead
                    )
                    means.append(block_mean_ns(rec, shape, args.calls))
        for name, (medians, means) in results.items():
            print(
                f"  {name:<44} median {statistics.median(medians) / 1000:5.2f} µs/point "
                f"(range {min(medians) / 1000:.2f}-{max(medians) / 1000:.2f})   "
                f"amortised mean {statistics.median(means) / 1000:5.2f} µs/point"
            )
    ours = statistics.median(results[FIVE_FIELDS][0])
    peer = statistics.median(results[PEER][0])
    print(f"  {FIVE_FIELDS}: {ours / peer:.2f}x the peer's Point serialisation (median)")
    print("  target (issue 15): median <= 0.20x the peer's Point serialisation")


if __name__ == "__main__":
    main()
