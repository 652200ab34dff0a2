"""``runwatch train federated``: the Flower app with runwatch, on either engine.

``register_federated(modes)`` adds the ``federated`` parser to ``runwatch train``'s
subparsers; ``run_federated_demo`` and ``federated_summary`` serve ``runwatch demo``.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from collector.cli.argtypes import positive_float, positive_int
from collector.config import Settings, mask_url
from collector.errors import RunwatchError
from trainer.defaults import DEFAULT_SEED
from trainer.federated.config import DEFAULT_TIMEOUT_S, ENGINES, FederatedConfig

if TYPE_CHECKING:  # the runner (Flower's process handling, psutil) loads with a run
    from trainer.federated.runner import FederatedResult

DEMO_ROUNDS = 3
DEMO_CLIENTS = 2
_FORBIDDEN_IN_NAMES = ('"', "\\", "\n", "\r")


class FederatedRunFailed(RunwatchError):
    pass


def register_federated(modes: Any) -> None:
    parser = modes.add_parser(
        "federated",
        help="FedAvg with Flower over the bundled breast-cancer data, split IID across clients",
        description=(
            "Start a private Flower runtime on 127.0.0.1 (simulation engine, or a SuperLink "
            "and one SuperNode per client), run the app, stop every process. The server "
            "records the run; clients write their own points."
        ),
    )
    parser.add_argument("--rounds", type=positive_int, default=3)
    parser.add_argument("--clients", type=positive_int, default=2)
    parser.add_argument("--engine", choices=ENGINES, default="simulation")
    parser.add_argument("--local-epochs", type=positive_int, default=1)
    parser.add_argument("--experiment", type=_name, default="federated")
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--lr", type=positive_float, default=1e-3)
    parser.add_argument("--hidden", type=positive_int, default=64, help="MLP hidden width")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=DEFAULT_TIMEOUT_S,
        help="seconds the whole run may take",
    )
    parser.set_defaults(handler=run_train_federated)


def _name(text: str) -> str:
    if not text.strip() or any(c in text for c in _FORBIDDEN_IN_NAMES):
        raise argparse.ArgumentTypeError("must be non-empty, without quotes or backslashes")
    return text


def run_train_federated(args: argparse.Namespace, settings: Settings) -> int:
    config = FederatedConfig(
        num_rounds=args.rounds,
        num_clients=args.clients,
        local_epochs=args.local_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        hidden=args.hidden,
        seed=args.seed,
        experiment=args.experiment,
    )
    print(
        f"runwatch: federated {args.engine}, {config.num_clients} clients x "
        f"{config.num_rounds} rounds…",
        flush=True,
    )
    from trainer.federated.runner import run_federated

    result = run_federated(config, settings, engine=args.engine, timeout_s=args.timeout)
    print(federated_summary(result, settings))
    from collector.store.journal import describe_pending

    pending = describe_pending(settings, result.run_id)
    if pending is not None:
        raise FederatedRunFailed(pending)
    _raise_unless_ok(result)
    return 0


def run_federated_demo(
    settings: Settings, *, experiment: str = "demo-federated", engine: str = "simulation"
) -> FederatedResult:
    """The demo's short federated run (the demo prints ``federated_summary`` of it)."""
    from trainer.federated.runner import run_federated

    config = FederatedConfig(
        num_rounds=DEMO_ROUNDS, num_clients=DEMO_CLIENTS, experiment=experiment
    )
    return run_federated(config, settings, engine=engine)


def _raise_unless_ok(result: FederatedResult) -> None:
    if result.ok:
        return
    raise FederatedRunFailed(
        f"federated run {result.run_id} did not complete (Flower: {result.flower.status}, "
        f"store: {result.status}); logs in {result.workdir}"
    )


def federated_summary(result: FederatedResult, settings: Settings) -> str:
    """What was recorded and where, for people."""
    from collector.spool import list_streams

    streams = list_streams(settings.spool_dir, result.run_id)
    lines = [
        f"run id        {result.run_id} ({result.status}, {result.engine} engine, "
        f"{result.rounds_completed} rounds completed in {result.flower.elapsed_s:.0f} s)",
        f"run metadata  {mask_url(settings.db_url)} (rounds, clients, server evaluations)",
        f"points        {len(streams)} spool file(s) in {settings.spool_dir} "
        "(server: rounds and client replies; clients: epochs, batches, gradients)",
        "influxdb      "
        + (
            f"shipping to {mask_url(settings.influx_url)} bucket {settings.influx_bucket}"
            if settings.influx_url
            else "not configured: points stay in the spool; `runwatch sync` ships them later"
        ),
        "prometheus    "
        + (
            f"federated_* gauges served by the server on http://{settings.prometheus_addr}:"
            f"{settings.prometheus_port}/metrics while training"
            if settings.prometheus_enabled
            else "disabled (RUNWATCH_PROMETHEUS_PORT=0)"
        ),
        f"flower logs   {result.workdir}",
    ]
    if result.server_metrics:
        shown = ", ".join(
            f"{name.removeprefix('test_')} {value:.4g}"
            for name, value in result.server_metrics.items()
            if not name.startswith("test_cm_")
        )
        lines.append(f"server eval   {shown}")
    lines.append(f"next          runwatch runs show {result.run_id}")
    return "\n".join(lines)
