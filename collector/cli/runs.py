"""``runwatch runs list|show|export``: what the relational store holds about runs.

Text output escapes non-printable characters in every cell (``collector.cli.output``);
``--json`` output is exact."""

from __future__ import annotations

import argparse
import csv
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from collector.cli.argtypes import positive_int, run_id_arg
from collector.cli.output import print_table, printable
from collector.config import Settings
from collector.errors import RunwatchError
from collector.schema import NONFINITE_SUFFIX

if TYPE_CHECKING:  # the store (SQLAlchemy, half a second) is imported where it is used
    from collector.store import RunSummary, Store
    from collector.store.records import RunListing

LIST_COLUMNS = ("RUN_ID", "EXPERIMENT", "MODE", "STATUS", "STARTED (UTC)", "DURATION", "HOST")
CSV_COLUMNS = (
    "run_id",
    "experiment",
    "metric_name",
    "value",
    "step",
    "dataset_type",
    "context",
    "client_id",
    "round",
    "recorded_at",
)
MAX_STEM = 120
_Read = TypeVar("_Read")
UNUSED_SETTINGS = ("influx", "prometheus")
"""Only the store is read: malformed InfluxDB or Prometheus variables never stop these."""


def register(sub: Any) -> None:
    parser = sub.add_parser("runs", help="list, show and export recorded runs")
    runs = parser.add_subparsers(dest="runs_command", metavar="ACTION", required=True)

    list_parser = runs.add_parser("list", help="list runs, newest first")
    list_parser.add_argument("--json", action="store_true", help="machine-readable output")
    list_parser.add_argument("--limit", type=positive_int, help="show at most N runs")
    list_parser.add_argument(
        "--since",
        type=since_arg,
        metavar="WHEN",
        help="runs started since WHEN: an ISO date or time (UTC unless it says otherwise) "
        "or a span back from now (30m, 12h, 7d)",
    )
    list_parser.add_argument("--experiment", metavar="NAME", help="runs of this experiment only")
    list_parser.set_defaults(handler=list_runs, unused_settings=UNUSED_SETTINGS)

    show = runs.add_parser("show", help="one run: settings, final stats, last metrics")
    show.add_argument("run_id", metavar="RUN_ID", type=run_id_arg)
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(handler=show_run, unused_settings=UNUSED_SETTINGS)

    export = runs.add_parser("export", help="write a run's metrics to a CSV or JSON file")
    export.add_argument("run_id", metavar="RUN_ID", type=run_id_arg)
    export.add_argument("--format", choices=("csv", "json"), required=True)
    export.add_argument("--out", type=Path, default=Path("."), help="directory (default: current)")
    for flag, (_measurements, what) in SPOOLED_KINDS.items():
        export.add_argument(
            f"--{flag}",
            action="store_true",
            help=f"also {what}, read from this machine's spool (every point recorded here, "
            "shipped or not; csv: one more file)",
        )
    export.set_defaults(handler=export_run, unused_settings=UNUSED_SETTINGS)


def list_runs(args: argparse.Namespace, settings: Settings) -> int:
    from collector.store import run_listing, sqlite_listing

    wanted = run_listing.ListingFilter(
        limit=args.limit, since=args.since, experiment=args.experiment
    )
    stale_after = timedelta(seconds=settings.stale_after_s)
    if args.json:
        document = sqlite_listing.listing_json(settings.db_url, wanted, stale_after=stale_after)
        if document is None:
            document = _with_store(settings, lambda store: store.listing_json(wanted))
        print(document)
        return 0
    listed = sqlite_listing.listing(settings.db_url, wanted, details=False, stale_after=stale_after)
    if listed is None:
        listed = _with_store(settings, lambda store: store.listing(wanted, details=False))
    if not listed:
        print("no runs recorded yet" if wanted == run_listing.ListingFilter() else "no runs match")
    else:
        print_table(LIST_COLUMNS, [_list_row(run) for run in listed])
    return 0


def _with_store(settings: Settings, read: Callable[[Store], _Read]) -> _Read:
    """The store's answer, where ``sqlite_listing`` cannot read the database as it is."""
    from collector.store import Store

    store = Store.from_settings(settings)
    try:
        return read(store)
    finally:
        store.dispose()


