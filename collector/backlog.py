"""Shipping a spool's backlog: every point InfluxDB has not acknowledged, of every run (or of
one), batch by batch from each stream's acknowledged offset (``runwatch sync`` prints it).

Re-shipping is harmless (InfluxDB overwrites a point with the same series and timestamp).
Streams a live recorder is still writing are left to that recorder's own shipper. Finished
segments a recorder's ``close()`` left uncompressed are compressed once their stream is shipped
(or could not be).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from collector.config import Settings
from collector.errors import ConfigError, UnknownRunError
from collector.shipper import (
    PARALLEL_TUNING,
    ShipTuning,
    StreamShipper,
    WriteTarget,
    ship_until_caught_up,
    target_for,
)
from collector.spool import (
    SpoolStream,
    StreamReader,
    compress_finished_segments,
    is_live,
    list_streams,
    locked_for_reading,
    stream_backlog,
)

log = logging.getLogger("runwatch.sync")

Progress = Callable[[int, int], None]
"""Called with (bytes acknowledged so far, bytes to ship in all)."""


@dataclass
class RunSync:
    run_id: str
    lines_shipped: int = 0
    bytes_shipped: int = 0
    lines_rejected: int = 0
    remaining_bytes: int = 0
    live_streams: int = 0
    segments_compressed: int = 0
    """Finished spool segments this sync compressed (a recorder's close() leaves plain those
    its compression budget did not reach)."""


@dataclass
class SyncResult:
    runs: list[RunSync] = field(default_factory=list)
    error: str | None = None

    @property
    def lines_shipped(self) -> int:
        return sum(r.lines_shipped for r in self.runs)

    @property
    def bytes_shipped(self) -> int:
        return sum(r.bytes_shipped for r in self.runs)

    @property
    def lines_rejected(self) -> int:
        return sum(r.lines_rejected for r in self.runs)

    @property
    def remaining_bytes(self) -> int:
        return sum(r.remaining_bytes for r in self.runs)

    @property
    def live_streams(self) -> int:
        return sum(r.live_streams for r in self.runs)

    @property
    def segments_compressed(self) -> int:
        return sum(r.segments_compressed for r in self.runs)


def ship_backlog(
    settings: Settings,
    run_id: str | None = None,
    progress: Progress | None = None,
    *,
    timeout_s: float | None = None,
    tuning: ShipTuning | None = None,
    target: WriteTarget | None = None,
) -> SyncResult:
    """Ship the unacknowledged points of every run (or of ``run_id``); see module doc.

    Raises ``ConfigError`` without ``INFLUXDB_V2_URL`` and ``UnknownRunError`` when the spool
    holds nothing of ``run_id``. Failures to ship end up in ``SyncResult.error``.
    """
    if not settings.influx_url:
        raise ConfigError(
            f"INFLUXDB_V2_URL is not set: nothing to ship to (points stay in {settings.spool_dir})"
        )
    streams = list_streams(settings.spool_dir, run_id)
    if run_id is not None and not streams:
        raise UnknownRunError(run_id)
    tuning = tuning or PARALLEL_TUNING
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    total = sum(stream_backlog(s).unshipped_bytes for s in streams if not is_live(s))
    done = 0
    result = SyncResult()
    runs: dict[str, RunSync] = {}
    own_target = target is None
    write_target = target if target is not None else target_for(settings)
    if progress is not None:
        progress(0, total)
    try:
        for stream in streams:
            run = runs.get(stream.run_id)
            if run is None:
                run = runs[stream.run_id] = RunSync(stream.run_id)
                result.runs.append(run)
            with locked_for_reading(stream) as fd:
                if fd is None:
                    run.live_streams += 1
                    continue
                try:
                    with StreamReader(stream, head_fd=fd) as reader:
                        end, _ = reader.extent()
                    if result.error is not None:
                        run.remaining_bytes += max(0, end - stream_backlog(stream).acked)
                        continue
                    shipper = StreamShipper(stream, fd, write_target, tuning)
                    start_ack = min(shipper.acked, end)

                    def report(s: StreamShipper, base: int = done, first: int = start_ack) -> None:
                        if progress is not None:
                            progress(min(total, base + s.acked - first), total)

                    try:
                        outcome = ship_until_caught_up(
                            shipper,
                            _constant(end),
                            tuning=tuning,
                            deadline=lambda: deadline,
                            max_attempts=tuning.retry.max_attempts,
                            on_batch=report,
                        )
                    finally:
                        shipper.close()
                    done += max(0, shipper.acked - start_ack)
                    run.lines_shipped += shipper.lines_shipped
                    run.bytes_shipped += shipper.bytes_shipped
                    run.lines_rejected += shipper.lines_rejected
                    run.remaining_bytes += max(0, end - shipper.acked)
                    if not outcome.caught_up:
                        result.error = (
                            str(outcome.error) if outcome.error is not None else "time ran out"
                        )
                finally:  # what close() left plain (its compression budget ran out)
                    run.segments_compressed += _compress_leftovers(stream)
    finally:
        if own_target:
            write_target.close()
    return result


def _compress_leftovers(stream: SpoolStream) -> int:
    """``compress_finished_segments`` of a stream this sync holds; a failure (a full disk)
    leaves the plain segments as they are, all still readable, and is logged."""
    try:
        return compress_finished_segments(stream)
    except OSError as exc:
        log.warning("runwatch sync: spool segments of %s stay uncompressed: %s", stream.path, exc)
        return 0


def _constant(value: int) -> Callable[[], int]:
    return lambda: value


# --- command line ----------------------------------------------------------------------------
