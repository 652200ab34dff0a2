"""runwatch at scale: a store of 10,000 runs, 100 federated clients x 3 rounds, 10M points.

Three parts (``--parts store,federated,points``), each in fresh processes where a process
is measured, sizes scaled by arguments or ``RUNWATCH_SCALE_*`` variables:

- **store**: 10,000 runs (a tenth federated with 3 clients and 3 rounds; 6 hyperparameters,
  10 final stats, 20 epochs x 4 metrics each, 2 artifacts) written in bulk into SQLite, with
  the listing's copies of hyperparameters and final stats the store's writes keep; then
  the ``runwatch`` command line as a user runs it, each a new process (median of repeats):
  ``runs list --json``, ``runs list``, ``runs list --limit 20``, ``runs show``, ``compare``
  over 50 runs (``--source sql``), ``--help``; with the SQL statements ``runs list`` issues.
- **federated**: 100 clients x 3 rounds the way a Flower simulation drives runwatch, without
  Flower (its simulation costs minutes per round on 2 cores and measures Flower): the server
  side (``FederatedRun``-equivalent store writes: clients, rounds, aggregated metrics, server
  evaluation) and each client's ``Recorder`` (epoch, batch and gradient points to its own
  spool), one client after the other in one process; time, peak RSS, spool bytes.
- **points**: N points (default 10M, 5 fields, one run) ``record()``-ed with the spool only,
  then shipped by ``ship_backlog`` (``runwatch sync``) to a real InfluxDB 2 when built
  (``--server influxd``) or VictoriaMetrics (``--server victoriametrics``); recording and
  syncing each in its own process: points/s, peak RSS, bytes on disk per point.

Targets (issue 15): ``runs list --json`` <= 0.3 s at 10,000 runs with a constant number of
statements; ``--help`` <= 0.2 s; sync >= 300,000 points/s; spool <= 40 bytes/point once closed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
RUNWATCH = [PYTHON, "-m", "collector"]


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(f"RUNWATCH_SCALE_{name}", default))


# --- store ------------------------------------------------------------------------------------

HYPERPARAMS = ("lr", "batch_size", "optimizer", "model.depth", "model.width", "seed")
FINAL_STATS = (
    "final_accuracy_cm",
    "final_precision_cm",
    "final_recall_cm",
    "final_f1_cm",
    "final_specificity_cm",
    "final_cm_tp",
    "final_cm_tn",
    "final_cm_fp",
    "final_cm_fn",
    "final_auroc",
)
EPOCH_METRICS = ("train_loss", "val_loss", "val_acc", "val_f1")


def fill_store(url: str, runs: int, epochs: int = 20) -> list[str]:
    """``runs`` runs written in bulk (Core INSERTs, one transaction per 500 runs); run ids."""
    from sqlalchemy import insert, select

    from collector.store import Store
    from collector.store.models import Client, Round, Run, RunArtifact, RunConfiguration, RunMetric
    from collector.store.run_listing import final_stats_text, hyperparams_text

    store = Store(url)
    store.upgrade()
    rng = random.Random(15)
    now = datetime.now(UTC)
    run_ids = []
    hyperparams: dict[str, list[tuple[str, str]]] = {}
    final_stats: dict[str, list[tuple[str, float]]] = {}
    chunk = 500
    for first in range(0, runs, chunk):
        with store.session() as session:
            rows = []
            for number in range(first, min(runs, first + chunk)):
                started = now - timedelta(minutes=10 * (runs - number))
                run_id = f"{started:%Y%m%d-%H%M%S}-scale{number:06d}"
                run_ids.append(run_id)
                hyperparams[run_id] = [(key, json.dumps(rng.random())) for key in HYPERPARAMS]
                final_stats[run_id] = [(name, rng.random()) for name in FINAL_STATS]
                rows.append(
                    {
                        "run_id": run_id,
                        # the listing's copies, as the store's writes keep them
                        "hyperparams_json": hyperparams_text(hyperparams[run_id]),
                        "final_stats_json": final_stats_text(final_stats[run_id]),
                        "experiment_name": f"exp-{number % 37}",
                        "training_mode": "federated" if number % 10 == 0 else "centralized",
                        "status": "completed",
                        "start_time": started,
                        "end_time": started + timedelta(minutes=7),
                        "heartbeat_at": started + timedelta(minutes=7),
                        "host": f"node-{number % 8}",
                        "source_path": f"/work/train_{number % 5}.py",
                    }
                )
            session.execute(insert(Run), rows)
            chunk_ids = run_ids[first:]
            pks = {
                run_id: pk
                for run_id, pk in session.execute(
                    select(Run.run_id, Run.id).where(Run.run_id.in_(chunk_ids))
                )
            }
            configs, metrics, artifacts, clients, rounds = [], [], [], [], []
            for run_id in run_ids[first:]:
                pk = pks[run_id]
                for key, value in hyperparams[run_id]:
                    configs.append({"run_pk": pk, "key": key, "value": value})
                ended = now
                for name, stat in final_stats[run_id]:
                    metrics.append(_metric(pk, name, stat, epochs, "final_epoch", ended))
                for epoch in range(epochs):
                    for name in EPOCH_METRICS:
                        metrics.append(_metric(pk, name, rng.random(), epoch, "epoch_end", ended))
                for k in range(2):
                    artifacts.append(
                        {
                            "run_pk": pk,
                            "kind": "checkpoint",
                            "path": f"/ckpt/{run_id}-{k}.ckpt",
                            "epoch": k,
                            "created_at": ended,
                        }
                    )
                if int(run_id[-6:]) % 10 == 0:
                    clients += [
                        {"run_pk": pk, "client_identifier": f"c{c}", "created_at": ended}
                        for c in range(3)
                    ]
                    rounds += [
                        {
                            "run_pk": pk,
                            "round_number": r,
                            "status": "completed",
                            "aggregated_client_metrics": {"val_acc": rng.random()},
                        }
                        for r in range(1, 4)
                    ]
            for model, batch in (
                (RunConfiguration, configs),
                (RunMetric, metrics),
                (RunArtifact, artifacts),
                (Client, clients),
                (Round, rounds),
            ):
                if batch:
                    session.execute(insert(model), batch)
    store.dispose()
    return run_ids


def _metric(pk: int, name: str, value: float, step: int, context: str, at: datetime) -> dict:
    return {
        "run_pk": pk,
        "metric_name": name,
        "metric_value": value,
        "step": step,
        "dataset_type": "validation" if name.startswith("val") else "train",
        "context": context,
        "recorded_at": at,
    }


def timed_cli(env: dict[str, str], args: list[str], repeats: int) -> tuple[list[float], int]:
    """Wall seconds of ``runwatch ARGS`` in a new process, per repeat; bytes printed."""
    times, size = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        done = subprocess.run([*RUNWATCH, *args], env=env, capture_output=True, check=True)
        times.append(time.perf_counter() - started)
        size = len(done.stdout)
    return times, size


COUNT_STATEMENTS = """
import sqlite3
import sys
from collector.cli import main
statements = []
connect = sqlite3.connect
def traced_connect(*args, **kwargs):  # every SQLite connection: sqlite3's or SQLAlchemy's
    connection = connect(*args, **kwargs)
    connection.set_trace_callback(statements.append)
    return connection
