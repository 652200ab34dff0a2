"""Shipping throughput into a real InfluxDB 2, against influxdb-client in the same run.

Per repeat, taking turns on one influxd (so machine noise falls on all alike; the order
rotates from one repeat to the next, so none always runs after the same one), each into a
fresh bucket:

- **runwatch end to end**: N points ``Recorder.record()``-ed as fast as one thread can, then
  ``close()``, which returns once the server acknowledged every point;
  points/s = N / (first record → last ack);
- the same with a spool that never rolls, so nothing is compressed (a reference: what the
  spool's compression, which keeps it at ~26 bytes a point, costs end to end);
- **runwatch sync**: ``ship_backlog`` (what ``runwatch sync`` runs) of an N-point backlog a
  recorder without InfluxDB spooled before the clock starts; again with gzip forced on
  (``RUNWATCH_INFLUX_GZIP=on``: runwatch's default to this loopback server is plain bodies);
- **peer**: influxdb-client's SYNCHRONOUS write API posting the very same spooled lines,
  pre-built, 5,000 per request (InfluxData's recommended batch), gzip on and gzip off; and,
  as a reference, gzip off in runwatch's own batch size (``DEFAULT_BATCH_LINES``), since
  influxd spends less CPU per point on larger requests whoever sends them.

influxd is built by deploy/servers/influxd.sh (tests/servers/influxdb2.py starts it). Before
each run the benchmark waits for influxd to go idle, so what one run leaves it to do (cache
snapshots, compactions) is not counted in the next.
Besides points/s, each figure comes with the CPU seconds influxd and this process spent per
1M points: on a 2-core machine the server's own share bounds what any client reaches.
Targets (issue 15): end to end >= 1.0x the peer's synchronous write in the same wire format
(gzip off, as runwatch posts to a loopback server), sync >= 300,000 points/s; each judged
met, not met or within the run's noise by the 95% confidence interval of its median
(``_stats``; with under six repeats there are too few to tell).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil

from collector import Recorder, RecorderTuning, new_run_id
from collector.backlog import ship_backlog
from collector.config import Settings
from collector.shipper import DEFAULT_BATCH_LINES
from collector.spool import SpoolStream, StreamReader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test suite's server helpers
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stats import median_interval, verdict

from tests.servers.influxdb2 import InfluxDB2, built_influxd

PEER_BATCH_LINES = 5_000
PEER_LARGE = f"  peer gzip off, {DEFAULT_BATCH_LINES:,}/req"
UNCOMPRESSED = RecorderTuning(segment_bytes=2**62)
"""The spool never rolls, so no segment is compressed: what compression costs end to end."""


def record(rec: Recorder, points: int) -> None:
    for i in range(points):
        rec.record("batch", {"loss": 1.0 / (i + 1), "step": i, "batch_idx": i % 500})


def end_to_end(settings: Settings, points: int, tuning: RecorderTuning | None = None) -> float:
    started = time.perf_counter()
    rec = Recorder(new_run_id(), experiment="bench-throughput", settings=settings, tuning=tuning)
    record(rec, points)
    rec.close(timeout=600)
    elapsed = time.perf_counter() - started
    if rec.stats.points_shipped != points:
        raise SystemExit(f"end to end: {rec.stats.points_shipped} of {points} acknowledged")
    return points / elapsed


def spool_backlog(settings: Settings, points: int) -> SpoolStream:
    """An N-point backlog spooled by a recorder without InfluxDB; its spool stream."""
    offline = dataclasses.replace(settings, influx_url=None)
    run_id = new_run_id()
    with Recorder(run_id, experiment="bench-throughput", settings=offline) as rec:
        record(rec, points)
    return SpoolStream.at(settings.spool_dir, run_id)


def sync(settings: Settings, points: int) -> float:
    """Ships a backlog spooled by ``with_backlog`` before (outside the CPU figures)."""
    started = time.perf_counter()
    result = ship_backlog(settings)
    elapsed = time.perf_counter() - started
    if result.error is not None or result.lines_shipped != points:
        raise SystemExit(f"sync: {result.lines_shipped} of {points} shipped ({result.error})")
    return points / elapsed


def with_backlog(settings: Settings, points: int) -> Settings:
    spool_backlog(settings, points)
    return settings


def peer(settings: Settings, batches: list[bytes], gzip: bool) -> float:
    from influxdb_client.client.influxdb_client import InfluxDBClient
    from influxdb_client.client.write_api import SYNCHRONOUS

    lines = sum(b.count(b"\n") for b in batches)
    client = InfluxDBClient(
        url=settings.influx_url or "",
        token=settings.influx_token or "",
        org=settings.influx_org or "",
        enable_gzip=gzip,
    )
    write = client.write_api(write_options=SYNCHRONOUS).write
    started = time.perf_counter()
    for batch in batches:
        write(bucket=settings.influx_bucket, record=batch, write_precision="ns")
    elapsed = time.perf_counter() - started
    client.close()
    return lines / elapsed


def batches_of(stream: SpoolStream, size: int) -> list[bytes]:
    """The stream's lines (from its head and compressed segments), ``size`` to a batch."""
    with StreamReader(stream) as reader:
        lines = reader.read(0, reader.extent()[0]).splitlines(keepends=True)
    return [b"".join(lines[i : i + size]) for i in range(0, len(lines), size)]


def fresh_settings(server: InfluxDB2, root: Path) -> Settings:
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    server.create_bucket(bucket)
    return server.settings(root / f"home-{uuid.uuid4().hex}", bucket).with_overrides(
        db_url="sqlite://"
    )


