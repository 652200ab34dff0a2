"""``runwatch sync [RUN_ID] [--timeout S]``: ship every point the spool holds and InfluxDB has
not acknowledged (of every run, or of one run).

Re-shipping is harmless (InfluxDB overwrites a point with the same series and timestamp).
Streams a live recorder is still writing are left to that recorder's own shipper. A progress
bar is drawn when stdout is a terminal; otherwise one summary line is printed.
Run metadata a training could not store (its database was unavailable) is stored first, from
its journal (``collector.store.journal``); without InfluxDB that is all sync does.
Exit 0 when nothing is left to ship; 2 (one error line) when InfluxDB is not configured; 1 (one
error line) when the run is unknown, metadata could not be stored, or points remain because
InfluxDB failed or the time ran out.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TextIO

from collector.cli.argtypes import non_negative_float
from collector.config import Settings, mask_url
from collector.errors import RunwatchError

if TYPE_CHECKING:
    from collector.backlog import SyncResult


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "sync",
        help="store run metadata kept while the database was down, then ship spooled points "
        "InfluxDB has not acknowledged (all runs or one)",
    )
    parser.add_argument("run_id", nargs="?", metavar="RUN_ID", help="only this run")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help="give up after S seconds (what is left stays in the spool)",
    )
    parser.add_argument(
        "--prune",
        type=non_negative_float,
        default=None,
        metavar="DAYS",
        help="then delete the spool files InfluxDB acknowledged to the last point and nobody "
        "wrote to for DAYS days (0: as soon as they are shipped)",
    )
    parser.set_defaults(handler=run_sync)


def run_sync(args: argparse.Namespace, settings: Settings) -> int:
    from collector.backlog import ship_backlog  # the shipper: not for `runwatch --help`

    out = sys.stdout
    stored = store_journaled_metadata(settings, args.run_id)
    if stored and not settings.influx_url:
        return 0  # the metadata was all there was to do: points stay in the spool
    bar = ProgressBar(out) if out.isatty() else None
    result = ship_backlog(settings, args.run_id, bar, timeout_s=args.timeout)
    if bar is not None:
        bar.finish()
    print(summary(result, settings), file=out)
    if args.prune is not None:
        from collector.spool import prune_shipped

        pruned = prune_shipped(settings.spool_dir, timedelta(days=args.prune), args.run_id)
        size = sum(p.size for p in pruned)
        print(
            f"pruned {len(pruned)} spool file{'s' if len(pruned) != 1 else ''} "
            f"({_human(size)}) fully acknowledged by InfluxDB",
            file=out,
        )
    if result.error is not None:
        raise RunwatchError(
            f"could not ship everything to {mask_url(settings.influx_url or '')}: {result.error}; "
            f"{result.remaining_bytes} bytes stay in the spool (run `runwatch sync` again)"
        )
    return 0


def store_journaled_metadata(settings: Settings, run_id: str | None) -> bool:
    """Replay run metadata the database could not take while training (one line per run);
    True when there was some. Raises one RunwatchError line if some could not be stored."""
    from collector.store.journal import replay_journals

    replays = replay_journals(settings, run_id)
    for replay in replays:
        state = "complete" if replay.finished else "still open"
        print(
            f"stored {replay.replayed} metadata writes of run {replay.run_id} in "
            f"{mask_url(settings.db_url)} ({state})"
        )
    failed = [r for r in replays if r.error is not None]
    if failed:
        raise RunwatchError(
            f"run metadata of {', '.join(r.run_id for r in failed)} not stored "
            f"({failed[0].error}); it stays in the journal (run `runwatch sync` again)"
        )
    return bool(replays)


def summary(result: SyncResult, settings: Settings) -> str:
    runs = len(result.runs)
    text = (
        f"shipped {result.lines_shipped} points ({_human(result.bytes_shipped)}) of {runs} "
        f"run{'s' if runs != 1 else ''} to {mask_url(settings.influx_url or '')}"
    )
    if result.lines_rejected:
        text += f"; {result.lines_rejected} lines InfluxDB refused moved to .rejected files"
    if result.live_streams:
        text += f"; {result.live_streams} live streams left to their running recorder"
    if result.remaining_bytes:
        text += f"; {_human(result.remaining_bytes)} not shipped"
    if result.segments_compressed:
        text += f"; compressed {result.segments_compressed} finished spool segments"
    return text


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def render_bar(done: int, total: int, width: int = 30) -> str:
    """``[#####.....]  50%  1.0 MiB / 2.0 MiB``."""
    fraction = 1.0 if total <= 0 else min(1.0, max(0.0, done / total))
    filled = round(fraction * width)
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {fraction * 100:3.0f}%  "
        f"{_human(done)} / {_human(total)}"
    )


class ProgressBar:
    """A one-line bar redrawn in place (at most 10 times a second)."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._last_draw = 0.0
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        self._out.write("\r" + render_bar(done, total))
        self._out.flush()
        self._drawn = True

    def finish(self) -> None:
        if self._drawn:
            self._out.write("\n")
            self._out.flush()