sqlite3.connect = sqlite3.dbapi2.connect = traced_connect
sys.stdout = open("/dev/null", "w")
main(sys.argv[1:])
sys.stdout = sys.__stdout__
print(len(statements))
"""


def statements_of(env: dict[str, str], args: list[str]) -> int:
    done = subprocess.run(
        [PYTHON, "-c", COUNT_STATEMENTS, *args], env=env, capture_output=True, text=True, check=True
    )
    return int(done.stdout.split()[-1])


def bench_store(root: Path, runs: int, repeats: int) -> None:
    home = root / "store-home"
    home.mkdir()
    url = f"sqlite:///{home / 'runs.db'}"
    started = time.perf_counter()
    run_ids = fill_store(url, runs)
    filled = time.perf_counter() - started
    env = {
        **os.environ,
        "RUNWATCH_HOME": str(home),
        "RUNWATCH_DB_URL": url,
        "RUNWATCH_PROMETHEUS_PORT": "0",
    }
    for variable in ("INFLUXDB_V2_URL", "INFLUXDB_V2_TOKEN", "INFLUXDB_V2_TOKEN_FILE"):
        env.pop(variable, None)
    size = (home / "runs.db").stat().st_size
    print(f"store: {runs:,} runs in SQLite ({size / 2**20:.0f} MiB, filled in {filled:.1f} s)")
    last = run_ids[-1]
    federated = next(r for r in reversed(run_ids) if int(r[-6:]) % 10 == 0)
    compared = run_ids[-50:]
    cases = [
        ("runs list --json", ["runs", "list", "--json"], 0.3),
        ("runs list", ["runs", "list"], 0.3),
        ("runs list --limit 20 --json", ["runs", "list", "--limit", "20", "--json"], 0.3),
        ("runs show (centralized)", ["runs", "show", last, "--json"], None),
        ("runs show (federated)", ["runs", "show", federated, "--json"], None),
        (
            f"compare {len(compared)} runs",
            ["compare", *compared, "--metric", "val_acc", "--source", "sql", "--json"],
            None,
        ),
        ("--help", ["--help"], 0.2),
        ("python -c pass (the floor)", None, None),
    ]
    for name, args, target in cases:
        if args is None:
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                subprocess.run([PYTHON, "-c", "pass"], check=True)
                times.append(time.perf_counter() - t)
            out = 0
        else:
            times, out = timed_cli(env, args, repeats)
        goal = f"  target <= {target} s" if target is not None else ""
        print(
            f"  {name:<30} median {statistics.median(times):.3f} s "
            f"(range {min(times):.3f}-{max(times):.3f}), {out / 1024:,.0f} KiB out{goal}"
        )
    for name, args in (
        ("runs list --json", ["runs", "list", "--json"]),
        ("runs list", ["runs", "list"]),
    ):
        print(f"  SQL statements of {name}: {statements_of(env, args)} (target: constant)")
    # runs another program wrote, without the copies: their details read from their tables
    with sqlite3.connect(home / "runs.db") as connection:
        connection.execute("UPDATE runs SET hyperparams_json = NULL, final_stats_json = NULL")
    args = ["runs", "list", "--json"]
    times, out = timed_cli(env, args, repeats)
    print(
        f"  {'runs list --json, no copies':<30} median {statistics.median(times):.3f} s "
        f"(range {min(times):.3f}-{max(times):.3f}), {out / 1024:,.0f} KiB out; "
        f"{statements_of(env, args)} SQL statements"
    )


# --- child processes ------------------------------------------------------------------------------

PEAK_RSS_SAMPLER = """
import threading
import psutil
process = psutil.Process()
peak = process.memory_info().rss
stop = threading.Event()
def sample():
    global peak
    while not stop.wait(0.01):
        peak = max(peak, process.memory_info().rss)
