"""The ServerApp side: one federated run's telemetry, and the strategy wrapper that feeds it.

    with FederatedRun("fedavg-demo", num_rounds=3) as run:
        strategy = run.wrap(FedAvg(...))       # a FedAvg: see collector.flower.wrapping
        result = strategy.start(grid, initial_arrays, num_rounds=3, evaluate_fn=central_eval)

The ServerApp process owns the relational store: it creates the run, persists every
round as it finishes (a server killed after round k leaves rounds 1..k; its run is later
marked crashed by the stale-heartbeat check), persists the epoch histories clients send in
their replies, and serves the ``federated_*`` Prometheus gauges. Clients never open the
database; they write their own points (see ``collector.flower.client``).

Telemetry never raises into training: every failure is logged once per place and counted.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Unpack, overload

from flwr.app import ArrayRecord, Context, Message, MetricRecord
from flwr.common.logger import log as flwr_log
from flwr.serverapp.strategy import FedAvg, Result, Strategy

from collector import schema
from collector.config import Settings
from collector.errors import ConfigError
from collector.flower.protocol import (
    ClientReport,
    RunNote,
    attach_run_note,
    read_client_report,
    sent_node_ids,
)
from collector.flower.settings import destinations, server_settings
from collector.flower.wrapping import RunwatchStrategy, S, wrap_strategy
from collector.run import Run, RunOptions
from collector.values import federated_metrics, round_field

log = logging.getLogger("collector.flower")

PHASE_TRAIN = "train"
PHASE_EVALUATE = "evaluate"
EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]

# Evaluation metric names as the `round` measurement spells them (``val_acc`` → ``accuracy``).
_CLIENT_ROUND = schema.MEASUREMENTS[schema.M_CLIENT_ROUND]
_ROUND = schema.MEASUREMENTS[schema.M_ROUND]


def _scalars(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """The numeric scalars of a MetricRecord (lists skipped)."""
    if not metrics:
        return {}
    return {
        str(k): float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def round_fields(metrics: Mapping[str, float]) -> dict[str, float]:
    """Metrics as ``round`` point fields: evaluation metrics by their field (``val_acc``,
    ``eval_acc``, ``test_acc`` -> ``accuracy``), training metrics by their federated name
    (``train_loss``); names it does not know are left out."""
    fields: dict[str, float] = {}
    for name, value in metrics.items():
        target = round_field(name)
        if target is not None and _ROUND.accepts_field(target):
            fields.setdefault(target, value)
    return fields


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_REASON_HEAD, _REASON_TAIL = 150, 250


def short_reason(reason: object) -> str:
    """A client's error as one short line: Flower's simulation wraps the client's exception
    in a whole ray traceback (with terminal colours); its message is at the end."""
    text = " ".join(_ANSI_ESCAPE.sub("", str(reason)).split())
    if len(text) <= _REASON_HEAD + _REASON_TAIL:
        return text
    return f"{text[:_REASON_HEAD]} … {text[-_REASON_TAIL:]}"


def _settings_of(context: Context) -> Settings | None:
    try:
        return server_settings(context)
    except ConfigError as exc:
        log.warning("runwatch: %s; using the environment's settings", exc)
        return None


def _utc(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


class FederatedRun(Run):
    """One federated run as the ServerApp process records it (:class:`collector.run.Run`).

    ``start()`` (or ``with``) creates the run in the store, opens the recorder (spool, and
    InfluxDB when configured), starts the Prometheus exporter and a heartbeat thread.
    ``finish(status)`` closes them; ``with`` finishes ``failed`` when the body raises.
    Any of the three may be unavailable (database down, port busy): the others go on.
    It adds the rounds: the planned count on the exporter and ``wrap`` for the strategy.

    ``context`` (the ServerApp's): its run config's ``runwatch-*`` keys over the environment
    (``collector.flower.settings``), unless ``settings`` is given; a malformed key is one
    warning and the environment's settings.
    """

    def __init__(
        self,
        experiment: str = "default",
        *,
        num_rounds: int | None = None,
        context: Context | None = None,
        **options: Unpack[RunOptions],
    ) -> None:
        if context is not None and options.get("settings") is None:
            options["settings"] = _settings_of(context)
        super().__init__(experiment, mode=schema.MODE_FEDERATED, **options)
        self.num_rounds = num_rounds

    def _on_started(self) -> None:
        # Flower's own logger: this line reaches `flwr run`'s output and the SuperLink's log
        flwr_log(logging.INFO, "runwatch: run %s -> %s", self.run_id, destinations(self.settings))
        super()._on_started()

    def _start_exporter(self) -> None:
        super()._start_exporter()
        exporter = self._exporter
        if exporter is not None and self.num_rounds is not None:
            with self.guard("FederatedRun.start (prometheus)"):
                exporter.set_rounds_planned(self.num_rounds)

    @overload
    def wrap(self) -> FedAvg: ...

    @overload
    def wrap(self, strategy: S) -> S: ...

    def wrap(self, strategy: Strategy | None = None) -> Strategy:
        """``strategy`` (FedAvg by default) wrapped so that every round is recorded here.

        The result is an instance of the strategy's own class that shares its state (see
        :mod:`collector.flower.wrapping`): Flower, and the code around it, cannot tell
        them apart. Wrapping a wrapped strategy records its rounds in this run instead."""
        if strategy is None:
            strategy = FedAvg()
        elif isinstance(strategy, RunwatchStrategy):
            strategy = strategy.wrapped_strategy
        try:
            return wrap_strategy(strategy, _StrategyRecorder(strategy, self))
        except TypeError as exc:
            log.warning("runwatch: %s; its rounds are not recorded", exc)
            return strategy


@dataclass
class _RoundState:
    number: int
    started_at: float
    sent: dict[str, list[int]] = field(default_factory=dict)
    responded: int = 0
    failed: int = 0
    train_clients: set[str] = field(default_factory=set)
    train_examples: float = 0.0
    aggregated: dict[str, float] = field(default_factory=dict)
    aggregated_fields: dict[str, float] = field(default_factory=dict)
    server_metrics: dict[str, float] | None = None
    finished: bool = False


class _StrategyRecorder:
    """Records a wrapped strategy's rounds (:mod:`collector.flower.wrapping` hooks it in).

    The wrapped strategy decides everything (sampling, aggregation, what it returns); this
    only looks at what passes through, and notes the run in each instruction (namespaced
    keys in its ConfigRecord, see :mod:`collector.flower.protocol`) so runwatch clients know
    their run and round.

    Per round it records: ``round_start`` / ``round_end`` events; each client's reply as a
    ``client_round`` point and a clients row, its epoch history as run_metrics (client and
    round set); failed or missing replies as ``client_failure`` events and in the failed
    counter; the weighted aggregate as a ``round`` point (source=aggregated) and run_metrics
    with context ``aggregated``; the server's central evaluation as a ``round`` point
    (source=server) and a server_evaluations row. Confusion-matrix counts of the aggregate
    are the sums over the clients that replied (a weighted mean of counts is not a count).
    A round ends after the server's evaluation of it (``evaluate_fn``), else after its
    evaluation replies are aggregated, else when the next round begins or ``start`` returns.
    """

    def __init__(self, strategy: Strategy, run: FederatedRun) -> None:
        self.strategy = strategy
        self.run = run
        self._rounds: dict[int, _RoundState] = {}
        self._server_evaluates = False
        self._known_clients: set[str] = set()
        self._partitions: dict[str, str] = {}
        self._recorders: dict[str, Callable[..., Any]] = {
            "start": self._start,
            "configure_train": functools.partial(self._configure, PHASE_TRAIN),
            "configure_evaluate": functools.partial(self._configure, PHASE_EVALUATE),
            "aggregate_train": self._aggregate_train,
            "aggregate_evaluate": self._aggregate_evaluate,
        }

    def hook(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        recorder = self._recorders[name]

        @functools.wraps(method)
        def recorded(*args: Any, **kwargs: Any) -> Any:
            return recorder(method, *args, **kwargs)

        return recorded

    @property
    def weighted_by_key(self) -> str:
        # Flower's DP wrappers keep the weighting strategy as ``strategy``.
        for holder in (self.strategy, getattr(self.strategy, "strategy", None)):
            key = getattr(holder, "weighted_by_key", None)
            if isinstance(key, str):
                return key
        return "num-examples"

    # -- the hooked methods ------------------------------------------------------------

    def _start(self, start: Callable[..., Result], *args: Any, **kwargs: Any) -> Result:
        """The strategy's own ``start`` (Flower's loop or an override). A run not started
        yet is started here and finished when the loop ends (``failed`` if it raises)."""
        call = _StartCall.of(start, args, kwargs)
        recorded_evaluate_fn = self._recorded_evaluate_fn(call.evaluate_fn)
        if recorded_evaluate_fn is not None:
            call.replace_evaluate_fn(recorded_evaluate_fn)
        owns_run = not self.run.started
        self.run.start()
        self._server_evaluates = recorded_evaluate_fn is not None
        exporter = self.run.exporter
        if exporter is not None and call.num_rounds is not None:
            with self.run.guard("RunwatchStrategy.start (prometheus)"):
                exporter.set_rounds_planned(call.num_rounds)
        try:
            result = start(*call.args, **call.kwargs)
        except BaseException:
            if owns_run:
                self.run.finish("failed")
            raise
        with self.run.guard("RunwatchStrategy.round_end"):
            self._end_rounds_before(None)
        if owns_run:
            self.run.finish("completed")
        return result

    def _configure(
        self, phase: str, configure: Callable[..., Iterable[Message]], *args: Any, **kwargs: Any
    ) -> Iterable[Message]:
        server_round = _round_argument(args, kwargs)
        if server_round is None:
            return configure(*args, **kwargs)
        if phase == PHASE_TRAIN:
            with self.run.guard("RunwatchStrategy.configure_train"):
                self._begin_round(server_round)
        messages = list(configure(*args, **kwargs))
        with self.run.guard(f"RunwatchStrategy.configure_{phase}"):
            self._note_sent(server_round, phase, messages)
        return messages

    def _aggregate_train(
        self, aggregate: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round = _round_argument(args, kwargs)
        replies, args, kwargs = _listed_replies(args, kwargs)
        if server_round is None or replies is None:
            return aggregate(*args, **kwargs)  # type: ignore[no-any-return]
        with self.run.guard("RunwatchStrategy.aggregate_train (replies)"):
            self._record_replies(server_round, PHASE_TRAIN, replies)
        aggregated = aggregate(*args, **kwargs)
        with self.run.guard("RunwatchStrategy.aggregate_train (aggregate)"):
            _, metrics = aggregated
            self._round(server_round).aggregated.update(
                federated_metrics(_scalars(metrics), PHASE_TRAIN)
            )
        return aggregated  # type: ignore[no-any-return]

    def _aggregate_evaluate(
        self, aggregate: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> MetricRecord | None:
        server_round = _round_argument(args, kwargs)
        replies, args, kwargs = _listed_replies(args, kwargs)
        if server_round is None or replies is None:
            return aggregate(*args, **kwargs)  # type: ignore[no-any-return]
        with self.run.guard("RunwatchStrategy.aggregate_evaluate (replies)"):
            self._record_replies(server_round, PHASE_EVALUATE, replies)
        metrics: MetricRecord | None = aggregate(*args, **kwargs)
        with self.run.guard("RunwatchStrategy.aggregate_evaluate (aggregate)"):
            self._note_evaluate_aggregate(server_round, _scalars(metrics), replies)
        if not self._server_evaluates:
            with self.run.guard("RunwatchStrategy.round_end"):
                self._end_round(server_round)
        return metrics

    # -- recording ---------------------------------------------------------------------

    def _round(self, number: int) -> _RoundState:
        state = self._rounds.get(number)
        if state is None:
            state = self._rounds[number] = _RoundState(number, time.time())
        return state

    @staticmethod
    def _tags(round_number: int, **extra: str) -> dict[str, str]:
        return {schema.ROUND: str(round_number), **extra}

    def _begin_round(self, number: int) -> None:
        self._end_rounds_before(number)  # a loop that never evaluates ends none itself
        state = self._round(number)
        self.run.event(schema.EVENT_ROUND_START, text=f"round {number}", tags=self._tags(number))
        started = _utc(state.started_at)
        self.run.with_store(
            "RunwatchStrategy.round_start (store)",
            lambda store: store.record_round(self.run.run_id, number, started_at=started),
        )
        exporter = self.run.exporter
        if exporter is not None:
            exporter.round_started(number)

    def _note_sent(self, number: int, phase: str, messages: list[Message]) -> None:
        self._round(number).sent[phase] = sent_node_ids(messages)
        note = RunNote(self.run.run_id, self.run.experiment, number)
        for message in messages:
            attach_run_note(message, note)

    def _record_replies(self, number: int, phase: str, replies: list[Message]) -> None:
        state = self._round(number)
        replied: set[int] = set()
        for reply in replies:
            node_id = reply.metadata.src_node_id
            replied.add(node_id)
            client_id = str(node_id)
            self._ensure_client(client_id)
            if reply.has_error():
                self._client_failed(state, phase, client_id, short_reason(reply.error.reason))
            else:
                self._client_replied(state, phase, client_id, reply)
        for node_id in state.sent.get(phase, []):
            if node_id not in replied:
                self._ensure_client(str(node_id))
                self._client_failed(state, phase, str(node_id), "no reply before the timeout")

    def _ensure_client(self, client_id: str) -> None:
        if client_id in self._known_clients:
            return
        self._known_clients.add(client_id)
        self.run.with_store(
            "RunwatchStrategy.client (store)",
            lambda store: store.ensure_client(self.run.run_id, client_id),
        )

    def _client_failed(self, state: _RoundState, phase: str, client_id: str, reason: str) -> None:
        state.failed += 1
        self.run.event(
            schema.EVENT_CLIENT_FAILURE,
            text=f"{phase}: {reason}",
            tags=self._tags(state.number, **{schema.CLIENT_ID: client_id}),
        )

    def _client_replied(
        self, state: _RoundState, phase: str, client_id: str, reply: Message
    ) -> None:
        state.responded += 1
        metrics = _reply_metrics(reply)
        report = read_client_report(reply)
        duration = report.duration_s if report is not None else None
        examples = metrics.pop(self.weighted_by_key, None)
        if phase == PHASE_TRAIN:
            state.train_clients.add(client_id)
            state.train_examples += examples or 0.0
            fields = _train_reply_fields(metrics, examples, duration)
        else:
            fields = _evaluate_reply_fields(metrics, examples, duration)
        if report is not None:
            self._note_client_report(client_id, report)
        tags = self._tags(state.number, **self._client_tags(client_id))
        self.run.record(schema.M_CLIENT_ROUND, fields, tags)
        if report is not None and report.epochs:
            epochs = report.epochs
            self.run.with_store(
                "RunwatchStrategy.client epochs (store)",
                lambda store: store.persist_epoch_metrics(
                    self.run.run_id, epochs, client_id=client_id, round_number=state.number
                ),
            )

    def _client_tags(self, client_id: str) -> dict[str, str]:
        partition = self._partitions.get(client_id)
        if partition is None:
            return {schema.CLIENT_ID: client_id}
        return {schema.CLIENT_ID: client_id, schema.PARTITION_ID: partition}

    def _note_client_report(self, client_id: str, report: ClientReport) -> None:
        """The client's partition on its row (once), the checkpoints it kept as artifacts."""
        partition = report.partition_id
        if partition is not None and self._partitions.get(client_id) != partition:
            self._partitions[client_id] = partition
            self.run.with_store(
                "RunwatchStrategy.client partition (store)",
                lambda store: store.ensure_client(
                    self.run.run_id, client_id, partition_id=partition
                ),
            )
        for path in report.checkpoints:
            self.run.with_store(
                "RunwatchStrategy.client checkpoint (store)",
                lambda store, path=path: store.add_artifact(self.run.run_id, path),  # type: ignore[misc]
            )

    def _note_evaluate_aggregate(
        self, number: int, metrics: dict[str, float], replies: list[Message]
    ) -> None:
        state = self._round(number)
        metrics.update(_summed_confusion_counts(metrics, replies))
        state.aggregated.update(federated_metrics(metrics, PHASE_EVALUATE))
        state.aggregated_fields = round_fields(state.aggregated)

    def _recorded_evaluate_fn(self, evaluate_fn: EvaluateFn | None) -> EvaluateFn | None:
        if evaluate_fn is None:
            return None

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            result = evaluate_fn(server_round, arrays)
            with self.run.guard("RunwatchStrategy.server_evaluation"):
                self._record_server_evaluation(server_round, _scalars(result))
            if server_round >= 1:
                with self.run.guard("RunwatchStrategy.round_end"):
                    self._end_round(server_round)
            return result

        return evaluate

    def _record_server_evaluation(self, number: int, metrics: dict[str, float]) -> None:
        if not metrics:  # evaluate_fn returned None (or nothing numeric) for this round
            return
        tags = self._tags(number, **{schema.SOURCE: schema.SOURCE_SERVER})
        self.run.record(schema.M_ROUND, round_fields(metrics), tags)
        if number >= 1:  # round 0 is the initial model: a point, not a round row
            self._round(number).server_metrics = metrics
            self.run.with_store(
                "RunwatchStrategy.server_evaluation (store)",
                lambda store: store.add_server_evaluation(self.run.run_id, number, metrics),
            )

    def _end_rounds_before(self, number: int | None) -> None:
        """End the open rounds before ``number`` (None: all of them)."""
        for open_round in sorted(self._rounds):
            if number is None or open_round < number:
                self._end_round(open_round)

    def _end_round(self, number: int) -> None:
        state = self._round(number)
        if state.finished:
            return
        state.finished = True
        ended_at = time.time()
        duration = ended_at - state.started_at
        fields = {
            **state.aggregated_fields,
            schema.NUM_CLIENTS: float(len(state.train_clients)),
            schema.NUM_EXAMPLES: state.train_examples,
            schema.DURATION_S: duration,
        }
        tags = self._tags(number, **{schema.SOURCE: schema.SOURCE_AGGREGATED})
        self.run.record(schema.M_ROUND, fields, tags)
        self.run.with_store(
            "RunwatchStrategy.round_end (store)",
            lambda store: store.record_round(
                self.run.run_id,
                number,
                server_metrics=state.server_metrics,
                aggregated_metrics=state.aggregated or None,
                num_clients=len(state.train_clients),
                ended_at=_utc(ended_at),
            ),
        )
        self.run.event(
            schema.EVENT_ROUND_END,
            text=f"round {number}: {state.responded} replies, {state.failed} failed",
            value=duration,
            tags=self._tags(number),
        )
        exporter = self.run.exporter
        if exporter is not None:
            exporter.round_finished(
                number, duration_s=duration, responded=state.responded, failed=state.failed
            )
        self.run.heartbeat()
        del self._rounds[number]


