"""The Recorder: the one object trainers and adapters write time-series points through.

::

    from collector import Recorder

    with Recorder(run_id, experiment="pneumonia", mode="centralized") as rec:
        rec.record("batch", {"loss": loss, "step": step})      # never raises
        rec.event("checkpoint", text="epoch=3.ckpt")

``record()`` queues the point's values in memory (a copy of its fields, well under a µs) and
the line of line protocol is built when the queue is appended to the run's spool file
(``collector.spool``) by a background thread every ``flush_interval_s`` and as soon as
``flush_lines`` points wait; ``record()`` appends them itself only once ``queue_limit`` wait
(the flusher fell behind). Those bound what a crash loses. Only plain
``float``/``int`` values are queued as they are; any other value (a tensor, a numpy scalar,
text) makes ``record()`` build the line at once, so no tensor (and its autograd graph) is kept
alive by the queue. ``record_series()`` queues several points of one measurement (a gradient
norm per layer) as one entry; ``record_later()`` queues a function that makes points when the
flush builds them. Each entry of plain values is one object Python's cyclic collector
tracks, nothing under it (dicts of numbers and tuples of them it does not track; lists it
always does): objects tracked while they wait are promoted into the collector's oldest
generation, and enough of them trigger its full collections, ~0.2 s each next to torch and
Lightning. A ``record_later`` entry holds a function, tracked until the flush. A shipper
thread (``collector.shipper``) posts the spool to InfluxDB; the training thread never waits
on the network. With no ``INFLUXDB_V2_URL`` the spool is all there is: ``runwatch sync``
ships it later. Every point carries the tags ``run_id``, ``experiment`` and ``mode``.

Observers (the Prometheus exporter) see each point's finite, normalised fields (and
``<field>_nonfinite`` flags) in recording order when its line is built and appended to the
spool, never on the training thread's ``record()``: at most ``flush_interval_s`` later, or
sooner when the observer asks (an observer with ``read_pending(flush)`` gets the recorder's
``flush`` and calls it before it is read: the exporter does at each scrape, so a scrape sees
every point recorded before it). An observer with an ``observed_measurements`` attribute sees
only those measurements; one with ``observe_many`` gets each flush's points in one call. An
observer that raises is logged once and otherwise ignored. The
recorder never owns an exporter: a run (``collector.run.Run``) starts one and passes it here as
an observer.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from operator import itemgetter
from types import TracebackType
from typing import Any, NamedTuple, Protocol, cast, runtime_checkable

from orjson import dumps as _json

from collector import schema
from collector.config import Settings, load_settings
from collector.ids import validate_run_id
from collector.pending import PendingPoints
from collector.pending import compiled as pending_compiled
from collector.points import (
    PointBuilder,
    ProblemLog,
    normalise_name,
    to_time_ns,
)
from collector.shipper import PARALLEL_TUNING, ShipperThread, ShipTuning, target_for
from collector.spool import DEFAULT_SEGMENT_BYTES, SpoolWriter

log = logging.getLogger("collector.recorder")
_NUMBERS = frozenset((float, int))
"""Types of field values queued as they are, for the flush to build their lines (immutable, so
the line holds the value at ``record()``; a bool is not one). Checked with
``_NUMBERS.issuperset(map(type, values))``: one call, looping in C."""
_FLOATS = frozenset((float,))


@runtime_checkable
class PointObserver(Protocol):
    """Sees every recorded point, in order, when the recorder appends it to the spool (of the
    measurements in its optional ``observed_measurements``, when it has that attribute). One
    with a ``read_pending(flush)`` method is handed the recorder's ``flush`` to call before
    it is read, so what it shows includes every point recorded so far. One with an
    ``observe_many(points)`` method gets a flush's points in one call instead, as a list of
    ``(measurement, fields, tags)`` in recording order.

    Field names are normalised; values are finite, and a NaN/Inf value arrives as
    ``<field>_nonfinite=1.0`` (as it is written), so a gauge can show it.
    """

    def observe(
        self, measurement: str, fields: Mapping[str, float], tags: Mapping[str, str]
    ) -> None: ...


def observed_measurements(observer: object) -> frozenset[str] | None:
    """The measurements an observer asks for (its optional ``observed_measurements``
    attribute); None: every measurement. Points nobody observes skip observation."""
    wanted = getattr(observer, "observed_measurements", None)
    return None if wanted is None else frozenset(wanted)


@dataclass(frozen=True)
class RecorderTuning:
    """Knobs with defaults that meet the design targets; tests shorten them."""

    flush_lines: int = 1_000
    """Queued points that wake the flusher thread to append them now."""
    queue_limit: int = 4_000
    """Queued points that make ``record()`` append them itself (the flusher fell behind)."""
    flush_interval_s: float = 0.5
    """How often the background flusher appends queued points (the SIGKILL loss bound)."""
    exit_ship_timeout_s: float = 2.0
    """Shipping time granted at interpreter exit to a recorder nobody closed."""
    segment_bytes: int = DEFAULT_SEGMENT_BYTES
    """Plain spool bytes per segment; each finished one is compressed in the background."""
    ship: ShipTuning = PARALLEL_TUNING


@dataclass(frozen=True)
class RecorderStats:
    points_recorded: int
    """Points accepted into the pipeline (queued for the spool)."""
    points_dropped: int
    """Points dropped whole: invalid input, recorder closed, spool unwritable."""
    fields_dropped: int
    nonfinite_fields: int
    points_spooled: int
    """Points written to the spool file."""
    points_shipped: int
    """Lines InfluxDB acknowledged (a resumed stream counts its old backlog too)."""
    points_rejected: int
    """Lines InfluxDB refused (malformed, type conflict, beyond retention: moved to
    ``<run>.rejected``); not counted in ``points_shipped``."""
    spool_backlog_bytes: int
    """Spooled bytes InfluxDB has not acknowledged yet."""
    spool_path: str | None
    last_error: str | None


class Recorder:
    """Records points for one run: spool first, InfluxDB when configured. See module doc."""

    def __init__(
        self,
        run_id: str,
        *,
        experiment: str,
        mode: str = schema.MODE_CENTRALIZED,
        settings: Settings | None = None,
        tags: Mapping[str, str] | None = None,
        observers: Sequence[PointObserver] = (),
        tuning: RecorderTuning | None = None,
    ) -> None:
        validate_run_id(run_id)  # it names the run's spool files
        if not experiment:
            raise ValueError("experiment must be a non-empty string")
        if mode not in schema.MODES:
            raise ValueError(f"mode must be one of {schema.MODES}, got {mode!r}")
        self.run_id = run_id
        self.experiment = experiment
        self.mode = mode
        self.settings = settings if settings is not None else load_settings()
        self.tuning = tuning or RecorderTuning()
        self._problems = ProblemLog()
        base: dict[str, object] = {
            schema.RUN_ID: run_id,
            schema.EXPERIMENT: experiment,
            schema.MODE: mode,
        }
        for key, value in (tags or {}).items():
            if normalise_name(key) in schema.BASE_TAGS:
                log.warning("runwatch: ignored extra tag %r: the Recorder sets it", key)
            else:
                base[key] = value
        self._builder = PointBuilder(base, self._problems)
        self._build = self._builder.build
        self._line_caches = self._builder.line_caches()
        self._flush_lines = self.tuning.flush_lines
        self._queue_limit = max(self.tuning.flush_lines, self.tuning.queue_limit)
        self.base_tags: Mapping[str, str] = self._builder.base_tags
        self._observers = list(observers)
        self._broken_observers: set[int] = set()
        wanted: set[str] = set()
        for observer in self._observers:
            measurements = observed_measurements(observer)
            wanted.update(schema.MEASUREMENTS if measurements is None else measurements)
        self._observed = frozenset(wanted)
        """Measurements some observer sees: only their points pay for observation."""
        self._observer_filters: list[tuple[PointObserver, frozenset[str] | None]] = []
        """Each observer with the measurements it asked for (None: all that are observed)."""
        for observer in self._observers:
            measurements = observed_measurements(observer)
            if measurements is not None and measurements >= self._observed:
                measurements = None
            self._observer_filters.append((observer, measurements))
        self._measurements = frozenset(schema.MEASUREMENTS)
        self._queue = PendingPoints(
            deque(),
            self._measurements,
            self._observed,
            self._flush_lines,
            self._queue_full,
            _Series,
        )
        """The points waiting for the flusher, the last timestamp and the counts."""
        self._write_lock = threading.Lock()
        self._spooled = 0
        self._lost = 0
        self._close_lock = threading.Lock()
        self.last_error: str | None = None

        self._writer: SpoolWriter | None = None
        self._shipper: ShipperThread | None = None
        try:
            self._writer = SpoolWriter.open(
                self.settings.spool_dir, run_id, segment_bytes=self.tuning.segment_bytes
            )
        except OSError as exc:
            self._fail(f"cannot open the spool in {self.settings.spool_dir}: {exc}")
        if self._writer is not None and self.settings.influx_url:
            self._shipper = ShipperThread(
                self._writer.stream,
                self._spooled_offset,
                target_for(self.settings),
                self.tuning.ship,
            )
        self._stop_flusher = threading.Event()
        self._flush_now = threading.Event()
        self._flusher = threading.Thread(
            target=self._flush_periodically, name=f"runwatch-flusher-{run_id}", daemon=True
        )
        self._flusher.start()
        for observer in self._observers:
            read_pending = getattr(observer, "read_pending", None)
            if callable(read_pending):
                read_pending(_flush_while_alive(self))
        _close_at_exit(self)

    # --- recording (training thread) -------------------------------------------------------

    def record(
        self,
        measurement: str,
        fields: Mapping[str, object],
        tags: Mapping[str, object] | None = None,
        time: int | float | datetime | None = None,
    ) -> None:
        """Record one point. Never raises; bad input is dropped, counted and warned once."""
        try:
            queue = self._queue
            if time is None and queue.put(measurement, fields, tags):
                return  # plain numbers of a dict, queued by the compiled module
            if queue.closed:
                self._problems.dropped_points += 1
                self._problems.warn_once(
                    "closed", self.run_id, f"recorder of run {self.run_id} is closed"
                )
                return
            time_ns = queue.stamp() if time is None else self._explicit_ns(time)
            if measurement in self._measurements and _NUMBERS.issuperset(
                map(type, fields.values())
            ):
                # plain numbers: the flush builds the line, off this thread if it can
                queue.add((measurement, dict(fields), dict(tags) if tags else None, time_ns))
                return
            line, observed, all_tags = self._build(
                measurement, fields, tags, time_ns, measurement in self._observed
            )
            if line is None:
                return
            if observed is not None and all_tags is not None:
                queue.add(_Built(line, measurement, observed, all_tags))
            else:
                queue.add(line)
        except Exception as exc:  # telemetry never raises into training
            self._internal_error(exc)

    def record_series(
        self,
        measurement: str,
        field: str,
        values: Sequence[float],
        tag: str,
        tag_values: Sequence[str],
        common: Mapping[str, float] | None = None,
        *,
        head: tuple[str, Mapping[str, float]] | None = None,
    ) -> None:
        """One point per value, in one call: ``{field: value, **common}`` tagged
        ``tag=tag_value`` (a gradient norm per layer), with consecutive timestamps; the same
        points as that many ``record()`` calls, at one call's cost on this thread. ``head``,
        a (measurement, fields) point, is recorded just before them in the same call: what
        sums them up (the ``gradient`` point before its layers'). Never raises."""
        try:
            if self._queue.put_series(measurement, field, values, tag, tag_values, common, head):
                return  # plain numbers, queued by the compiled module
            count = min(len(values), len(tag_values))
            plain = (
                measurement in self._measurements
                and not self._queue.closed
                and _FLOATS.issuperset(map(type, values))
                and (common is None or _NUMBERS.issuperset(map(type, common.values())))
                and (
                    head is None
                    or (
                        head[0] in self._measurements
                        and _NUMBERS.issuperset(map(type, head[1].values()))
                    )
                )
            )
            if not plain or not count:
                if head is not None:
                    self.record(*head)
                for index in range(count):
                    self.record(
                        measurement,
                        {field: values[index], **(common or {})},
                        {tag: tag_values[index]},
                    )
                return
            first_ns = self._queue.stamp(count + 1 if head is not None else count)
            if head is not None:  # as record() queues a plain point
                head_fields: dict[str, object] = dict(head[1])
                self._queue.add((head[0], head_fields, None, first_ns))
                first_ns += 1
            if measurement not in self._observed and not (common and field in common):
                series = _Series(
                    (measurement, (field, *(common or ())), tag),
                    tuple(values[:count]),
                    tuple(tag_values[:count]),
                    tuple(common.values()) if common else (),
                    first_ns,
                )
                self._queue.add(series, count)
                return
            points = partial(
                _series_points,
                measurement,
                field,
                list(values[:count]),
                tag,
                list(tag_values[:count]),
                dict(common) if common else None,
            )
            self._queue.add(_Later(points, count, first_ns), count)
        except Exception as exc:  # telemetry never raises into training
            self._internal_error(exc)

    def record_later(self, make_points: MakePoints, count: int) -> None:
        """Up to ``count`` points that ``make_points()`` returns as (measurement, fields,
        tags) when the next flush builds lines, off this thread when it can: for points
        derived from values at hand (the summary of a step's gradient norms), at one call's
        cost here. They are stamped now, in order, like that many ``record()`` calls.
        ``make_points`` must only read what nobody changes afterwards; if it raises, its
        points are dropped, counted and warned once. Never raises."""
        try:
            if count < 1:
                return
            if self._queue.closed:
                self._problems.dropped_points += count
                self._problems.warn_once(
                    "closed", self.run_id, f"recorder of run {self.run_id} is closed"
                )
                return
            self._queue.add(_Later(make_points, count, self._queue.stamp(count)), count)
        except Exception as exc:  # telemetry never raises into training
            self._internal_error(exc)

    def event(
        self,
        name: str,
        text: str = "",
        value: float = 1.0,
        tags: Mapping[str, object] | None = None,
    ) -> None:
        """Record an ``event`` point (Grafana annotation); ``name`` is normalised."""
        event_name = normalise_name(name)
        if event_name is None:
            self._problems.dropped_points += 1
            self._problems.warn_once("event", str(name), f"dropped event with empty name {name!r}")
            return
        event_tags: dict[str, object] = {**(tags or {}), schema.EVENT: event_name}
        self.record(schema.M_EVENT, {schema.TEXT: text, schema.VALUE: value}, event_tags)

    def _internal_error(self, exc: Exception) -> None:
        """A bug of ours met while recording: the point is dropped and counted, warned once."""
        self._problems.dropped_points += 1
        self._problems.warn_once(
            "internal", type(exc).__name__, f"recorder error {type(exc).__name__}: {exc}"
        )

    def _explicit_ns(self, value: object) -> int:
        converted = to_time_ns(value)
        if converted is None:
            self._problems.warn_once(
                "time",
                type(value).__name__,
                f"unusable time={value!r} (int ns, float s or datetime expected); used now",
            )
            return self._queue.stamp()
        return converted

    def _notify(self, observations: list[_Observation]) -> None:
        """Show a flush's points to each observer, in order: all at once to one with
        ``observe_many``, else one by one."""
        for observer, wanted in self._observer_filters:
            points = observations
            if wanted is not None:
                points = [point for point in observations if point[0] in wanted]
            if not points:
                continue
            observe_many = getattr(observer, "observe_many", None)
            if callable(observe_many):
                try:
                    observe_many(points)
                except Exception as exc:
                    self._observer_failed(observer, exc)
                continue
            for measurement, fields, tags in points:
                try:
                    observer.observe(measurement, fields, tags)
                except Exception as exc:
                    self._observer_failed(observer, exc)

    def _observer_failed(self, observer: PointObserver, exc: Exception) -> None:
        if id(observer) not in self._broken_observers:
            self._broken_observers.add(id(observer))
            log.warning(
                "runwatch: observer %r failed (%s: %s); its errors are ignored from now on",
                observer,
                type(exc).__name__,
                exc,
            )

    # --- spool -----------------------------------------------------------------------------

    def _spooled_offset(self) -> int:
        writer = self._writer
        return writer.written if writer is not None else 0

    def _drain(self) -> None:
        with self._write_lock:
            pending = self._queue.entries
            count = len(pending)
            if not count:
                return
            self._queue.extra = 0
            queued = [pending.popleft() for _ in range(count)]
            observations: list[_Observation] = []
            data, points = self._queued_bytes(queued, observations)
            self._append_bytes(data, points)
            # Observers see the points in order, under the lock: a scrape that flushes first
            # and the flusher thread never interleave them.
            if observations:
                self._notify(observations)

    def _append_bytes(self, data: bytes, count: int) -> None:
        """Spool ``count`` points' lines."""
        writer = self._writer
        if writer is None:
            self._lost += count
            return
        try:
            writer.append(data)
        except OSError as exc:
            self._lost += count
            self._fail(f"spool write failed, {count} points lost: {exc}")
            return
        self._spooled += count

    def _queued_bytes(
        self, queued: list[_Pending], observations: list[_Observation]
    ) -> tuple[bytes, int]:
        """The queue's lines as UTF-8 in recording order and how many points they hold, what
        observers see of them appended to ``observations``. The compiled builder
        (``_compiled_lines``) writes each run of entries it takes; an entry it declines goes
        through the Python path (``_lines``), which resolves its fields and tags for the
        entries after it: a new measurement or a NaN costs the flush that entry's Python
        build, not the whole queue's. Where the compiled builder then takes no more entries
        than the Python path took last, the Python path takes twice as many: a queue dense
        with entries it declines costs a few calls more than the Python path alone, not two
        per entry."""
        chunks: list[bytes] = []
        points = 0
        start, end = 0, len(queued)
        python_run = 0  # entries the Python path took last
        while start < end:
            compiled = self._compiled_lines(queued, start)
            if compiled is None:
                stop = end
            else:
                data, count, seen, declined = compiled
                taken = declined - start
                if taken:
                    chunks.append(data)
                    points += count
                    observations.extend(seen)
                    start = declined
                run = 1 if taken > python_run else max(1, 2 * python_run)
                stop = min(end, start + run)
            if start < stop:
                texts, count = self._lines(queued[start:stop], observations)
                chunks.append("".join(texts).encode("utf-8", "replace"))
                points += count
                python_run = stop - start
            start = stop
        return b"".join(chunks), points

    def _compiled_lines(
        self, queued: list[_Pending], start: int
    ) -> tuple[bytes, int, list[_Observation], int] | None:
        """What ``_lines`` makes of ``queued[start:stop]``, as bytes, by the compiled module
        (``collector._lines``), and ``stop``: the first entry that needs the Python path
        (``_queued_bytes``), or the queue's end. It takes plain points, series and built
        lines whose fields and tags the builder has resolved before. None when it is not
        built or it declines the rest of the queue (a text it cannot encode)."""
        if _queued_lines is None:
            return None
        try:
            return _queued_lines(queued, start, *self._line_caches, self._observed)
        except Exception:  # a failure of its own (memory): the Python path writes the rest
            return None

    def _lines(
        self, queued: list[_Pending], observations: list[_Observation]
    ) -> tuple[list[str], int]:
        """The queued points' lines as texts in recording order (those queued as values
        built now, with the points ``record_later`` functions make), how many points they
        hold, and what observers see of them, in order. Points of one measurement and field
        order are formatted together across the whole queue (``PointBuilder.plain_rows``):
        a step's ``batch``, ``gradient`` and per-layer points each join the other steps'
        points of their kind (``record_series`` entries as columns: ``_series_lines``); each
        run of consecutive points of one shape then goes in as one text. A point that turns
        out invalid is dropped and no longer counted as recorded."""
        groups: dict[_Shape | _SeriesShape, list[Any]] = {}
        """Points (or series) of one shape, in order."""
        segments: list[_Pending | _Run] = []
        """Queued texts, ``_Built`` points and runs of points of one shape, in order."""
        shape: _Shape | _SeriesShape | None = None  # of the run under way
        group: list[Any] = []  # every point (or series) of that shape so far
        start = 0  # where the run began in it
        for entry in self._made_in_place(queued):
            kind = type(entry)
            if kind is tuple:
                point: _MadePoint = entry  # type: ignore[assignment]  # (no cast() call here)
                entry_shape: _Shape | _SeriesShape = (point[0], tuple(point[1]))
            elif kind is _Series:
                entry_shape = cast(_Series, entry).shape
            else:  # a built line: it ends the run under way
                if shape is not None:
                    segments.append((shape, start, len(group)))
                    shape = None
                segments.append(cast(_Pending, entry))
                continue
            if entry_shape != shape:
                if shape is not None:
                    segments.append((shape, start, len(group)))
                shape = entry_shape
                known = groups.get(shape)
                if known is None:
                    known = groups[shape] = []
                group, start = known, len(known)
            group.append(entry)
        if shape is not None:
            segments.append((shape, start, len(group)))
        made = {
            key: self._series_lines(members)
            if len(key) == 3
            else self._group_lines(key[0], members)
            for key, members in groups.items()
        }
        texts: list[str] = []
        points = 0
        for segment in segments:
            if type(segment) is tuple:  # a run: every queued point tuple went into one
                run_shape, run_start, run_stop = cast(_Run, segment)
                points += made[run_shape].add(run_start, run_stop, texts, observations)
            elif type(segment) is _Built:
                texts.append(segment.line)
                observations.append((segment.measurement, segment.observed, segment.tags))
                points += 1
            else:
                texts.append(cast(str, segment))
                points += 1
        return texts, points

    def _group_lines(self, measurement: str, points: list[_MadePoint]) -> _GroupLines:
        """The lines (and observations) of points of one measurement and field order:
        formatted together when all are plain finite numbers under known fields, else point
        by point."""
        observe = measurement in self._observed
        if len(points) > 1:
            try:
                made = self._builder.plain_rows(
                    measurement,
                    list(map(_FIELDS, points)),
                    list(map(_TIME, points)),
                    list(map(_TAGS, points)),
                    observe,
                )
            except Exception:  # build() reports it, point by point
                made = None
            if made is not None:
                observed: list[_Observation | None] | None = None
                if made.observed is not None and made.tags is not None:
                    observed = [
                        (measurement, fields, all_tags)
                        for fields, all_tags in zip(made.observed, made.tags, strict=True)
                    ]
                return _GroupLines(made.text, len(points), None, observed)
        lines: list[str] = []
        seen: list[_Observation | None] = []
        for point in points:
            line, seen_one = self._point_line(*point)
            lines.append(line or "")
            seen.append(seen_one)
        return _GroupLines("".join(lines), len(points), lines, seen if observe else None)

    def _series_lines(self, entries: list[_Series]) -> _GroupLines:
        """The lines of ``record_series`` entries of one shape, one text per entry when
        cut: formatted together when all their values are finite, else point by point."""
        measurement, names, tag = entries[0].shape
        sizes = [len(entry.values) for entry in entries]
        text = None
        try:
            text = self._builder.plain_series(measurement, names, tag, *_series_columns(entries))
        except Exception:  # build() reports it, point by point
            text = None
        if text is not None:
            return _GroupLines(text, len(entries), None, None, sizes)
        each: list[str] = []
        written: list[int] = []
        for entry in entries:
            lines = [self._point_line(*point)[0] for point in _points_of_series(entry)]
            each.append("".join(line for line in lines if line))
            written.append(sum(1 for line in lines if line))
        return _GroupLines("".join(each), len(entries), each, None, written)

    def _made_in_place(self, queued: list[_Pending]) -> list[_Pending | _MadePoint]:
        """The queue with each ``record_later`` entry replaced by the points it makes."""
        if _Later not in map(type, queued):
            return queued  # type: ignore[return-value]
        expanded: list[_Pending | _MadePoint] = []
        for entry in queued:
            if type(entry) is _Later:
                expanded.extend(self._made_points(entry))
            else:
                expanded.append(entry)
        return expanded

    def _made_points(self, later: _Later) -> list[_MadePoint]:
        """What ``later.make`` returns, stamped; none (dropped and counted) when it raises."""
        try:
            made = [
                (measurement, fields, tags, later.time_ns + index)
                for index, (measurement, fields, tags) in enumerate(
                    itertools.islice(later.make(), later.limit)
                )
            ]
        except Exception as exc:
            made = []
            self._problems.dropped_points += later.limit
            self._problems.warn_once(
                "later",
                type(exc).__name__,
                f"record_later: {_name_of(later.make)} raised {type(exc).__name__}: {exc}; "
                f"its {later.limit} points are dropped",
            )
        self._queue.recorded -= later.limit - len(made)
        return made

    def _point_line(
        self,
        measurement: str,
        fields: Mapping[str, object],
        tags: Mapping[str, object] | None,
        time_ns: int,
    ) -> tuple[str | None, _Observation | None]:
        """One point's line and what observers see of it; no line when the point was
        dropped."""
        try:
            line, observed, all_tags = self._build(
                measurement, fields, tags, time_ns, measurement in self._observed
            )
        except Exception as exc:
            line = observed = all_tags = None
            self._internal_error(exc)
        if line is None:
            self._queue.recorded -= 1
            return None, None
        if observed is not None and all_tags is not None:
            return line, (measurement, observed, all_tags)
        return line, None

    def _queue_full(self) -> None:
        """``flush_lines`` points wait: wake the flusher (building lines is its work, not the
        training thread's), or append them here once ``queue_limit`` wait."""
        if len(self._queue.entries) + self._queue.extra >= self._queue_limit:
            self._drain()
        elif not self._flush_now.is_set():
            self._flush_now.set()

    def _flush_periodically(self) -> None:
        interval = self.tuning.flush_interval_s
        while True:
            self._flush_now.wait(interval)
            self._flush_now.clear()
            if self._stop_flusher.is_set():
                return
            self._flush_quietly()

    def _flush_quietly(self) -> None:
        try:
            self.flush()
        except Exception as exc:
            self._fail(f"flush failed: {type(exc).__name__}: {exc}")

    def _fail(self, message: str) -> None:
        self.last_error = message
        self._problems.warn_once("spool", message.split(":")[0], message)

    def flush(self) -> None:
        """Append queued points to the spool (durable against a crash of this process) and
        wake the shipper. Cheap; never raises."""
        try:
            self._drain()
            if self._shipper is not None:
                self._shipper.nudge()
        except Exception as exc:
            self._fail(f"flush failed: {type(exc).__name__}: {exc}")

    def close(self, timeout: float = 10.0) -> None:
        """Flush, fsync, then ship for at most ``timeout`` seconds; what is left stays in the
        spool for ``runwatch sync``. Idempotent; never raises."""
        with self._close_lock:
            if self._queue.closed:
                return
            self._queue.closed = True
        try:
            self._stop_flusher.set()
            self._flush_now.set()
            if self._flusher is not threading.current_thread():
                self._flusher.join(timeout=5.0)
            self._drain()
            if self._writer is not None:
                self._writer.sync()
            if self._shipper is not None and not self._shipper.close(timeout):
                remaining = self._spooled_offset() - self._shipper.acked
                if remaining > 0:
                    log.warning(
                        "runwatch: %d bytes of run %s not shipped before close (%s); "
                        "`runwatch sync` ships them",
                        remaining,
                        self.run_id,
                        self._shipper.last_error or "timeout",
                    )
        except Exception as exc:
            self._fail(f"close failed: {type(exc).__name__}: {exc}")
        finally:
            if self._writer is not None:
                try:
                    self._writer.close()
                except OSError as exc:
                    self._fail(f"spool close failed: {exc}")

    @property
    def compiled_put(self) -> Callable[[str, dict[str, float], None], bool] | None:
        """The compiled queue's ``put(measurement, fields, tags)`` (``collector.pending``),
        for a caller on the training thread with a dict of plain numbers; None where the
        module is not built. True: queued, as ``record`` would; False: nothing queued (a
        closed recorder, a value that is not a plain number): then call ``record``."""
        return self._queue.put if pending_compiled else None

    @property
    def compiled_put_series(self) -> Callable[..., bool] | None:
        """The compiled queue's ``put_series(measurement, field, values, tag, tag_values,
        common, head)`` (``collector.pending``), for a caller on the training thread that
        hands a step's series over from C; None where the module is not built. It queues
        what ``record_series`` would queue as it is and answers True, or queues nothing and
        answers False (a closed recorder, values that are not plain, an observed series):
        then call ``record_series``, which records, drops or counts them."""
        return self._queue.put_series if pending_compiled else None

    @property
    def closed(self) -> bool:
        return self._queue.closed

    @property
    def spool_path(self) -> str | None:
        return str(self._writer.stream.path) if self._writer is not None else None

    @property
    def stats(self) -> RecorderStats:
        """Counts so far; appends queued points to the spool first, so every point recorded
        before is counted as spooled, dropped or flagged."""
        if not self._queue.closed:
            self.flush()
        shipper = self._shipper
        spooled_offset = self._spooled_offset()
        acked = shipper.acked if shipper is not None else 0
        last_error = self.last_error
        if shipper is not None and shipper.last_error and last_error is None:
            last_error = shipper.last_error
        problems = self._problems
        return RecorderStats(
            points_recorded=self._queue.recorded,
            points_dropped=problems.dropped_points + self._lost,
            fields_dropped=problems.dropped_fields,
            nonfinite_fields=problems.nonfinite_fields,
            points_spooled=self._spooled,
            points_shipped=shipper.lines_shipped if shipper is not None else 0,
            points_rejected=shipper.lines_rejected if shipper is not None else 0,
            spool_backlog_bytes=max(0, spooled_offset - acked),
            spool_path=self.spool_path,
            last_error=last_error,
        )

    def __enter__(self) -> Recorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Recorder(run_id={self.run_id!r}, experiment={self.experiment!r}, mode={self.mode!r})"
        )

    def _forget_after_fork(self) -> None:
        # A forked child (a DataLoader worker) shares the spool descriptor and lock; it must
        # neither write nor close them.
        self._queue.closed = True
        self._writer = None
        self._shipper = None
        self._queue.entries = deque()
        self._queue.extra = 0


