"""What runwatch adds to the wall time of a simulated federated run.

Target: telemetry (strategy wrapper on the server, callbacks on the clients, spool, store)
adds at most 5 % to a Flower simulation run, compared with the same run without them
(``telemetry = false`` in the run config: bare FedAvg, no callbacks). Runs are interleaved
in pairs, the order alternating from pair to pair, and the figure is the median of the
paired ratios (whole runs vary by ±30 % between identical runs on this machine).

Two times per run: the whole run (``flwr run`` until Flower reports it finished, what a user
waits for) and the strategy's own execution (the rounds, as Flower's log reports it:
``Strategy execution finished in X s``), which leaves out Flower's and ray's start-up.
InfluxDB is not configured (points stay in the spool) and the exporter is off, as in CI.

Whole runs on a shared 2-core machine are noisy, so the components are also measured in
process, paired and interleaved: a client's local fit with and without runwatch's
callbacks (ratio), and the server wrapper's own cost per round (milliseconds, with
instant in-process clients, so everything measured is the wrapper's recording work).
"""

from __future__ import annotations

import argparse
import logging
import re
import statistics
import tempfile
import time
from pathlib import Path

from collector.config import load_settings
from trainer.federated.config import FederatedConfig
from trainer.federated.runner import run_federated

_STRATEGY_TIME = re.compile(r"Strategy execution finished in ([0-9.]+)s")
TARGET = 1.05


def one_run(config: FederatedConfig, workdir: Path) -> tuple[float, float]:
    """(whole-run seconds, strategy-execution seconds) of one simulated run."""
    settings = load_settings(
        {"RUNWATCH_HOME": str(workdir / "home"), "RUNWATCH_PROMETHEUS_PORT": "0"}, dotenv=None
    )
    started = time.perf_counter()
    result = run_federated(config, settings, engine="simulation", workdir=workdir / "flower")
    wall = time.perf_counter() - started
    if not result.flower.ok:
        raise SystemExit(f"run failed ({result.flower.status}); see {result.flower.log_path}")
    found = _STRATEGY_TIME.findall(result.flower.log_path.read_text(errors="replace"))
    return wall, float(found[-1]) if found else float("nan")


def client_fit_ratio(pairs: int, local_epochs: int, workdir: Path) -> tuple[float, float, float]:
    """Median (bare, telemetry) seconds of one local fit, and the median paired ratio."""
    from collector.flower import ClientTelemetry, RunNote
    from trainer.federated.data import client_data
    from trainer.federated.task import build_model, quiet_lightning, train_locally

    quiet_lightning()
    settings = load_settings(
        {"RUNWATCH_HOME": str(workdir / "home"), "RUNWATCH_PROMETHEUS_PORT": "0"}, dotenv=None
    )
    config = FederatedConfig(num_clients=3, local_epochs=local_epochs)
    data = client_data(0, 3)
    times: dict[bool, list[float]] = {True: [], False: []}

    def fit(telemetry: bool, index: int) -> float:
        model = build_model(data.num_features, config)
        started = time.perf_counter()
        if telemetry:
            client = ClientTelemetry(
                RunNote("bench-client", "bench", index), "1", settings=settings
            )
            with client:
                train_locally(
                    model, data, config, seed=1, logger=client.logger, callbacks=client.callbacks
                )
            client.report()
        else:
            train_locally(model, data, config, seed=1)
        return time.perf_counter() - started

    fit(True, 0), fit(False, 0)  # warm-up: imports, first Trainer
    for index in range(pairs):
        for telemetry in (False, True) if index % 2 == 0 else (True, False):
            times[telemetry].append(fit(telemetry, index + 1))
    ratios = [t / b for t, b in zip(times[True], times[False], strict=True)]
    return (
        statistics.median(times[False]),
        statistics.median(times[True]),
        statistics.median(ratios),
    )