@dataclass
class _StartCall:
    """The arguments of a call to a strategy's ``start`` (Flower's or an override's)."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    num_rounds: int | None = None
    evaluate_fn: EvaluateFn | None = None
    _bound: inspect.BoundArguments | None = None

    @classmethod
    def of(
        cls, start: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> _StartCall:
        try:
            signature = inspect.signature(start)
            bound = signature.bind(*args, **kwargs)
        except (TypeError, ValueError):  # the call itself will say what is wrong
            return cls(args, kwargs)
        num_rounds = bound.arguments.get("num_rounds", _default(signature, "num_rounds"))
        evaluate_fn = bound.arguments.get("evaluate_fn")
        return cls(
            args,
            kwargs,
            num_rounds if isinstance(num_rounds, int) else None,
            evaluate_fn if callable(evaluate_fn) else None,
            bound,
        )

    def replace_evaluate_fn(self, evaluate_fn: EvaluateFn) -> None:
        if self._bound is not None:
            self._bound.arguments["evaluate_fn"] = evaluate_fn
            self.args, self.kwargs = self._bound.args, self._bound.kwargs


def _default(signature: inspect.Signature, name: str) -> object:
    parameter = signature.parameters.get(name)
    return None if parameter is None else parameter.default


def _round_argument(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int | None:
    """The ``server_round`` of a configure_*/aggregate_* call (its first parameter)."""
    value = args[0] if args else kwargs.get("server_round")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _listed_replies(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[list[Message] | None, tuple[Any, ...], dict[str, Any]]:
    """The replies of an aggregate_* call as a list (read here, then by the strategy)."""
    if len(args) > 1:
        replies = list(args[1])
        return replies, (args[0], replies, *args[2:]), kwargs
    if "replies" in kwargs:
        replies = list(kwargs["replies"])
        return replies, args, {**kwargs, "replies": replies}
    return None, args, kwargs


def _reply_metrics(reply: Message) -> dict[str, float]:
    records = reply.content.metric_records
    if not records:
        return {}
    return _scalars(next(iter(records.values())))


def _client_round_fields(candidates: Mapping[str, float]) -> dict[str, float]:
    return {k: v for k, v in candidates.items() if _CLIENT_ROUND.accepts_field(k)}


def _train_reply_fields(
    metrics: Mapping[str, float], examples: float | None, duration: float | None
) -> dict[str, float]:
    """A train reply's metrics under their federated names (``loss`` → ``train_loss``)."""
    fields = _client_round_fields(federated_metrics(metrics, PHASE_TRAIN))
    if examples is not None:
        fields[schema.NUM_EXAMPLES] = examples
    if duration is not None:
        fields[schema.DURATION_S] = duration
    return fields


def _evaluate_reply_fields(
    metrics: Mapping[str, float], examples: float | None, duration: float | None
) -> dict[str, float]:
    """An evaluation reply's metrics under their federated names (``eval_acc``,
    ``accuracy`` → ``val_acc``; ``loss`` → ``val_loss``)."""
    fields = federated_metrics(metrics, PHASE_EVALUATE)
    if examples is not None:
        fields["val_num_examples"] = examples
    if duration is not None:
        fields["val_duration_s"] = duration
    return _client_round_fields(fields)


def _summed_confusion_counts(
    aggregate: Mapping[str, float], replies: list[Message]
) -> dict[str, float]:
    """For each confusion-matrix metric in the aggregate, the sum over the valid replies."""
    names = [n for n in aggregate if schema.evaluation_field(n) in schema.CONFUSION_FIELDS]
    valid = [_reply_metrics(r) for r in replies if not r.has_error()]
    sums: dict[str, float] = {}
    for name in names:
        values = [m[name] for m in valid if name in m]
        if values and len(values) == len(valid):
            sums[name] = float(sum(values))
    return sums