_QueuedPoint = tuple[str, dict[str, object], dict[str, object] | None, int]
"""(measurement, fields, tags, time in ns): a point whose line the next flush builds."""


MakePoints = Callable[[], Iterable[tuple[str, Mapping[str, object], Mapping[str, object] | None]]]
"""What ``record_later`` calls: (measurement, fields, tags) of each point, in order."""
_MadePoint = tuple[str, Mapping[str, object], Mapping[str, object] | None, int]


_FIELDS = itemgetter(1)
_TAGS = itemgetter(2)
_TIME = itemgetter(3)


def _name_of(function: object) -> str:
    """A function's qualified name (a ``partial``'s function's), not its arguments' repr."""
    inner = getattr(function, "func", function)
    return str(getattr(inner, "__qualname__", type(inner).__name__))


def _series_points(
    measurement: str,
    field: str,
    values: Sequence[float],
    tag: str,
    tag_values: Sequence[object],
    common: dict[str, float] | None,
) -> Iterator[tuple[str, dict[str, object], dict[str, object]]]:
    """``record_series``' points, made when the flush builds them."""
    common = common or {}
    for value, tag_value in zip(values, tag_values, strict=False):
        yield measurement, {field: value, **common}, {tag: tag_value}


_Shape = tuple[str, tuple[object, ...]]
"""A point's measurement and field names, in order."""