_SPAN = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_SPAN_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def since_arg(text: str) -> datetime:
    """``--since``: an ISO 8601 date or time (naive: UTC, as the listing shows) or a span
    back from now (``30m``, ``12h``, ``7d``, ``2w``)."""
    span = _SPAN.fullmatch(text.strip().lower())
    if span:
        seconds = float(span[1]) * _SPAN_SECONDS[span[2]]
        return datetime.now(UTC) - timedelta(seconds=seconds)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO date or time, nor a span like 12h or 7d: {text!r}"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def show_run(args: argparse.Namespace, settings: Settings) -> int:
    from collector.store import Store

    store = Store.from_settings(settings)
    try:
        summary = store.get_run(args.run_id)
        latest = LatestMetrics.of(store.latest_metric_steps(args.run_id, _latest_context(summary)))
    finally:
        store.dispose()
    if args.json:
        document = {
            **summary.to_dict(with_metrics=False),
            "latest_metrics": latest.values,
            "nonfinite_metrics": latest.nonfinite,
        }
        print(json.dumps(document, indent=2))
    else:
        print_summary(summary, latest)
    return 0


@dataclass(frozen=True)
class LatestMetrics:
    """Each metric's latest value; None where its latest epoch (round) was NaN or infinite,
    which the store keeps as a ``<name>_nonfinite`` flag beside the last finite value."""

    values: dict[str, float | None]
    nonfinite: dict[str, dict[str, float | int | None]]
    """name -> ``step`` (its latest, non-finite), ``last_finite_value``, ``last_finite_step``."""

    @classmethod
    def of(cls, latest: Mapping[str, tuple[int, float]]) -> LatestMetrics:
        values: dict[str, float | None] = {}
        nonfinite: dict[str, dict[str, float | int | None]] = {}
        flags = {
            name.removesuffix(NONFINITE_SUFFIX): step
            for name, (step, _flag) in latest.items()
            if name.endswith(NONFINITE_SUFFIX)
        }
        for name, (_step, value) in latest.items():
            if not name.endswith(NONFINITE_SUFFIX):
                values[name] = value
        for name, flag_step in flags.items():
            finite = latest.get(name)
            if finite is not None and finite[0] > flag_step:
                continue  # finite again since
            values[name] = None
            nonfinite[name] = {
                "step": flag_step,
                "last_finite_value": None if finite is None else finite[1],
                "last_finite_step": None if finite is None else finite[0],
            }
        return cls(dict(sorted(values.items())), nonfinite)

    def rows(self, unit: str) -> list[tuple[str, str]]:
        shown = []
        for name, value in self.values.items():
            if value is not None:
                shown.append((name, _number(value)))
                continue
            flag = self.nonfinite[name]
            text = f"NaN/Inf at {unit} {flag['step']}"
            if flag["last_finite_value"] is not None:
                last = _number(float(flag["last_finite_value"]))
                text += f" (last finite {last} at {unit} {flag['last_finite_step']})"
            shown.append((name, text))
        return shown


def export_run(args: argparse.Namespace, settings: Settings) -> int:
    from collector.store import Store

    store = Store.from_settings(settings)
    try:
        summary = store.get_run(args.run_id, with_metrics=True)
        evaluations = store.server_evaluations(args.run_id)
    finally:
        store.dispose()
    stem = f"{summary.experiment}_{summary.run_id}"
    target = export_path(args.out, stem, args.format)
    spooled = {
        flag: spooled_rows(settings, summary.run_id, measurements)
        for flag, (measurements, _what) in SPOOLED_KINDS.items()
        if getattr(args, flag, False)
    }
    if args.format == "json":
        document = {
            **summary.to_dict(),
            "server_evaluations": [e.to_dict() for e in evaluations],
            **spooled,
        }
        target.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        print(target)
        return 0
    write_metrics_csv(target, summary)
    print(target)
    for flag, rows in spooled.items():
        extra = export_path(args.out, f"{stem}_{flag}", "csv")
        write_rows_csv(extra, rows)
        print(extra)
    return 0


SPOOLED_KINDS: dict[str, tuple[frozenset[str], str]] = {
    "batches": (frozenset({"batch"}), "the batch points"),
    "gradients": (frozenset({"gradient", "gradient_layer"}), "the gradient-norm points"),
    "events": (frozenset({"event"}), "the events"),
}
"""``runs export`` flag -> the measurements it adds, and what they are (for the help)."""
_RUN_TAGS = frozenset({"run_id", "experiment", "mode"})