def wrapper_ms_per_round(rounds: int, workdir: Path) -> tuple[float, float]:
    """Median ms per round of FedAvg over 3 instant in-process clients, (bare, wrapped)."""
    import numpy as np
    from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.serverapp import Grid
    from flwr.serverapp.strategy import FedAvg
    from flwr.supercore.task_identity import TaskIdentity

    from collector.flower import ClientReport, FederatedRun, attach_client_report

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    logging.getLogger("flwr").setLevel(logging.WARNING)
    weights = ArrayRecord({"w": Array(np.zeros((64, 30), dtype=np.float32))})
    epochs = [
        {"epoch": float(e), "train_loss": 0.5, "val_loss": 0.4, "val_acc": 0.9} for e in range(2)
    ]

    def reply(message: Message) -> Message:
        metrics: dict[str, float] = {"num-examples": 100.0}
        if message.metadata.message_type == "train":
            content = RecordDict(
                {"arrays": weights, "metrics": MetricRecord({**metrics, "train_loss": 0.5})}
            )
            attach_client_report(content, ClientReport("x", epochs=epochs, duration_s=1.0))
        else:
            cm = {"val_cm_tp": 5.0, "val_cm_tn": 20.0, "val_cm_fp": 1.0, "val_cm_fn": 2.0}
            content = RecordDict({"metrics": MetricRecord({**metrics, "val_loss": 0.4, **cm})})
        return Message(content=content, reply_to=message)

    class InstantGrid(Grid):
        def get_node_ids(self) -> list[int]:
            return [1, 2, 3]

        def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
            return [reply(m) for m in messages]

        set_run = run = create_message = push_messages = pull_messages = None  # type: ignore[assignment]

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        return MetricRecord({"test_loss": 0.3, "test_acc": 0.9, "test_cm_tp": 30.0})

    settings = load_settings(
        {"RUNWATCH_HOME": str(workdir / "server"), "RUNWATCH_PROMETHEUS_PORT": "0"}, dotenv=None
    )
    results: dict[bool, float] = {}
    for wrapped in (False, True, False, True):
        strategy = FedAvg(min_available_nodes=3, min_train_nodes=3, min_evaluate_nodes=3)
        with FederatedRun("bench-wrapper", settings=settings) as run:
            runner = run.wrap(strategy) if wrapped else strategy
            started = time.perf_counter()
            runner.start(InstantGrid(), weights, num_rounds=rounds, evaluate_fn=evaluate_fn)
            per_round = (time.perf_counter() - started) / rounds * 1000
        results[wrapped] = min(results.get(wrapped, float("inf")), per_round)
    return results[False], results[True]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--fit-pairs", type=int, default=15)
    args = parser.parse_args()
    base = FederatedConfig(
        num_rounds=args.rounds,
        num_clients=args.clients,
        local_epochs=args.local_epochs,
        experiment="bench-federated",
    )
    whole: dict[bool, list[float]] = {True: [], False: []}
    strategy: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory(prefix="bench-federated-") as tmp:
        bare_fit, telemetry_fit, fit_ratio = client_fit_ratio(
            args.fit_pairs, args.local_epochs, Path(tmp)
        )
        print(
            f"client local fit ({args.local_epochs} epochs, {args.fit_pairs} pairs): median bare "
            f"{bare_fit * 1000:.0f} ms, with callbacks {telemetry_fit * 1000:.0f} ms, "
            f"median paired ratio {fit_ratio:.3f}"
        )
        bare_round, wrapped_round = wrapper_ms_per_round(20, Path(tmp))
        print(
            f"server wrapper, instant clients: {bare_round:.1f} ms per round bare, "
            f"{wrapped_round:.1f} ms wrapped (+{wrapped_round - bare_round:.1f} ms per round)"
        )
        for pair in range(args.pairs):
            order = (False, True) if pair % 2 == 0 else (True, False)
            for telemetry in order:
                config = FederatedConfig(**{**base.__dict__, "telemetry": telemetry})
                wall, rounds = one_run(config, Path(tmp) / f"pair{pair}-{telemetry}")
                whole[telemetry].append(wall)
                strategy[telemetry].append(rounds)
                label = "telemetry" if telemetry else "bare     "
                print(f"  pair {pair + 1}: {label} whole {wall:6.1f} s, rounds {rounds:6.2f} s")
    print(
        f"federated simulation, {args.clients} clients x {args.rounds} rounds x "
        f"{args.local_epochs} local epochs, {args.pairs} interleaved pairs"
    )
    if args.pairs < 1:
        return
    for name, times in (("whole run", whole), ("strategy rounds", strategy)):
        ratios = [t / b for t, b in zip(times[True], times[False], strict=True)]
        print(
            f"  {name:16s} median bare {statistics.median(times[False]):7.2f} s, "
            f"telemetry {statistics.median(times[True]):7.2f} s, "
            f"median paired ratio {statistics.median(ratios):.3f} "
            f"(min {min(ratios):.3f}, max {max(ratios):.3f})"
        )
    print(f"  target: whole-run ratio <= {TARGET:.2f}")


if __name__ == "__main__":
    main()