_SeriesShape = tuple[str, tuple[str, ...], str]
"""A series' measurement, field names (its field, then its common fields) and tag key."""


_Run = tuple[_Shape | _SeriesShape, int, int]
"""Consecutive queued points (or series) of one shape: the members ``[start, stop)`` of that
shape's group in the flush."""


class _GroupLines:
    """The lines of a flush's points of one shape (or its series of one shape: members),
    handed out run by run: a run that is the whole group gets its one text, a shorter run a
    cut of it."""

    __slots__ = ("_complete", "_each", "_seen", "_size", "_sizes", "_whole")

    def __init__(
        self,
        whole: str,
        size: int,
        each: list[str] | None,
        seen: list[_Observation | None] | None,
        sizes: list[int] | None = None,
    ) -> None:
        self._whole = whole
        self._size = size
        """Members: points, or series."""
        self._each = each
        """Each member's lines ("" for a dropped point); cut from ``whole`` when needed."""
        self._complete = each is None or sizes is not None
        """``sizes`` (or one a member) is how many lines each member has."""
        self._sizes = sizes
        """Lines of each series (None: a member is a point)."""
        self._seen = seen

    def add(self, start: int, stop: int, texts: list[str], observations: list[_Observation]) -> int:
        """Add the lines of the members ``[start, stop)`` to ``texts`` and what observers see
        of them to ``observations``; how many lines that is."""
        each = self._each
        if start == 0 and stop == self._size:
            texts.append(self._whole)
        else:
            if each is None:
                each = self._each = self._cut()
            texts.append(each[start] if stop - start == 1 else "".join(each[start:stop]))
        if self._seen is not None:
            observations.extend(filter(None, self._seen[start:stop]))
        sizes = self._sizes
        if sizes is not None:
            return sum(sizes[start:stop])
        if self._complete or each is None:
            return stop - start
        return sum(map(bool, each[start:stop]))

    def _cut(self) -> list[str]:
        """Each member's lines, cut from the whole text (a line's one newline is its last
        character)."""
        lines = [line + "\n" for line in self._whole.split("\n")[:-1]]
        sizes = self._sizes
        if sizes is None:
            return lines
        each: list[str] = []
        first = 0
        for size in sizes:
            each.append("".join(lines[first : first + size]))
            first += size
        return each


