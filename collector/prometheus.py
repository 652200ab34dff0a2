"""Live training gauges for Prometheus, served from the training process.

One :class:`PrometheusExporter` per run, on its own ``CollectorRegistry`` (never the global
one), so several runs in one process and tests never collide. Names follow Prometheus
conventions and pass ``promtool check metrics``: prefix ``training_`` / ``federated_``, base
units (seconds, bytes), ``_total`` counters. ``run_id`` is a label; step, epoch and round are
values, never labels. Every labelled child is bound once per run (a pre-bound ``.set`` costs
0.26 µs against 1.5 µs for ``labels(...).set``).

The exporter is a ``PointObserver``: the recorder hands it every point (finite fields only,
plus ``<field>_nonfinite=1.0`` for a NaN/Inf value), and it maps ``epoch``, ``batch``,
``gradient``, ``round`` and ``client_round`` points onto gauges. A non-finite value shows as
NaN in its gauge. What points do not carry (step timing, samples, run status, federated round
bookkeeping) has direct methods.

This module is part of the collector core: it imports neither torch, lightning nor flwr.
"""

from __future__ import annotations

import bisect
import logging
import math
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
    make_wsgi_app,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from collector.config import Settings

log = logging.getLogger(__name__)

# Metric names: the contract with the alert rules and dashboards.
RUN_INFO = "training_run_info"
RUN_STATUS = "training_run_status"
RUN_START_TIMESTAMP = "training_run_start_timestamp_seconds"
EPOCH = "training_epoch"
OPTIMIZER_STEPS = "training_optimizer_steps_total"
SAMPLES = "training_samples_total"
SAMPLES_PER_SECOND = "training_samples_per_second"
TRAIN_LOSS = "training_train_loss"
VAL_LOSS = "training_val_loss"
VAL_ACCURACY = "training_val_accuracy"
VAL_PRECISION = "training_val_precision"
VAL_RECALL = "training_val_recall"
VAL_F1 = "training_val_f1"
VAL_AUROC = "training_val_auroc"
LEARNING_RATE = "training_learning_rate"
GRADIENT_NORM = "training_gradient_norm"
STEP_DURATION = "training_step_duration_seconds"
LAST_STEP_TIMESTAMP = "training_last_step_timestamp_seconds"
NONFINITE_VALUES = "training_nonfinite_values_total"
TELEMETRY_ERRORS = "training_telemetry_errors_total"

FEDERATED_ROUND = "federated_round"
FEDERATED_ROUNDS_PLANNED = "federated_rounds_planned"
FEDERATED_CLIENTS_RESPONDED = "federated_clients_responded_total"
FEDERATED_CLIENTS_FAILED = "federated_clients_failed_total"
FEDERATED_ROUND_DURATION = "federated_round_duration_seconds"
FEDERATED_LAST_ROUND_TIMESTAMP = "federated_last_round_timestamp_seconds"
FEDERATED_SERVER_EVAL_LOSS = "federated_server_eval_loss"
FEDERATED_SERVER_EVAL_ACCURACY = "federated_server_eval_accuracy"
FEDERATED_SERVER_EVAL_PRECISION = "federated_server_eval_precision"
FEDERATED_SERVER_EVAL_RECALL = "federated_server_eval_recall"
FEDERATED_SERVER_EVAL_F1 = "federated_server_eval_f1"
FEDERATED_SERVER_EVAL_AUROC = "federated_server_eval_auroc"
FEDERATED_CLIENT_TRAIN_LOSS = "federated_client_train_loss"

RUN_STATUSES = ("in_progress", "completed", "failed", "crashed")
# Step times of small models are milliseconds, of large ones seconds.
STEP_DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

NONFINITE_SUFFIX = "_nonfinite"

# Point vocabulary (docs/design.md, "InfluxDB schema") the exporter reads.
_TAG_ROUND = "round"
_TAG_SOURCE = "source"
_TAG_CLIENT_ID = "client_id"
_SOURCE_SERVER = "server"
_ROUND_MEASUREMENTS = frozenset(("round", "client_round"))
"""Points whose tags pick their gauges: observed one by one."""

Setter = Callable[[float], None]


_MAX_PENDING_STEPS = 4_096

EndedStep = tuple[float, float | None, int, float]
"""A training step that ended: (steps taken so far, its duration in seconds or None, its
samples, ``time.perf_counter()`` when it ended)."""

#: When a run ends, its exporter waits at most this long for one more scrape, so Prometheus
#: records the final status before the target disappears (the shipped scrape interval is 15 s).
FINAL_SCRAPE_TIMEOUT_S = 20.0