threading.Thread(target=sample, daemon=True).start()
"""
"""The start of each measured child: samples its RSS every 10 ms into ``peak`` until ``stop``."""


# --- federated ----------------------------------------------------------------------------------

FEDERATED_CHILD = """
import json, sys, time, threading
from pathlib import Path
import psutil
from collector import Recorder
from collector.config import Settings
from collector.store import Store

home, clients, rounds, epochs, batches = Path(sys.argv[1]), *map(int, sys.argv[2:6])
settings = Settings(home=home, db_url=f"sqlite:///{home / 'runs.db'}", prometheus_port=0)
started = time.perf_counter()
store = Store.from_settings(settings)
run_id = store.create_run("scale-fed", "federated", hyperparams={"clients": clients})
points = 0
for rnd in range(1, rounds + 1):
    store.record_round(run_id, rnd, started_at=None, num_clients=clients)
    for c in range(clients):
        client = f"client-{c:03d}"
        store.ensure_client(run_id, client, partition_id=str(c))
        with Recorder(run_id, experiment="scale-fed", mode="federated", settings=settings,
                      tags={"client_id": client, "round": str(rnd)}) as rec:
            step = 0
            for epoch in range(epochs):
                for b in range(batches):
                    rec.record("batch", {"loss": 1.0 / (step + 1), "step": step, "epoch": epoch,
                                         "batch_idx": b})
                    rec.record("gradient", {"total_norm": 0.5, "step": step})
                    step += 1
                rec.record("epoch", {"train_loss": 0.5, "val_loss": 0.6, "val_acc": 0.7,
                                     "epoch": epoch})
            points += rec.stats.points_spooled
        store.persist_epoch_metrics(run_id, [{"epoch": e, "train_loss": 0.5, "val_acc": 0.7}
                                             for e in range(epochs)],
                                    client_id=client, round_number=rnd)
    store.record_round(run_id, rnd, aggregated_metrics={"val_acc": 0.7, "val_loss": 0.6},
                       num_clients=clients)
    store.add_server_evaluation(run_id, rnd, {"loss": 0.6, "accuracy": 0.7})
