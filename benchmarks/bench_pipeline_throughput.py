"""Sustained end-to-end throughput: ``Recorder.record()`` → spool → shipper → server, into
InfluxDB 2 and VictoriaMetrics side by side in one run.

Each repeat records N points as fast as one thread can and closes the recorder, which returns
once the server has acknowledged every point; points/s = N / (first record → last ack). The
two servers take turns (InfluxDB 2, VictoriaMetrics, InfluxDB 2, ...), so machine noise
falls on both alike. Both are real servers started on 127.0.0.1 with temporary data and
stopped at the end: influxd built by deploy/servers/influxd.sh, Debian's victoria-metrics.
Target: >= 100,000 points/s into each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from collector import Recorder, new_run_id
from collector.config import Settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test suite's server helpers
from tests.servers._process import require_binary
from tests.servers.influxdb2 import InfluxDB2, built_influxd
from tests.servers.victoriametrics import VictoriaMetrics

Run = Callable[[], tuple[float, float, int]]


def one_run(settings: Settings, points: int) -> tuple[float, float, int]:
    """(points/s end to end, points/s recorded, points acknowledged)."""
    started = time.perf_counter()
    rec = Recorder(new_run_id(), experiment="bench-throughput", settings=settings)
    for i in range(points):
        rec.record("batch", {"loss": 1.0 / (i + 1), "step": i, "batch_idx": i % 500})
    recorded = time.perf_counter()
    rec.close(timeout=600)
    finished = time.perf_counter()
    shipped = rec.stats.points_shipped
    return points / (finished - started), points / (recorded - started), shipped


def victoriametrics_settings(server: VictoriaMetrics, home: Path) -> Settings:
    return Settings(
        home=home,
        db_url="sqlite://",
        influx_url=server.url,
        influx_org="bench",
        influx_token="bench",
        prometheus_port=0,
    )


def influxdb2_settings(server: InfluxDB2, home: Path) -> Settings:
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    server.create_bucket(bucket)
    return server.settings(home, bucket).with_overrides(db_url="sqlite://")


def report(name: str, end_to_end: list[float], recording: list[float]) -> None:
    print(
        f"  {name:<16} median {statistics.median(end_to_end):>9,.0f} points/s acknowledged "
        f"(min {min(end_to_end):,.0f}, max {max(end_to_end):,.0f}); "
        f"recording alone {statistics.median(recording):,.0f} points/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    vm_binary = require_binary("victoria-metrics", "/usr/bin/victoria-metrics*")
    influxd = built_influxd()
    if not os.access(influxd, os.X_OK):
        raise SystemExit(f"influxd not built at {influxd}: run deploy/servers/influxd.sh")
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        root = Path(tmp)
        (root / "influxdb2").mkdir()
        influx = InfluxDB2(str(influxd), root / "influxdb2")
        vm = VictoriaMetrics(vm_binary, root / "vm").start()
        try:
            runs: dict[str, Run] = {
                "InfluxDB 2": lambda: one_run(
                    influxdb2_settings(influx, root / f"home-{uuid.uuid4().hex}"), args.points
                ),
                "VictoriaMetrics": lambda: one_run(
                    victoriametrics_settings(vm, root / f"home-{uuid.uuid4().hex}"), args.points
                ),
            }
            results: dict[str, tuple[list[float], list[float]]] = {n: ([], []) for n in runs}
            for _ in range(args.repeats):
                for name, run in runs.items():
                    total, record_only, shipped = run()
                    if shipped != args.points:
                        raise SystemExit(f"{name}: {shipped} of {args.points} points acknowledged")
                    results[name][0].append(total)
                    results[name][1].append(record_only)
        finally:
            influx.stop()
            vm.stop()
    print(
        f"end to end, {args.points:,} points (3 fields) per run, {args.repeats} runs per server "
        "taking turns, gzip on, 5,000 lines per request"
    )
    for name, (end_to_end, recording) in results.items():
        report(name, end_to_end, recording)
    influx_median = statistics.median(results["InfluxDB 2"][0])
    vm_median = statistics.median(results["VictoriaMetrics"][0])
    print(f"  InfluxDB 2 / VictoriaMetrics: {influx_median / vm_median:.2f}x")
    print("  target >= 100,000 points/s into each")


if __name__ == "__main__":
    main()
