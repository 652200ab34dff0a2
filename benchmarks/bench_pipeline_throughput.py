"""Sustained end-to-end throughput: ``Recorder.record()`` → spool → shipper → VictoriaMetrics.

Each repeat records N points as fast as one thread can and closes the recorder, which returns
once VictoriaMetrics has acknowledged every point; points/s = N / (first record → last ack).
VictoriaMetrics (a real server accepting influxdb-client's ``/api/v2/write``) is started on
127.0.0.1 with a temporary data directory and stopped at the end. Target: >= 100,000 points/s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from collector import Recorder, new_run_id
from collector.config import Settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test suite's server helpers
from tests.servers._process import require_binary
from tests.servers.victoriametrics import VictoriaMetrics


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    binary = require_binary("victoria-metrics", "/usr/bin/victoria-metrics*")
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        server = VictoriaMetrics(binary, Path(tmp) / "vm").start()
        try:
            settings = Settings(
                home=Path(tmp) / "home",
                db_url="sqlite://",
                influx_url=server.url,
                influx_org="bench",
                influx_token="bench",
                prometheus_port=0,
            )
            end_to_end, recording = [], []
            for _ in range(args.repeats):
                total, record_only, shipped = one_run(settings, args.points)
                if shipped != args.points:
                    raise SystemExit(f"only {shipped} of {args.points} points acknowledged")
                end_to_end.append(total)
                recording.append(record_only)
        finally:
            server.stop()
    print(
        f"end to end into VictoriaMetrics, {args.points:,} points (3 fields) per run, "
        f"{args.repeats} runs, gzip on, 5,000 lines per request"
    )
    print(
        f"  median {statistics.median(end_to_end):,.0f} points/s acknowledged "
        f"(min {min(end_to_end):,.0f}, max {max(end_to_end):,.0f}); "
        f"recording alone {statistics.median(recording):,.0f} points/s"
    )
    print("  target >= 100,000 points/s")


if __name__ == "__main__":
    main()