def spooled_rows(
    settings: Settings, run_id: str, measurements: frozenset[str]
) -> list[dict[str, Any]]:
    """The run's points of ``measurements`` in this machine's spool, oldest first, as rows:
    ``time`` (UTC, ISO 8601), ``measurement``, the tags beyond the run's own, the fields."""
    from collector.spooled_points import read_points

    points = sorted(read_points(settings.spool_dir, run_id, measurements), key=lambda p: p.time_ns)
    return [
        {
            "time": _iso_ns(point.time_ns),
            "measurement": point.measurement,
            **{k: v for k, v in point.tags.items() if k not in _RUN_TAGS},
            **point.fields,
        }
        for point in points
    ]


def write_rows_csv(target: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with target.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns or ["time", "measurement"])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})


def _iso_ns(time_ns: int) -> str:
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


def safe_stem(name: str) -> str:
    """A file name stem made only of ``A-Za-z0-9._-``, never empty, never starting with a dot."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[:MAX_STEM]
    return stem or "run"


def export_path(out_dir: Path, name: str, suffix: str) -> Path:
    """A path inside ``out_dir`` whatever ``name`` holds (``../../x``, ``/etc/x``, NUL...)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunwatchError(
            f"cannot create output directory {out_dir}: {exc.strerror or exc}"
        ) from None
    root = out_dir.resolve()
    target = (root / f"{safe_stem(name)}.{suffix}").resolve()
    if target.parent != root:
        raise RunwatchError(f"refusing to write outside {root}: {target}")
    return target


def write_metrics_csv(target: Path, summary: RunSummary) -> None:
    with target.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for m in summary.metrics:
            writer.writerow(
                (
                    summary.run_id,
                    summary.experiment,
                    m.name,
                    repr(m.value),
                    m.step,
                    m.dataset_type,
                    m.context,
                    m.client_id or "",
                    "" if m.round_number is None else m.round_number,
                    m.recorded_at.isoformat(),
                )
            )


def print_summary(summary: RunSummary, latest: LatestMetrics) -> None:
    fields = [
        ("run_id", summary.run_id),
        ("experiment", summary.experiment),
        ("mode", summary.mode),
        ("status", summary.status),
        ("started", _when(summary.start_time)),
        ("ended", _when(summary.end_time)),
        ("last heartbeat", _when(summary.heartbeat_at)),
        ("duration", _duration(summary.duration_s)),
        ("host", summary.host or "-"),
        ("source", summary.source_path or "-"),
    ]
    if summary.clients:
        fields.append(("clients", ", ".join(_client_label(summary, c) for c in summary.clients)))
    if summary.rounds:
        fields.append(("rounds", str(len(summary.rounds))))
    print_table(("FIELD", "VALUE"), fields)
    _section("Hyperparameters", [(k, json.dumps(v)) for k, v in summary.hyperparams.items()])
    _section("Final stats", [(k, _number(v)) for k, v in summary.final_stats.items()])
    _section(
        "Last round, clients' aggregate" if _federated(summary) else "Last epoch metrics",
        latest.rows("round" if _federated(summary) else "epoch"),
    )
    _section(
        "Artifacts",
        [
            (a.kind, a.path, _artifact_detail(a.epoch, a.metric_name, a.metric_value))
            for a in summary.artifacts
        ],
    )


def _federated(summary: RunSummary) -> bool:
    return summary.mode == "federated"


def _latest_context(summary: RunSummary) -> str:
    """Federated runs have no epochs of their own: their latest values are the last round's
    aggregate of the clients' metrics, under their federated names (``val_acc``...)."""
    return "aggregated" if _federated(summary) else "epoch_end"


def _client_label(summary: RunSummary, client_id: str) -> str:
    partition = summary.client_partitions.get(client_id)
    return client_id if partition is None else f"{client_id} (partition {partition})"


def _section(title: str, rows: Sequence[Sequence[str]]) -> None:
    if not rows:
        return
    rows = [[printable(cell) for cell in row] for row in rows]
    print(f"\n{title}")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  "
            + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _list_row(run: RunListing) -> list[str]:
    return [
        run.run_id,
        run.experiment,
        run.mode,
        run.status,
        _when(run.start_time),
        _duration(run.duration_s),
        run.host or "-",
    ]


def _when(moment: datetime | None) -> str:
    # isoformat: a tenth of strftime's cost, which 10,000 listed runs notice
    return moment.isoformat(" ", "seconds")[:19] if moment is not None else "-"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _number(value: float) -> str:
    return f"{value:.6g}"


def _artifact_detail(epoch: int | None, metric: str | None, value: float | None) -> str:
    parts = [] if epoch is None else [f"epoch {epoch}"]
    if metric is not None:
        parts.append(f"{metric}={'-' if value is None else _number(value)}")
    return ", ".join(parts)
