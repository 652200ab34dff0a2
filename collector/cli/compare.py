"""``runwatch compare RUN_ID RUN_ID… [--metric NAME] [--source influx|sql] [--json]``.

The same table from InfluxDB (Flux, the default when ``INFLUXDB_V2_URL`` is set) or from the
relational store (embedded mode): per run, the epochs recorded, the best value of the metric
and its epoch, the last value and its epoch. Unknown runs are all named in one error line.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from collector.cli.output import print_table
from collector.comparison import (
    DEFAULT_METRIC,
    SOURCE_INFLUX,
    SOURCE_SQL,
    SOURCES,
    UNIT_ROUND,
    Comparison,
    ComparisonRow,
    compare_from_influx,
    compare_from_store,
    recorded_metrics,
)
from collector.config import Settings
from collector.errors import ConfigError

COLUMNS = ("RUN_ID", "EXPERIMENT", "MODE", "EPOCHS", "BEST", "BEST EPOCH", "LAST", "LAST EPOCH")


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "compare",
        help="compare runs on one metric: best and last value per run",
        description="Best and last value of one epoch metric per run, from InfluxDB (Flux) "
        "or the relational store. The metric is named as logged (val/acc@1) or by its canonical "
        "name (val_acc_1). Losses and errors are better when lower, other metrics when higher "
        "(--lower-is-better / --higher-is-better override).",
    )
    parser.add_argument("run_ids", metavar="RUN_ID", nargs="+", help="runs to compare")
    parser.add_argument(
        "--metric", default=DEFAULT_METRIC, help=f"epoch metric (default: {DEFAULT_METRIC})"
    )
    direction = parser.add_mutually_exclusive_group()
    direction.add_argument(
        "--higher-is-better",
        dest="higher",
        action="store_const",
        const=True,
        default=None,
        help="the largest value is the best (default: read from the metric's name)",
    )
    direction.add_argument(
        "--lower-is-better",
        dest="higher",
        action="store_const",
        const=False,
        help="the smallest value is the best",
    )
    parser.add_argument(
        "--source",
        choices=SOURCES,
        help="where to read (default: influx when INFLUXDB_V2_URL is set, else sql)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=compare_runs)


def compare_runs(args: argparse.Namespace, settings: Settings) -> int:
    comparison = build_comparison(
        settings, args.run_ids, args.metric, args.source, higher=getattr(args, "higher", None)
    )
    if args.json:
        print(json.dumps(comparison.to_dict(), indent=2))
    else:
        print_comparison(comparison)
        print_recorded_metrics(settings, comparison)
    return 0


def build_comparison(
    settings: Settings,
    run_ids: list[str],
    metric: str,
    source: str | None,
    *,
    higher: bool | None = None,
) -> Comparison:
    chosen = source or (SOURCE_INFLUX if settings.influx_enabled else SOURCE_SQL)
    if chosen == SOURCE_INFLUX:
        if not settings.influx_enabled:
            raise ConfigError("--source influx needs INFLUXDB_V2_URL (or use --source sql)")
        return compare_from_influx(settings, run_ids, metric, higher=higher)
    from collector.store import Store

    store = Store.from_settings(settings)
    try:
        return compare_from_store(store, run_ids, metric, higher=higher)
    finally:
        store.dispose()


def print_recorded_metrics(settings: Settings, comparison: Comparison) -> None:
    """One line naming what the runs without the metric did record (a misspelt or
    unrecorded --metric is otherwise only a column of dashes)."""
    missing = [row.run_id for row in comparison.rows if row.epochs == 0]
    if not missing:
        return
    names = recorded_metrics(settings, comparison.source, missing)
    whose = "this run" if len(missing) == 1 else "these runs"
    recorded = ", ".join(names) if names else "none"
    print(f"no {comparison.metric} in {len(missing)} run(s); metrics {whose} recorded: {recorded}")


def print_comparison(comparison: Comparison) -> None:
    direction = "higher" if comparison.higher_is_better else "lower"
    print(f"{comparison.metric} ({direction} is better), from {comparison.source}")
    print_table(COLUMNS, [_row(row) for row in comparison.rows])
    best = comparison.best
    if best is None:
        print(f"\nno run recorded {comparison.metric}")
    else:
        print(
            f"\nbest: {best.run_id} ({comparison.metric}={_number(best.best_value)} "
            f"at {best.unit} {best.best_epoch})"
        )
    if any(row.unit == UNIT_ROUND for row in comparison.rows):
        print(
            "federated runs: their EPOCHS count rounds of the clients' weighted aggregate "
            "(eval_acc, accuracy and val_acc name the same one; train_loss too); "
            "per round, server against aggregate: docs/recipes.md"
        )


def _row(row: ComparisonRow) -> list[str]:
    return [
        row.run_id,
        row.experiment,
        row.mode,
        str(row.epochs),
        _number(row.best_value),
        _count(row.best_epoch),
        _number(row.last_value),
        _count(row.last_epoch),
    ]


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)
