"""Peak RSS while InfluxDB is down and 1,000,000 points are recorded, then ``close()``.

Runs in a fresh child process: baseline RSS after imports and after the Recorder is built
(its threads started), then records N points while ``INFLUXDB_V2_URL`` points at a closed
port, sampling RSS every 5 ms; reports peak minus baseline. The points wait on disk (the
spool), not in memory. Then ``close(timeout=10)`` (the default) against the down server:
its duration and the RSS it adds. Peer in the same run: the timeout close was granted (the
old behaviour spent all of it). Targets: <= 100 MB above baseline while recording;
close <= 2 s with RSS flat (+1 MiB at most), every point left for ``runwatch sync``.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile

CHILD = """
import json, os, sys, tempfile, threading, time
from pathlib import Path
import psutil
from collector import Recorder, new_run_id
from collector.config import Settings

points, home, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
CLOSE_TIMEOUT = 10.0
process = psutil.Process()
settings = Settings(home=Path(home), db_url="sqlite://", influx_url=f"http://127.0.0.1:{port}",
                    influx_org="o", influx_token="t", prometheus_port=0)
rec = Recorder(new_run_id(), experiment="bench-memory", settings=settings)
rec.record("batch", {"loss": 1.0, "step": 0})
rec.flush()
time.sleep(1.0)  # the shipper has failed once
baseline = process.memory_info().rss
peak = baseline
stop = threading.Event()

def sample():
    global peak
    while not stop.wait(0.005):
        peak = max(peak, process.memory_info().rss)

sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
started = time.perf_counter()
for i in range(points):
    rec.record("batch", {"loss": 1.0 / (i + 1), "step": i, "batch_idx": i % 500})
rec.flush()
elapsed = time.perf_counter() - started
stop.set()
sampler.join()
peak = max(peak, process.memory_info().rss)
stats = rec.stats
before_close = process.memory_info().rss
close_peak = before_close
stop.clear()

def sample_close():
    global close_peak
    while not stop.wait(0.005):
        close_peak = max(close_peak, process.memory_info().rss)

sampler = threading.Thread(target=sample_close, daemon=True)
sampler.start()
closing = time.perf_counter()
rec.close(timeout=CLOSE_TIMEOUT)
close_s = time.perf_counter() - closing
stop.set()
sampler.join()
print(json.dumps({"baseline": baseline, "peak": peak, "elapsed": elapsed,
                  "backlog": stats.spool_backlog_bytes, "spooled": stats.points_spooled,
                  "shipped": stats.points_shipped, "close_s": close_s,
                  "close_rss": close_peak - before_close,
                  "left": rec.stats.spool_backlog_bytes}))
"""


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as home:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(args.points), home, str(closed_port())],
            capture_output=True,
            text=True,
            check=True,
        )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    mb = 1024 * 1024
    print(f"InfluxDB down, {args.points:,} points recorded in {result['elapsed']:.1f} s")
    print(
        f"  baseline {result['baseline'] / mb:.1f} MiB, peak {result['peak'] / mb:.1f} MiB: "
        f"+{(result['peak'] - result['baseline']) / mb:.1f} MiB above baseline; "
        f"{result['spooled']:,} points on disk ({result['backlog'] / mb:.1f} MiB unshipped), "
        f"{result['shipped']} shipped"
    )
    print("  target <= 100 MB above baseline")
    print(
        f"  close(timeout=10) with InfluxDB down: {result['close_s']:.2f} s "
        f"({result['close_s'] / 10.0:.2f}x the timeout the old close always spent), "
        f"RSS +{result['close_rss'] / mb:.1f} MiB during it; "
        f"{result['left'] / mb:.1f} MiB left in the spool for `runwatch sync`"
    )
    print("  target: close <= 2 s, RSS flat")


if __name__ == "__main__":
    main()