store.complete_run(run_id)
elapsed = time.perf_counter() - started
stop.set()
spool = sum(p.stat().st_size for p in (home / "spool").iterdir())
print(json.dumps({"elapsed": elapsed, "peak": peak, "points": points, "spool": spool,
                  "db": (home / "runs.db").stat().st_size}))
"""


def bench_federated(root: Path, clients: int, rounds: int) -> None:
    home = root / "federated-home"
    home.mkdir()
    epochs, batches = 2, 50
    done = subprocess.run(
        [PYTHON, "-c", PEAK_RSS_SAMPLER + FEDERATED_CHILD, str(home), str(clients), str(rounds),
         str(epochs), str(batches)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"federated (recorder/store side, no Flower): {clients} clients x {rounds} rounds, "
        f"{epochs} epochs x {batches} batches each, one process"
    )
    print(
        f"  {result['elapsed']:.1f} s ({result['elapsed'] / (clients * rounds) * 1000:.0f} ms "
        f"per client round), peak RSS {result['peak'] / 2**20:.0f} MiB, "
        f"{result['points']:,} points, spool {result['spool'] / 2**20:.1f} MiB "
        f"({result['spool'] / max(1, result['points']):.0f} bytes/point), "
        f"store {result['db'] / 2**20:.1f} MiB"
    )


# --- points ------------------------------------------------------------------------------------

RECORD_CHILD = """
import json, random, sys, time, threading
from pathlib import Path
import psutil
from collector import Recorder
from collector.config import Settings