class _Series(NamedTuple):
    """``record_series``' points, queued as tuples of values (no dict per point; no list,
    which Python's collector would keep tracking while the entry waits for the flush),
    stamped from ``time_ns``."""

    shape: _SeriesShape
    values: tuple[float, ...]
    tag_values: tuple[object, ...]
    common: tuple[float, ...]
    """The common fields' values, in the order of ``shape``'s names after the first."""
    time_ns: int


def _series_columns(
    entries: list[_Series],
) -> tuple[list[object], list[list[float]], list[int]]:
    """The tag values, field columns and times of a group of series, point after point."""
    tag_values: list[object] = []
    values: list[float] = []
    common: list[list[float]] = [[] for _ in entries[0].common]
    times: list[int] = []
    for entry in entries:
        count = len(entry.values)
        tag_values.extend(entry.tag_values)
        values.extend(entry.values)
        for column, value in zip(common, entry.common, strict=True):
            column.extend([float(value)] * count)
        times.extend(range(entry.time_ns, entry.time_ns + count))
    return tag_values, [values, *common], times


def _points_of_series(entry: _Series) -> Iterator[_MadePoint]:
    """A series' points, as ``record()`` would have queued them."""
    measurement, names, tag = entry.shape
    common = dict(zip(names[1:], entry.common, strict=True))
    points = _series_points(measurement, names[0], entry.values, tag, entry.tag_values, common)
    for index, (_, fields, tags) in enumerate(points):
        yield measurement, fields, tags, entry.time_ns + index