def settle(process: psutil.Process, quiet_s: float = 0.5, limit_s: float = 60.0) -> None:
    """Wait until influxd spent under 5% of a core for ``quiet_s`` (at most ``limit_s``):
    the cache snapshots and compactions a million points leave behind would otherwise land
    in the next run's figures, whichever it is."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        before = sum(process.cpu_times()[:2])
        time.sleep(quiet_s)
        if sum(process.cpu_times()[:2]) - before < 0.05 * quiet_s:
            return


def summary(values: list[float]) -> str:
    return (
        f"median {statistics.median(values):>9,.0f} points/s "
        f"(range {min(values):,.0f}-{max(values):,.0f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=7)  # six or more for a verdict
    args = parser.parse_args()
    influxd = built_influxd()
    if not os.access(influxd, os.X_OK):
        raise SystemExit(f"influxd not built at {influxd}: run deploy/servers/influxd.sh")
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        root = Path(tmp)
        (root / "influxdb2").mkdir()
        server = InfluxDB2(str(influxd), root / "influxdb2")
        try:
            peer_stream = spool_backlog(fresh_settings(server, root), args.points)
            prebuilt = batches_of(peer_stream, PEER_BATCH_LINES)
            prebuilt_large = batches_of(peer_stream, DEFAULT_BATCH_LINES)
            runs: dict[str, Callable[[], float]] = {
                "runwatch record()->ack": lambda: end_to_end(
                    fresh_settings(server, root), args.points
                ),
                "  spool not compressed": lambda: end_to_end(
                    fresh_settings(server, root), args.points, UNCOMPRESSED
                ),
                "runwatch sync": lambda: sync(backlogs.pop(), args.points),
                "runwatch sync, gzip on": lambda: sync(backlogs.pop(), args.points),
                "peer gzip on": lambda: peer(fresh_settings(server, root), prebuilt, True),
                "peer gzip off": lambda: peer(fresh_settings(server, root), prebuilt, False),
                PEER_LARGE: lambda: peer(fresh_settings(server, root), prebuilt_large, False),
            }
            backlogs: list[Settings] = []
            results: dict[str, list[float]] = {name: [] for name in runs}
            server_cpu: dict[str, list[float]] = {name: [] for name in runs}
            own_cpu: dict[str, list[float]] = {name: [] for name in runs}
            influxd_process = psutil.Process(server.process.proc.pid)
            names = list(runs)
            for repeat in range(args.repeats):
                # the order rotates each repeat, so no figure always follows the same one
                shift = repeat % len(names)
                for name in names[shift:] + names[:shift]:
                    run = runs[name]
                    if name.startswith("runwatch sync"):
                        settings = fresh_settings(server, root)
                        if name.endswith("gzip on"):
                            settings = settings.with_overrides(influx_gzip=True)
                        backlogs.append(with_backlog(settings, args.points))
                    settle(influxd_process)
                    server_before = sum(influxd_process.cpu_times()[:2])
                    own_before = time.process_time()
                    results[name].append(run())
                    per_million = 1e6 / args.points
                    own_cpu[name].append((time.process_time() - own_before) * per_million)
                    server_cpu[name].append(
                        (sum(influxd_process.cpu_times()[:2]) - server_before) * per_million
                    )
        finally:
            server.stop()
    print(
        f"{args.points:,} points (3 fields) per run, {args.repeats} runs each taking turns on "
        f"one influxd; peer: influxdb-client SYNCHRONOUS, {PEER_BATCH_LINES:,} pre-built lines "
        "per request"
    )
    for name, values in results.items():
        print(
            f"  {name:<26} {summary(values)}; CPU s per 1M points: influxd "
            f"{statistics.median(server_cpu[name]):.1f}, this process "
            f"{statistics.median(own_cpu[name]):.1f}"
        )
    medians = {name: statistics.median(values) for name, values in results.items()}
    for name in (
        "runwatch record()->ack",
        "  spool not compressed",
        "runwatch sync",
        "runwatch sync, gzip on",
    ):
        print(
            f"  {name} / peer gzip on: {medians[name] / medians['peer gzip on']:.2f}x; "
            f"/ peer gzip off: {medians[name] / medians['peer gzip off']:.2f}x; "
            f"/ peer gzip off in runwatch's batch size: {medians[name] / medians[PEER_LARGE]:.2f}x"
        )
    print(
        "  target: record()->ack >= 1.0x peer gzip off (the same wire format); sync >= 300,000 points/s"
    )
    for line in verdicts(results):
        print(f"  {line}")


def verdicts(results: dict[str, list[float]]) -> list[str]:
    """Both targets against the 95% confidence interval of the median (``_stats``): the
    end-to-end figure as the ratio to the peer's run of the same repeat."""
    ratios = [
        ours / theirs
        for ours, theirs in zip(
            results["runwatch record()->ack"], results["peer gzip off"], strict=True
        )
    ]
    ratio = median_interval(ratios)
    sync_rate = median_interval(results["runwatch sync"])
    return [
        f"record()->ack >= 1.0x: {verdict(ratio, 1.0, at_most=False)} (by repeat: median "
        f"{statistics.median(ratios):.2f}x, 95% CI {ratio.low:.2f}..{ratio.high:.2f})",
        f"sync >= 300,000 points/s: {verdict(sync_rate, 300_000, at_most=False)} "
        f"(95% CI {sync_rate.low:,.0f}..{sync_rate.high:,.0f})",
    ]


if __name__ == "__main__":
    main()