home, run_id, points = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
settings = Settings(home=home, db_url="sqlite://", prometheus_port=0)
noise = random.Random(15).random  # a loss with all its digits, as real losses have
started = time.perf_counter()
with Recorder(run_id, experiment="scale", settings=settings) as rec:
    for i in range(points):
        rec.record("batch", {"loss": 2.0 / (i + 1) + noise() * 0.1, "acc": (i % 64) / 64,
                             "step": i, "epoch": i // 100_000, "batch_idx": i % 1000})
elapsed = time.perf_counter() - started
stop.set()
print(json.dumps({"elapsed": elapsed, "peak": peak, "spooled": rec.stats.points_spooled}))
"""

SYNC_CHILD = """
import json, sys, time, threading
from pathlib import Path
import psutil
from collector.backlog import ship_backlog
from collector.config import Settings

home, url, org, token, bucket = Path(sys.argv[1]), *sys.argv[2:6]
settings = Settings(home=home, db_url="sqlite://", prometheus_port=0, influx_url=url,
                    influx_org=org, influx_token=token, influx_bucket=bucket)
started = time.perf_counter()
result = ship_backlog(settings)
elapsed = time.perf_counter() - started
stop.set()
print(json.dumps({"elapsed": elapsed, "peak": peak, "shipped": result.lines_shipped,
                  "error": result.error}))
"""


def spool_bytes(home: Path) -> int:
    return sum(p.stat().st_size for p in (home / "spool").iterdir() if p.is_file())


def closed_segments(home: Path) -> tuple[int, int, int]:
    """(segments, bytes on disk, lines) of the spool's compressed segments."""
    from collector.spool import count_lines, list_segments, list_streams

    segments = on_disk = lines = 0
    for stream in list_streams(home / "spool"):
        for segment in list_segments(stream):
            if segment.compressed_end is not None:
                segments += 1
                on_disk += segment.path.stat().st_size
                lines += count_lines(stream, segment.start, segment.compressed_end)
    return segments, on_disk, lines


def bench_points(root: Path, points: int, server_kind: str) -> None:
    sys.path.insert(0, str(REPO))
    home = root / "points-home"
    home.mkdir()
    run_id = "scale-points"
    done = subprocess.run(
        [PYTHON, "-c", PEAK_RSS_SAMPLER + RECORD_CHILD, str(home), run_id, str(points)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    recorded = json.loads(done.stdout.strip().splitlines()[-1])
    on_disk = spool_bytes(home)
    print(f"points: {points:,} points (5 fields) recorded, one run, spool only")
    print(
        f"  record(): {points / recorded['elapsed']:,.0f} points/s "
        f"({recorded['elapsed'] / points * 1e6:.2f} us/point incl. spool), "
        f"peak RSS {recorded['peak'] / 2**20:.0f} MiB"
    )
    segments, closed_bytes, closed_lines = closed_segments(home)
    print(
        f"  spool on disk: {on_disk / 2**20:,.1f} MiB = {on_disk / points:.1f} bytes/point; "
        f"{segments} closed segments: {closed_bytes / max(1, closed_lines):.1f} bytes/point "
        "(target <= 40 for closed segments)"
    )
    server, settings = _start_server(root, server_kind)
    if server is None:
        print(f"  sync: skipped ({settings})")
        return
    try:
        done = subprocess.run(
            [PYTHON, "-c", PEAK_RSS_SAMPLER + SYNC_CHILD, str(home), *settings],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    finally:
        server.stop()
    synced = json.loads(done.stdout.strip().splitlines()[-1])
    if synced["error"] or synced["shipped"] != points:
        raise SystemExit(f"sync: {synced['shipped']} of {points} shipped ({synced['error']})")
    print(
        f"  runwatch sync to {server_kind}: {points / synced['elapsed']:,.0f} points/s "
        f"({synced['elapsed']:.1f} s), peak RSS {synced['peak'] / 2**20:.0f} MiB "
        "(target >= 300,000 points/s)"
    )


def _start_server(root: Path, kind: str) -> tuple[object | None, list[str] | str]:
    if kind == "influxd":
        from tests.servers.influxdb2 import InfluxDB2, built_influxd

        binary = built_influxd()
        if not os.access(binary, os.X_OK):
            return None, f"influxd not built at {binary}"
        (root / "influxdb2").mkdir()
        server = InfluxDB2(str(binary), root / "influxdb2")
        server.create_bucket("scale")
        return server, [server.url, server.org, server.write_token, "scale"]
    binary_path = shutil.which("victoria-metrics") or next(
        iter(sorted(Path("/usr/bin").glob("victoria-metrics*"))), None
    )
    if binary_path is None:
        return None, "victoria-metrics not installed"
    from tests.servers.victoriametrics import VictoriaMetrics

    server = VictoriaMetrics(str(binary_path), root / "victoriametrics")
    return server, [server.url, "o", "t", "scale"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="store,federated,points")
    parser.add_argument("--runs", type=int, default=env_int("RUNS", 10_000))
    parser.add_argument("--clients", type=int, default=env_int("CLIENTS", 100))
    parser.add_argument("--rounds", type=int, default=env_int("ROUNDS", 3))
    parser.add_argument("--points", type=int, default=env_int("POINTS", 10_000_000))
    parser.add_argument("--repeats", type=int, default=env_int("REPEATS", 5))
    parser.add_argument("--server", choices=("influxd", "victoriametrics"), default="influxd")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        root = Path(tmp)
        if "store" in parts:
            bench_store(root, args.runs, args.repeats)
        if "federated" in parts:
            bench_federated(root, args.clients, args.rounds)
        if "points" in parts:
            bench_points(root, args.points, args.server)


if __name__ == "__main__":
    main()
