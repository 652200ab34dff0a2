"""The ServerApp side: one federated run's telemetry, and a strategy wrapper that feeds it.

    with FederatedRun("fedavg-demo", num_rounds=3) as run:
        strategy = run.wrap(FedAvg(...))
        result = strategy.start(grid, initial_arrays, num_rounds=3, evaluate_fn=central_eval)

The ServerApp process owns the relational store: it creates the run, persists every
round as it finishes (a server killed after round k leaves rounds 1..k; its run is later
marked crashed by the stale-heartbeat check), persists the epoch histories clients send in
their replies, and serves the ``federated_*`` Prometheus gauges. Clients never open the
database; they write their own points (see ``collector.flower.client``).

Telemetry never raises into training: every failure is logged once per place and counted.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Unpack

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result, Strategy

from collector import schema
from collector.flower.protocol import RunNote, attach_run_note, read_client_report
from collector.run import Run, RunOptions

if TYPE_CHECKING:
    pass

log = logging.getLogger("collector.flower")

PHASE_TRAIN = "train"
PHASE_EVALUATE = "evaluate"
EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]

# Evaluation metric names as the `round` measurement spells them (``val_acc`` → ``accuracy``).
_CLIENT_ROUND = schema.MEASUREMENTS[schema.M_CLIENT_ROUND]


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
    """Evaluation metrics as ``round`` point fields; names it does not know are left out."""
    fields: dict[str, float] = {}
    for name, value in metrics.items():
        target = schema.evaluation_field(name)
        if target is not None:
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


def _utc(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


class FederatedRun(Run):
    """One federated run as the ServerApp process records it (:class:`collector.run.Run`).

    ``start()`` (or ``with``) creates the run in the store, opens the recorder (spool, and
    InfluxDB when configured), starts the Prometheus exporter and a heartbeat thread.
    ``finish(status)`` closes them; ``with`` finishes ``failed`` when the body raises.
    Any of the three may be unavailable (database down, port busy): the others go on.
    It adds the rounds: the planned count on the exporter and ``wrap`` for the strategy.
    """

    def __init__(
        self,
        experiment: str = "default",
        *,
        num_rounds: int | None = None,
        **options: Unpack[RunOptions],
    ) -> None:
        super().__init__(experiment, mode=schema.MODE_FEDERATED, **options)
        self.num_rounds = num_rounds

    def _start_exporter(self) -> None:
        super()._start_exporter()
        exporter = self._exporter
        if exporter is not None and self.num_rounds is not None:
            with self.guard("FederatedRun.start (prometheus)"):
                exporter.set_rounds_planned(self.num_rounds)

    def wrap(self, strategy: Strategy | None = None) -> RunwatchStrategy:
        """``strategy`` (FedAvg by default) wrapped so that every round is recorded here."""
        return RunwatchStrategy(strategy, run=self)


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


class RunwatchStrategy(Strategy):
    """Any Flower ``Strategy`` (FedAvg by default), recorded round by round.

    The wrapped strategy decides everything (sampling, aggregation, what it returns); this
    class only looks at what passes through and adds a ``runwatch`` ConfigRecord to each
    instruction so runwatch clients know their run and round. ``start`` is Flower's own
    round loop (``Strategy.start``) driving the wrapped strategy's methods; a strategy that
    overrides ``start`` itself is not supported (its loop would bypass this wrapper).

    Per round it records: ``round_start`` / ``round_end`` events; each client's reply as a
    ``client_round`` point and a clients row, its epoch history as run_metrics (client and
    round set); failed or missing replies as ``client_failure`` events and in the failed
    counter; the weighted aggregate as a ``round`` point (source=aggregated) and run_metrics
    with context ``aggregated``; the server's central evaluation as a ``round`` point
    (source=server) and a server_evaluations row. Confusion-matrix counts of the aggregate
    are the sums over the clients that replied (a weighted mean of counts is not a count).
    """

    def __init__(self, strategy: Strategy | None = None, *, run: FederatedRun) -> None:
        self.strategy: Strategy = strategy if strategy is not None else FedAvg()
        self.run = run
        self._rounds: dict[int, _RoundState] = {}
        self._server_evaluates = False
        self._known_clients: set[str] = set()
        if type(self.strategy).start is not Strategy.start:
            log.warning(
                "runwatch: %s overrides start(); RunwatchStrategy runs Flower's standard "
                "round loop instead",
                type(self.strategy).__name__,
            )

    def __getattr__(self, name: str) -> Any:
        # Attributes the wrapper does not define are the wrapped strategy's (fraction_train…).
        if name in ("strategy", "run"):
            raise AttributeError(name)
        return getattr(self.strategy, name)

    @property
    def weighted_by_key(self) -> str:
        return str(getattr(self.strategy, "weighted_by_key", "num-examples"))

    # -- Strategy interface ------------------------------------------------------------

    def summary(self) -> None:
        self.strategy.summary()

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: EvaluateFn | None = None,
    ) -> Result:
        """Flower's round loop over the wrapped strategy. A run not started yet is started
        here and finished when the loop ends (``failed`` if it raises)."""
        owns_run = not self.run.started
        self.run.start()
        self._server_evaluates = evaluate_fn is not None
        exporter = self.run.exporter
        if exporter is not None:
            with self.run.guard("RunwatchStrategy.start (prometheus)"):
                exporter.set_rounds_planned(num_rounds)
        try:
            result = super().start(
                grid,
                initial_arrays,
                num_rounds=num_rounds,
                timeout=timeout,
                train_config=train_config,
                evaluate_config=evaluate_config,
                evaluate_fn=self._recorded_evaluate_fn(evaluate_fn),
            )
        except BaseException:
            if owns_run:
                self.run.finish("failed")
            raise
        if owns_run:
            self.run.finish("completed")
        return result

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        with self.run.guard("RunwatchStrategy.configure_train"):
            self._begin_round(server_round)
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        with self.run.guard("RunwatchStrategy.configure_train"):
            self._note_sent(server_round, PHASE_TRAIN, messages)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        with self.run.guard("RunwatchStrategy.aggregate_train (replies)"):
            self._record_replies(server_round, PHASE_TRAIN, replies)
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        with self.run.guard("RunwatchStrategy.aggregate_train (aggregate)"):
            self._round(server_round).aggregated.update(_scalars(metrics))
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(self.strategy.configure_evaluate(server_round, arrays, config, grid))
        with self.run.guard("RunwatchStrategy.configure_evaluate"):
            self._note_sent(server_round, PHASE_EVALUATE, messages)
        return messages

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replies = list(replies)
        with self.run.guard("RunwatchStrategy.aggregate_evaluate (replies)"):
            self._record_replies(server_round, PHASE_EVALUATE, replies)
        metrics = self.strategy.aggregate_evaluate(server_round, replies)
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
        self._round(number).sent[phase] = [m.metadata.dst_node_id for m in messages]
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
        tags = self._tags(state.number, **{schema.CLIENT_ID: client_id})
        self.run.record(schema.M_CLIENT_ROUND, fields, tags)
        if report is not None and report.epochs:
            epochs = report.epochs
            self.run.with_store(
                "RunwatchStrategy.client epochs (store)",
                lambda store: store.persist_epoch_metrics(
                    self.run.run_id, epochs, client_id=client_id, round_number=state.number
                ),
            )

    def _note_evaluate_aggregate(
        self, number: int, metrics: dict[str, float], replies: list[Message]
    ) -> None:
        state = self._round(number)
        metrics.update(_summed_confusion_counts(metrics, replies))
        state.aggregated.update(metrics)
        state.aggregated_fields = round_fields(metrics)

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
    fields = _client_round_fields(metrics)
    if examples is not None:
        fields[schema.NUM_EXAMPLES] = examples
    if duration is not None:
        fields[schema.DURATION_S] = duration
    return fields


def _evaluate_reply_fields(
    metrics: Mapping[str, float], examples: float | None, duration: float | None
) -> dict[str, float]:
    """An evaluation reply's metrics as ``val_*`` fields (``loss`` → ``val_loss``)."""
    fields = {(k if k.startswith("val_") else f"val_{k}"): v for k, v in metrics.items()}
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