class _Later(NamedTuple):
    """Points the next flush makes, then builds (``record_later``, ``record_series``)."""

    make: MakePoints
    limit: int
    time_ns: int


class _Built(NamedTuple):
    """A point built at ``record()`` (its values were not plain numbers) that observers see."""

    line: str
    measurement: str
    observed: Mapping[str, float]
    tags: Mapping[str, str]


_Pending = str | _QueuedPoint | _Later | _Built | _Series
"""A queue entry: a built line nobody observes, or what the next flush builds or observes."""
_Observation = tuple[str, Mapping[str, float], Mapping[str, str]]


try:  # compiled at install where a C compiler is (setup.py)
    from collector import _lines as _compiled
except ImportError:
    _queued_lines = None
else:
    _compiled.configure(_Series, _Built, _json)
    _queued_lines = _compiled.queued_lines


def _flush_while_alive(recorder: Recorder) -> Callable[[], None]:
    """``recorder.flush`` without keeping the recorder alive (for an observer to hold)."""
    reference = weakref.ref(recorder)

    def flush() -> None:
        alive = reference()
        if alive is not None:
            alive.flush()

    return flush


_live_recorders: weakref.WeakSet[Recorder] = weakref.WeakSet()


def _close_at_exit(recorder: Recorder) -> None:
    _live_recorders.add(recorder)


def _close_all_at_exit() -> None:
    for recorder in list(_live_recorders):
        recorder.close(timeout=recorder.tuning.exit_ship_timeout_s)


def _forget_all_after_fork() -> None:
    for recorder in list(_live_recorders):
        recorder._forget_after_fork()
    _live_recorders.clear()


atexit.register(_close_all_at_exit)
os.register_at_fork(after_in_child=_forget_all_after_fork)