class _LazyChild:
    """A ``run_id`` child bound on first use, so a value never set stays absent, not 0.

    (A validation loss of 0 before the first validation, or federated gauges in a
    centralized run, would be read as data.)
    """

    __slots__ = ("_child", "_metric", "_run_id")

    def __init__(self, metric: Gauge | Counter, run_id: str) -> None:
        self._metric = metric
        self._run_id = run_id
        self._child: Gauge | Counter | None = None

    def bind(self) -> _LazyChild:
        """Create the child now (for counters, whose 0 is meaningful from the start)."""
        self._bound()
        return self

    def _bound(self) -> Gauge | Counter:
        child = self._child
        if child is None:
            child = self._child = self._metric.labels(run_id=self._run_id)
        return child

    def set(self, value: float) -> None:
        self._bound().set(value)  # type: ignore[union-attr]

    def inc(self, amount: float = 1.0) -> None:
        self._bound().inc(amount)


class _StepCollector(Collector):
    """Optimizer steps, samples, step durations and the last-step time: the training thread
    appends each step that ends to ``ended`` (a deque's ``append``, no Python frame on its
    way: ``StepTimerCallback`` calls it directly), and they are folded into the metric
    families only when scraped.

    A step then costs the training thread well under a microsecond (a prometheus_client
    counter, histogram and gauge update cost tens of microseconds on a busy machine, right
    after a torch step has pushed the interpreter out of the CPU caches).
    """

    max_backlog = _MAX_PENDING_STEPS
    """Ended steps that wait unfolded before the appender folds them (``bound_backlog``)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        # Two writers, each monotonic on its own: the fold of the ended steps (under the
        # collect lock) and the recording thread's batch/gradient points.
        self.trained_steps = 0.0
        self.recorded_steps = 0.0
        self.samples = 0.0
        self.last_step_time: float | None = None
        self.ended: deque[EndedStep] = deque()  # append/popleft are thread-safe
        self._bucket_counts = [0] * (len(STEP_DURATION_BUCKETS) + 1)
        self._duration_sum = 0.0
        self._collect_lock = threading.Lock()
        self._created = time.time()

    @property
    def steps(self) -> float:
        return max(self.trained_steps, self.recorded_steps)

    def advance_to(self, step: float) -> None:
        """A point's ``step`` field (recording thread): the steps taken before that batch's
        own (Lightning's and CSVLogger's numbering), so ``step + 1`` have been taken once it
        is recorded. The counter never goes back."""
        taken = step + 1
        if taken > self.recorded_steps:
            self.recorded_steps = taken

    def step_completed(self, step: float, duration_s: float | None, samples: int) -> None:
        """A training step ended (training thread): ``step`` = steps taken so far."""
        ended = self.ended
        ended.append((step, duration_s, samples, time.perf_counter()))
        if len(ended) > self.max_backlog:
            self.bound_backlog()

    def bound_backlog(self) -> None:
        """Nobody scraping: fold the ended steps now, so memory stays bounded (a busy
        collect() holds the lock: skip, it folds them anyway). Whoever appends to ``ended``
        calls this once more than ``max_backlog`` wait."""
        if self._collect_lock.acquire(blocking=False):
            try:
                self._fold_ended()
            finally:
                self._collect_lock.release()

    def _fold_ended(self) -> None:
        counts, bounds, ended = self._bucket_counts, STEP_DURATION_BUCKETS, self.ended
        last_ended: float | None = None
        while True:
            try:
                step, duration, samples, last_ended = ended.popleft()
            except IndexError:
                break
            if step > self.trained_steps:
                self.trained_steps = step
            if samples > 0:
                self.samples += samples
            if duration is not None:
                counts[bisect.bisect_left(bounds, duration)] += 1
                self._duration_sum += duration
        if last_ended is not None:  # the performance counter's reading as Unix time
            self.last_step_time = time.time() - (time.perf_counter() - last_ended)

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        with self._collect_lock:
            self._fold_ended()
            return list(self._families())

    def _families(self) -> Iterator[Metric]:
        labels = [self.run_id]
        steps = CounterMetricFamily(OPTIMIZER_STEPS, "Optimizer steps taken.", labels=["run_id"])
        steps.add_metric(labels, self.steps, created=self._created)
        yield steps
        samples = CounterMetricFamily(SAMPLES, "Training samples processed.", labels=["run_id"])
        samples.add_metric(labels, self.samples, created=self._created)
        yield samples
        histogram = HistogramMetricFamily(
            STEP_DURATION, "Wall time of one training step, in seconds.", labels=["run_id"]
        )
        cumulative, buckets = 0, []
        for bound, count in zip(
            (*STEP_DURATION_BUCKETS, math.inf), self._bucket_counts, strict=True
        ):
            cumulative += count
            buckets.append(("+Inf" if math.isinf(bound) else repr(bound), float(cumulative)))
        histogram.add_metric(labels, buckets, self._duration_sum)
        yield histogram
        last = GaugeMetricFamily(
            LAST_STEP_TIMESTAMP,
            "Unix time the last training step ended, in seconds.",
            labels=["run_id"],
        )
        if self.last_step_time is not None:
            last.add_metric(labels, self.last_step_time)
        yield last


class _PendingPoints(Collector):
    """Registered before every other metric of an exporter: collecting it (as every scrape
    does, first) has the recorders feeding the exporter flush, so the gauges collected next
    include every point recorded before the scrape. It yields no metric itself."""

    def __init__(self) -> None:
        self.flushes: list[Callable[[], None]] = []

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        for flush in list(self.flushes):
            flush()
        return []


class PrometheusExporter:
    """The gauge set of docs/design.md for one run, with an optional HTTP ``/metrics`` server."""

    observed_measurements = frozenset(("epoch", "batch", "gradient", "round", "client_round"))
    """The points with fields that have a gauge (the recorder skips observing the others:
    ``gradient_layer``, ``system``, ``event``)."""

    def __init__(
        self,
        run_id: str,
        *,
        experiment: str,
        mode: str = "centralized",
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.run_id = run_id
        self.registry = registry if registry is not None else CollectorRegistry()
        self._server: _MetricsServer | None = None
        self._server_thread: threading.Thread | None = None
        self.port: int | None = None
        self._scrapes = 0
        self._scraped = threading.Condition()
        self._client_loss: dict[str, Gauge] = {}
        self._client_loss_lock = threading.Lock()
        self._pending = _PendingPoints()
        self.registry.register(self._pending)
        self._build_metrics(experiment, mode)
        self._advance_steps: Setter = self.steps.advance_to
        self._epoch_now = -math.inf
        self._advance_epoch: Setter = self.advance_epoch
        self._tables = self._point_tables()

    # -- metric definitions ------------------------------------------------------------

    def _gauge(self, name: str, documentation: str) -> _LazyChild:
        return _LazyChild(
            Gauge(name, documentation, ["run_id"], registry=self.registry), self.run_id
        )

    def _counter(self, name: str, documentation: str) -> _LazyChild:
        metric = Counter(name, documentation, ["run_id"], registry=self.registry)
        return _LazyChild(metric, self.run_id)

    def _build_metrics(self, experiment: str, mode: str) -> None:
        info = Gauge(
            RUN_INFO,
            "Training run metadata; always 1.",
            ["run_id", "experiment", "mode"],
            registry=self.registry,
        )
        info.labels(run_id=self.run_id, experiment=experiment, mode=mode).set(1)
        status = Gauge(
            RUN_STATUS,
            "1 for the run's current status, 0 for the others.",
            ["run_id", "status"],
            registry=self.registry,
        )
        self._status = {
            name: status.labels(run_id=self.run_id, status=name) for name in RUN_STATUSES
        }
        self._gauge(RUN_START_TIMESTAMP, "Unix time the run started, in seconds.").set(time.time())
        self.epoch = self._gauge(EPOCH, "Current epoch (0-based).")
        self.steps = _StepCollector(self.run_id)
        self.registry.register(self.steps)
        self.samples_per_second = self._gauge(SAMPLES_PER_SECOND, "Recent training throughput.")
        self.train_loss = self._gauge(TRAIN_LOSS, "Latest training loss (batch or epoch).")
        self.val_loss = self._gauge(VAL_LOSS, "Latest validation loss.")
        self.val_accuracy = self._gauge(VAL_ACCURACY, "Latest validation accuracy (0..1).")
        self.val_precision = self._gauge(VAL_PRECISION, "Latest validation precision (0..1).")
        self.val_recall = self._gauge(VAL_RECALL, "Latest validation recall (0..1).")
        self.val_f1 = self._gauge(VAL_F1, "Latest validation F1 score (0..1).")
        self.val_auroc = self._gauge(VAL_AUROC, "Latest validation AUROC (0..1).")
        self.learning_rate = self._gauge(LEARNING_RATE, "Current learning rate.")
        self.gradient_norm = self._gauge(GRADIENT_NORM, "Latest total L2 gradient norm.")
        self.nonfinite = self._counter(NONFINITE_VALUES, "NaN or infinite values recorded.").bind()
        self.telemetry_errors = self._counter(
            TELEMETRY_ERRORS, "Exceptions caught inside telemetry hooks (training went on)."
        ).bind()
        self._build_federated_metrics()
        self.set_status("in_progress")

    def _build_federated_metrics(self) -> None:
        self.round = self._gauge(FEDERATED_ROUND, "Current federated round (1-based).")
        self.rounds_planned = self._gauge(FEDERATED_ROUNDS_PLANNED, "Federated rounds planned.")
        self.clients_responded = self._counter(
            FEDERATED_CLIENTS_RESPONDED, "Client replies received."
        )
        self.clients_failed = self._counter(FEDERATED_CLIENTS_FAILED, "Client failures.")
        self.round_duration = self._gauge(
            FEDERATED_ROUND_DURATION, "Wall time of the last completed round, in seconds."
        )
        self.last_round_timestamp = self._gauge(
            FEDERATED_LAST_ROUND_TIMESTAMP, "Unix time the last round ended, in seconds."
        )
        self.server_eval_loss = self._gauge(FEDERATED_SERVER_EVAL_LOSS, "Server evaluation loss.")
        self.server_eval_accuracy = self._gauge(
            FEDERATED_SERVER_EVAL_ACCURACY, "Server evaluation accuracy (0..1)."
        )
        self.server_eval_precision = self._gauge(
            FEDERATED_SERVER_EVAL_PRECISION, "Server evaluation precision (0..1)."
        )
        self.server_eval_recall = self._gauge(
            FEDERATED_SERVER_EVAL_RECALL, "Server evaluation recall (0..1)."
        )
        self.server_eval_f1 = self._gauge(FEDERATED_SERVER_EVAL_F1, "Server evaluation F1 (0..1).")
        self.server_eval_auroc = self._gauge(
            FEDERATED_SERVER_EVAL_AUROC, "Server evaluation AUROC (0..1)."
        )
        self._client_train_loss = Gauge(
            FEDERATED_CLIENT_TRAIN_LOSS,
            "Last training loss a client reported.",
            ["run_id", "client_id"],
            registry=self.registry,
        )

    def _point_tables(self) -> dict[str, dict[str, Setter]]:
        """measurement -> field -> setter, for the point fields that have a gauge."""
        val_metrics: dict[str, Setter] = {
            "val_loss": self.val_loss.set,
            "val_acc": self.val_accuracy.set,
            "val_accuracy": self.val_accuracy.set,
            "val_precision": self.val_precision.set,
            "val_recall": self.val_recall.set,
            "val_f1": self.val_f1.set,
            "val_auroc": self.val_auroc.set,
        }
        server_eval: dict[str, Setter] = {
            "loss": self.server_eval_loss.set,
            "accuracy": self.server_eval_accuracy.set,
            "acc": self.server_eval_accuracy.set,
            "precision": self.server_eval_precision.set,
            "recall": self.server_eval_recall.set,
            "f1": self.server_eval_f1.set,
            "auroc": self.server_eval_auroc.set,
        }
        return {
            "epoch": {
                "epoch": self._advance_epoch,
                "train_loss": self.train_loss.set,
                "lr": self.learning_rate.set,
                **val_metrics,
            },
            "batch": {
                "loss": self.train_loss.set,
                "epoch": self._advance_epoch,
                "step": self._advance_steps,
                "samples_per_s": self.samples_per_second.set,
            },
            "gradient": {"total_norm": self.gradient_norm.set, "step": self._advance_steps},
            "round:server": server_eval,
            "round": {"duration_s": self.round_duration.set},
        }

    def epoch_started(self, epoch: float) -> None:
        """The trainer's current epoch, as it starts (training thread)."""
        self._epoch_now = epoch
        self.epoch.set(epoch)

    def advance_epoch(self, epoch: float) -> None:
        """A point's ``epoch`` (recording thread): the gauge never goes back. An epoch's own
        point is written once the next epoch has started (its validation is in it), after
        ``epoch_started`` or that epoch's batch points said the next one."""
        if epoch > self._epoch_now:
            self._epoch_now = epoch
            self.epoch.set(epoch)

    # -- PointObserver -----------------------------------------------------------------

    def read_pending(self, flush: Callable[[], None]) -> None:
        """Call ``flush`` (a recorder's) before each collection, so points recorded before a
        scrape are observed before it is answered."""
        self._pending.flushes.append(flush)

    def observe(
        self, measurement: str, fields: Mapping[str, float], tags: Mapping[str, str]
    ) -> None:
        """Map one recorded point onto gauges (called on the recorder's thread)."""
        if measurement == "round":
            self._observe_round(fields, tags)
            return
        if measurement == "client_round":
            self._observe_client_round(fields, tags)
            return
        table = self._tables.get(measurement)
        if table is not None:
            self._apply(table, fields)

    def observe_many(
        self, points: Sequence[tuple[str, Mapping[str, float], Mapping[str, str]]]
    ) -> None:
        """A flush's points, in recording order: what observing each in turn leaves (every
        gauge at its last value, the step counter and the epoch at their highest, every
        non-finite value counted), with one update per gauge instead of one per point."""
        latest: dict[Setter, float] = {}
        advance_steps, advance_epoch = self._advance_steps, self._advance_epoch
        highest_epoch = -math.inf
        for measurement, fields, tags in points:
            table = None if measurement in _ROUND_MEASUREMENTS else self._tables.get(measurement)
            if table is None:
                self._set_latest(latest)  # round points go one by one, after what came first
                self.observe(measurement, fields, tags)
                continue
            for name, value in fields.items():
                setter = table.get(name)
                if setter is advance_steps:
                    setter(value)  # the highest step, not the last: applied as it comes
                elif setter is advance_epoch:
                    if value > highest_epoch:  # the highest epoch, not the last
                        highest_epoch = value
                elif setter is not None:
                    latest[setter] = value
                elif name.endswith(NONFINITE_SUFFIX) and value:
                    self.nonfinite.inc()
                    target = table.get(name[: -len(NONFINITE_SUFFIX)])
                    if target is not None and target not in (advance_steps, advance_epoch):
                        latest[target] = math.nan
        self._set_latest(latest)
        if highest_epoch > -math.inf:
            advance_epoch(highest_epoch)

    @staticmethod
    def _set_latest(latest: dict[Setter, float]) -> None:
        for setter, value in latest.items():
            setter(value)
        latest.clear()

    def _apply(self, table: Mapping[str, Setter], fields: Mapping[str, float]) -> None:
        for name, value in fields.items():
            setter = table.get(name)
            if setter is not None:
                setter(value)
            elif name.endswith(NONFINITE_SUFFIX) and value:
                self.nonfinite.inc()
                target = table.get(name[: -len(NONFINITE_SUFFIX)])
                if target is not None:
                    target(math.nan)  # counters ignore it: NaN is never above their total

    def _observe_round(self, fields: Mapping[str, float], tags: Mapping[str, str]) -> None:
        round_text = tags.get(_TAG_ROUND)
        if round_text is not None and round_text.isdigit():
            self.round.set(int(round_text))
        self._apply(self._tables["round"], fields)
        if tags.get(_TAG_SOURCE) == _SOURCE_SERVER:
            self._apply(self._tables["round:server"], fields)

    def _observe_client_round(self, fields: Mapping[str, float], tags: Mapping[str, str]) -> None:
        client_id = tags.get(_TAG_CLIENT_ID)
        if client_id is None:
            return
        if "train_loss" in fields:
            self.set_client_train_loss(client_id, fields["train_loss"])
        elif fields.get("train_loss" + NONFINITE_SUFFIX):
            self.nonfinite.inc()
            self.set_client_train_loss(client_id, math.nan)

    # -- direct updates (what points do not carry) -------------------------------------

    def step_completed(
        self, step: int, *, duration_s: float | None = None, samples: int = 0
    ) -> None:
        """One optimizer step finished: ``step`` is the total number of steps taken so far."""
        self.steps.step_completed(step, duration_s, samples)

    def set_status(self, status: str) -> None:
        """``in_progress``, ``completed``, ``failed`` or ``crashed`` (others are ignored)."""
        if status not in self._status:
            log.warning("runwatch: unknown run status %r not exported", status)
            return
        for name, child in self._status.items():
            child.set(1.0 if name == status else 0.0)

    def telemetry_error(self) -> None:
        self.telemetry_errors.inc()

    def set_rounds_planned(self, rounds: int) -> None:
        self.rounds_planned.set(rounds)

    def round_started(self, round_number: int) -> None:
        self.round.set(round_number)

    def round_finished(
        self, round_number: int, *, duration_s: float, responded: int, failed: int
    ) -> None:
        self.round.set(round_number)
        self.round_duration.set(duration_s)
        self.last_round_timestamp.set(time.time())
        if responded > 0:
            self.clients_responded.inc(responded)
        if failed > 0:
            self.clients_failed.inc(failed)

    def set_client_train_loss(self, client_id: str, loss: float) -> None:
        child = self._client_loss.get(client_id)
        if child is None:
            with self._client_loss_lock:
                child = self._client_train_loss.labels(run_id=self.run_id, client_id=client_id)
                self._client_loss[client_id] = child
        child.set(loss)

    # -- exposition --------------------------------------------------------------------

    def render(self) -> bytes:
        """The text exposition format, as ``/metrics`` serves it."""
        return generate_latest(self.registry)

    def start_http_server(self, addr: str, port: int) -> bool:
        """Serve ``/metrics`` on addr:port; a busy port logs one warning and returns False."""
        if self._server is not None:
            return True
        try:
            server = _serve(addr, port, self._counting_app(make_wsgi_app(self.registry)))
        except OSError as exc:
            log.warning(
                "runwatch: Prometheus exporter not started on %s:%s (%s); training goes on",
                addr,
                port,
                exc,
            )
            return False
        thread = threading.Thread(
            target=server.serve_forever, name="runwatch-prometheus", daemon=True
        )
        thread.start()
        self._server, self._server_thread = server, thread
        self.port = int(server.server_port)
        return True

    def _counting_app(self, app: Any) -> Any:
        def counted(environ: dict[str, Any], start_response: Any) -> Any:
            body = app(environ, start_response)
            with self._scraped:
                self._scrapes += 1
                self._scraped.notify_all()
            return body

        return counted

    @property
    def serving(self) -> bool:
        return self._server is not None

    @property
    def scrapes(self) -> int:
        """How many HTTP requests ``/metrics`` has answered."""
        return self._scrapes

    def stop(self, *, final_scrape_timeout_s: float = 0.0) -> None:
        """Stop the HTTP server (the gauges stay readable through :meth:`render`).

        With ``final_scrape_timeout_s``, a server that has been scraped waits (at most that
        long) for one more scrape first, so Prometheus sees the final run status before the
        target goes down: a run that ended well must not look like a trainer that died.
        """
        server = self._server
        if server is None:
            return
        if final_scrape_timeout_s > 0:
            self._wait_for_next_scrape(final_scrape_timeout_s)
        self._server = None
        server.shutdown()
        server.server_close()
        if self._server_thread is not None:
            self._server_thread.join(timeout=5.0)
            self._server_thread = None

    def finish(
        self, status: str, *, final_scrape_timeout_s: float = FINAL_SCRAPE_TIMEOUT_S
    ) -> None:
        """The run ended with ``status``: show it, let Prometheus scrape it, stop serving."""
        self.set_status(status)
        self.stop(final_scrape_timeout_s=final_scrape_timeout_s)

    def _wait_for_next_scrape(self, timeout_s: float) -> None:
        with self._scraped:
            seen = self._scrapes
            if seen:
                self._scraped.wait_for(lambda: self._scrapes > seen, timeout=timeout_s)


