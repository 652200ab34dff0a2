"""``runwatch train centralized`` and ``runwatch demo`` (registered through the
``runwatch.commands`` entry point; collector never imports this module)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collector.cli.argtypes import positive_float, positive_int
from collector.config import Settings, mask_url
from trainer.defaults import DEFAULT_EXPERIMENT, DEFAULT_SEED
from trainer.federated.cli import register_federated

if TYPE_CHECKING:
    from trainer.centralized import CentralizedResult

# torch and lightning load only inside the handlers: `runwatch --help`, `runwatch runs …`
# and the other commands start in a fraction of a second.

DEMO_EPOCHS = 5

#: ``runwatch train <mode>`` registrars; other training modes append theirs.
TRAIN_MODES: list[Callable[[Any], None]] = []


def register(sub: Any) -> None:
    train = sub.add_parser("train", help="run a reference training app with telemetry")
    modes = train.add_subparsers(dest="train_mode", metavar="MODE", required=True)
    for add_mode in TRAIN_MODES:
        add_mode(modes)
    demo = sub.add_parser(
        "demo",
        help="a short centralized run and a short federated run, then what was recorded where",
    )
    demo.add_argument("--epochs", type=positive_int, default=DEMO_EPOCHS)
    demo.add_argument("--experiment", default="demo")
    demo.add_argument(
        "--no-federated", action="store_true", help="skip the federated part of the demo"
    )
    demo.set_defaults(handler=run_demo)


def _register_centralized(modes: Any) -> None:
    parser = modes.add_parser(
        "centralized",
        help="train the MLP on the bundled breast-cancer data (or your own module)",
        description="Train with Lightning; telemetry goes to the configured backends.",
    )
    parser.add_argument("--epochs", type=positive_int, default=10)
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT)
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--lr", type=positive_float, default=1e-3)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--hidden", type=positive_int, default=64, help="MLP hidden width")
    parser.add_argument("--patience", type=positive_int, default=5, help="early stopping")
    parser.add_argument(
        "--model", metavar="MODULE:CLASS", help="your LightningModule (built with no arguments)"
    )
    parser.add_argument(
        "--datamodule",
        metavar="MODULE:CLASS",
        help="your LightningDataModule (built with no arguments)",
    )
    parser.add_argument("--no-test", action="store_true", help="skip the test-set evaluation")
    parser.add_argument("--progress", action="store_true", help="show Lightning's progress bar")
    parser.add_argument("--accelerator", default="auto", help="Lightning accelerator (auto, cpu…)")
    parser.set_defaults(handler=run_train_centralized)


TRAIN_MODES.extend([_register_centralized, register_federated])


def run_train_centralized(args: argparse.Namespace, settings: Settings) -> int:
    from trainer.centralized import CentralizedConfig, run_centralized

    config = CentralizedConfig(
        epochs=args.epochs,
        experiment=args.experiment,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        hidden=args.hidden,
        patience=args.patience,
        model=args.model,
        datamodule=args.datamodule,
        test=not args.no_test,
        progress_bar=args.progress,
        accelerator=args.accelerator,
    )
    result = run_centralized(config, settings)
    print(f"run {result.run_id}: {result.status}, {result.epochs_run} epochs")
    _print_metrics(result)
    if not _metadata_stored(result.run_id, settings):
        return 1
    return 0 if result.status == "completed" else 1


def _metadata_stored(run_id: str, settings: Settings) -> bool:
    """False, after one line on stderr, when the run's metadata waits in its journal."""
    from collector.store.journal import describe_pending

    pending = describe_pending(settings, run_id)
    if pending is not None:
        print(f"runwatch: {pending}", file=sys.stderr)
    return pending is None


def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    from trainer.centralized import CentralizedConfig, run_centralized
    from trainer.federated.cli import (
        DEMO_CLIENTS,
        DEMO_ROUNDS,
        federated_summary,
        run_federated_demo,
    )

    config = CentralizedConfig(epochs=args.epochs, experiment=args.experiment)
    print(f"runwatch demo: centralized MLP on the breast-cancer data, {config.epochs} epochs…")
    result = run_centralized(config, settings)
    print()
    print(summary(result, settings))
    if not _metadata_stored(result.run_id, settings):
        return 1
    if args.no_federated:
        return 0 if result.status == "completed" else 1
    print()
    print(
        f"runwatch demo: federated run, Flower simulation, {DEMO_CLIENTS} clients, {DEMO_ROUNDS} rounds…",
        flush=True,
    )
    federated = run_federated_demo(settings, experiment=f"{args.experiment}-federated")
    print()
    print(federated_summary(federated, settings))
    return 0 if result.status == "completed" and federated.ok else 1


def summary(result: CentralizedResult, settings: Settings) -> str:
    """What was recorded and where, for people."""
    from collector.spool import list_streams

    streams = list_streams(settings.spool_dir, result.run_id)
    points = sum(_count_lines(s.path) for s in streams)
    lines = [
        f"run id        {result.run_id} ({result.status}, {result.epochs_run} epochs, "
        f"{result.global_step} optimizer steps)",
        f"run metadata  {mask_url(settings.db_url)}",
        f"points        {points} in {', '.join(str(s.path) for s in streams) or '(no spool file)'}",
        "influxdb      "
        + (
            f"shipping to {mask_url(settings.influx_url)} bucket {settings.influx_bucket}"
            if settings.influx_url
            else "not configured: points stay in the spool; `runwatch sync` ships them later"
        ),
        f"prometheus    {_prometheus_line(result, settings)}",
    ]
    if result.exported_files:
        lines.append(f"files         {', '.join(str(p) for p in result.exported_files)}")
    if result.best_checkpoint:
        lines.append(f"checkpoint    {result.best_checkpoint}")
    lines.append(_metrics_line("final val", result.final_metrics, "val_"))
    if result.test_metrics:
        lines.append(_metrics_line("test", result.test_metrics, "test_"))
    if result.telemetry_errors:
        lines.append(f"warnings      {result.telemetry_errors} telemetry errors (see log)")
    lines.append(f"next          runwatch runs show {result.run_id}")
    return "\n".join(lines)


def _prometheus_line(result: CentralizedResult, settings: Settings) -> str:
    if not settings.prometheus_enabled:
        return "disabled (RUNWATCH_PROMETHEUS_PORT=0)"
    if result.prometheus_port is None:
        return f"not served: port {settings.prometheus_port} was busy (see the warning above)"
    return (
        f"served on http://{settings.prometheus_addr}:{result.prometheus_port}/metrics "
        "while training"
    )


def _metrics_line(label: str, metrics: dict[str, float], prefix: str) -> str:
    keys = ("loss", "acc", "precision", "recall", "f1", "auroc")
    shown = [f"{k}={metrics[prefix + k]:.4f}" for k in keys if prefix + k in metrics]
    return f"{label:<14}{' '.join(shown) or '(none)'}"


def _print_metrics(result: CentralizedResult) -> None:
    print(_metrics_line("final val", result.final_metrics, "val_"))
    if result.test_metrics:
        print(_metrics_line("test", result.test_metrics, "test_"))


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as handle:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    except OSError:
        return 0