class _QuietHandler(WSGIRequestHandler):
    timeout = 10  # seconds a client may take to send its request: a stuck one cannot pin stop()

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a log line each."""


class _MetricsServer(ThreadingMixIn, WSGIServer):
    # Non-daemon request threads, joined by server_close(): the last scrape's answer is sent
    # in full before the exporter reports itself stopped.
    daemon_threads = False
    block_on_close = True


class _MetricsServerV6(_MetricsServer):
    address_family = socket.AF_INET6


def _serve(addr: str, port: int, app: Any) -> _MetricsServer:
    server_class = _MetricsServerV6 if ":" in addr else _MetricsServer
    server = make_server(addr, port, app, server_class, handler_class=_QuietHandler)
    assert isinstance(server, _MetricsServer)
    return server


def start_exporter(
    settings: Settings, run_id: str, *, experiment: str, mode: str = "centralized"
) -> PrometheusExporter | None:
    """An exporter serving on the configured address, or None when the port is 0 (disabled).

    A busy port is not an error: the exporter is returned without a server after one warning.
    """
    if not settings.prometheus_enabled:
        return None
    exporter = PrometheusExporter(run_id, experiment=experiment, mode=mode)
    exporter.start_http_server(settings.prometheus_addr, settings.prometheus_port)
    return exporter
