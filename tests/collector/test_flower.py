"""The Flower adapter in-process: real strategies, messages, records, store, spool and exporter.

Only the transport is local: ``LocalGrid`` hands each instruction to a client function in
this process (the simulation and deployment engines are exercised end to end in
tests/trainer/test_federated.py).
"""

from __future__ import annotations

import json
import math
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result
from flwr.supercore.task_identity import TaskIdentity

from collector.config import Settings, load_settings
from collector.flower import (
    ClientReport,
    FederatedRun,
    RunNote,
    RunwatchStrategy,
    attach_client_report,
    evaluation_field,
    read_client_report,
    read_run_note,
    round_fields,
)
from collector.flower.protocol import RECORD_NAME
from collector.flower.server import short_reason
from collector.spool import list_streams
from collector.store import Store
from collector.store.journal import journal_path
from tests.servers._process import free_port

ClientFn = Callable[[Message], Message | None]

VAL_EXAMPLES = {11: 10, 22: 30, 33: 20}
TRAIN_EXAMPLES = {11: 40, 22: 60, 33: 100}


@pytest.fixture(autouse=True)
def task_identity() -> Iterator[None]:
    """Messages need a run and node identity; Flower's runtime sets it per process."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


class LocalGrid(Grid):
    """Delivers each instruction to an in-process client function (None = no reply)."""

    def __init__(self, clients: dict[int, ClientFn]) -> None:
        self.clients = clients

    def set_run(self, run: Any) -> None:  # pragma: no cover - not used
        raise NotImplementedError

    @property
    def run(self) -> Any:  # pragma: no cover - not used
        raise NotImplementedError

    def create_message(self, *args: Any, **kwargs: Any) -> Message:  # pragma: no cover
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.clients)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # pragma: no cover
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # pragma: no cover
        raise NotImplementedError

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = []
        for message in messages:
            reply = self.clients[message.metadata.dst_node_id](message)
            if reply is not None:
                replies.append(reply)
        return replies


@dataclass
class FakeClient:
    """Deterministic local 'training': adds a node-specific step to every weight."""

    node_id: int
    fail_train_in_round: int | None = None
    silent_evaluate_in_round: int | None = None
    notes: list[RunNote | None] = field(default_factory=list)
    config_records: list[list[str]] = field(default_factory=list)

    def __call__(self, message: Message) -> Message | None:
        note = read_run_note(message)
        self.notes.append(note)
        self.config_records.append(list(message.content.config_records))
        server_round = int(message.content.config_records["config"]["server-round"])  # type: ignore[arg-type]
        if message.metadata.message_type == "train":
            if server_round == self.fail_train_in_round:
                return Message(Error(code=1, reason="injected failure"), reply_to=message)
            return self._train(message, server_round, note)
        if server_round == self.silent_evaluate_in_round:
            return None
        return self._evaluate(message, server_round)

    def _train(self, message: Message, server_round: int, note: RunNote | None) -> Message:
        arrays = message.content.array_records["arrays"]
        step = self.node_id / 100.0
        updated = ArrayRecord({k: Array(v.numpy() + step) for k, v in arrays.items()})
        loss = 1.0 / (server_round + self.node_id / 11)
        content = RecordDict(
            {
                "arrays": updated,
                "metrics": MetricRecord(
                    {"train_loss": loss, "num-examples": TRAIN_EXAMPLES[self.node_id]}
                ),
            }
        )
        if note is not None:
            epochs = [{"epoch": 0.0, "train_loss": loss + 0.1}, {"epoch": 1.0, "train_loss": loss}]
            attach_client_report(
                content, ClientReport(str(self.node_id), epochs=epochs, duration_s=0.5)
            )
        return Message(content=content, reply_to=message)

    def _evaluate(self, message: Message, server_round: int) -> Message:
        n = VAL_EXAMPLES[self.node_id]
        tp = n // 2
        metrics = MetricRecord(
            {
                "val_loss": 0.5 / server_round,
                "val_acc": 0.8,
                "val_cm_tp": float(tp),
                "val_cm_tn": float(n - tp),
                "val_cm_fp": 0.0,
                "val_cm_fn": 0.0,
                "num-examples": n,
            }
        )
        return Message(content=RecordDict({"metrics": metrics}), reply_to=message)


def central_evaluation(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    weight = float(next(iter(arrays.values())).numpy().mean())
    return MetricRecord(
        {
            "test_loss": 1.0 / (1 + weight),
            "test_acc": 0.9,
            "test_cm_tp": 40.0,
            "test_cm_tn": 60.0,
            "test_cm_fp": 5.0 + server_round,
            "test_cm_fn": 9.0,
        }
    )


def initial_arrays() -> ArrayRecord:
    return ArrayRecord({"w": Array(np.zeros(4, dtype=np.float32))})


def fedavg() -> FedAvg:
    return FedAvg(min_train_nodes=3, min_evaluate_nodes=3, min_available_nodes=3)


def clients(**overrides: FakeClient) -> dict[int, ClientFn]:
    made: dict[int, ClientFn] = {node: FakeClient(node) for node in (11, 22, 33)}
    for client in overrides.values():
        made[client.node_id] = client
    return made


@pytest.fixture
def settings(runwatch_env: Path) -> Settings:
    return load_settings()


def run_rounds(strategy: Any, grid: Grid, num_rounds: int = 2) -> Result:
    return strategy.start(  # type: ignore[no-any-return]
        grid,
        initial_arrays(),
        num_rounds=num_rounds,
        train_config=ConfigRecord(),
        evaluate_config=ConfigRecord(),
        evaluate_fn=central_evaluation,
    )


def spool_lines(settings: Settings, run_id: str) -> list[str]:
    lines: list[str] = []
    for stream in list_streams(settings.spool_dir, run_id):
        # not splitlines(): the spool keeps newlines of string fields as U+001E, a line break
        # to str.splitlines()
        lines += stream.path.read_text(encoding="utf-8").split("\n")
    return lines


def lines_of(lines: list[str], measurement: str, *tags: str) -> list[str]:
    return [
        line
        for line in lines
        if line.startswith(measurement + ",")
        and all(f",{tag}" in line.split(" ")[0] for tag in tags)
    ]


def field_value(line: str, name: str) -> float:
    fields = line.split(" ")[1] if " " in line else ""
    for pair in fields.split(","):
        key, _, value = pair.partition("=")
        if key == name:
            return float(value)
    raise KeyError(name)


# -- behaviour unchanged -------------------------------------------------------------------


def test_wrapper_returns_exactly_what_the_wrapped_strategy_returns(settings: Settings) -> None:
    bare = run_rounds(fedavg(), LocalGrid(clients()))
    with FederatedRun("same", settings=settings, num_rounds=2) as run:
        wrapped = run_rounds(run.wrap(fedavg()), LocalGrid(clients()))

    np.testing.assert_allclose(wrapped.arrays["w"].numpy(), bare.arrays["w"].numpy(), rtol=1e-6)
    assert wrapped.arrays["w"].numpy().mean() > 0  # the rounds really trained
    for name in (
        "train_metrics_clientapp",
        "evaluate_metrics_clientapp",
        "evaluate_metrics_serverapp",
    ):
        ours, theirs = getattr(wrapped, name), getattr(bare, name)
        assert ours.keys() == theirs.keys()
        for round_number in theirs:
            assert dict(ours[round_number]) == pytest.approx(dict(theirs[round_number]))


def test_instructions_carry_the_run_note_and_attributes_pass_through(settings: Settings) -> None:
    spy = FakeClient(22)
    with FederatedRun("notes", settings=settings) as run:
        strategy = run.wrap(fedavg())
        run_rounds(strategy, LocalGrid(clients(spy=spy)))
    assert strategy.min_train_nodes == 3  # the wrapped FedAvg's attribute
    assert isinstance(strategy, RunwatchStrategy) and isinstance(strategy, FedAvg)
    assert {(n.run_id, n.experiment) for n in spy.notes if n} == {(run.run_id, "notes")}
    assert [n.round_number for n in spy.notes if n] == [1, 1, 2, 2]
    # The note travels inside the instruction's own ConfigRecord: its shape is Flower's.
    assert spy.config_records == [["config"]] * 4


# -- what gets recorded --------------------------------------------------------------------


def test_each_round_is_persisted_with_clients_aggregate_and_server_evaluation(
    settings: Settings,
) -> None:
    with FederatedRun("rounds", settings=settings, num_rounds=2) as run:
        run_rounds(run.wrap(fedavg()), LocalGrid(clients()))
    store = Store.from_settings(settings)

    summary = store.get_run(run.run_id)
    assert (summary.mode, summary.status) == ("federated", "completed")
    assert sorted(summary.clients) == ["11", "22", "33"]
    rounds = store.rounds(run.run_id)
    assert [(r.round_number, r.status, r.num_clients) for r in rounds] == [
        (1, "completed", 3),
        (2, "completed", 3),
    ]
    # Aggregated: weighted means from FedAvg, confusion counts summed over the clients.
    aggregated = {(m.step, m.name): m for m in store.aggregated_metrics(run.run_id)}
    assert aggregated[(2, "val_loss")].value == pytest.approx(0.25)
    assert aggregated[(1, "val_cm_tp")].value == sum(n // 2 for n in VAL_EXAMPLES.values())
    assert aggregated[(1, "val_cm_tn")].value == sum(n - n // 2 for n in VAL_EXAMPLES.values())
    assert aggregated[(1, "val_cm_tp")].dataset_type == "validation"
    assert aggregated[(1, "train_loss")].dataset_type == "train"
    expected_train_loss = sum(TRAIN_EXAMPLES[n] / 200 * 1.0 / (1 + n / 11) for n in TRAIN_EXAMPLES)
    assert aggregated[(1, "train_loss")].value == pytest.approx(expected_train_loss)
    # Server evaluations: one row per round, confusion-matrix columns filled.
    evaluations = store.server_evaluations(run.run_id)
    assert [(e.round_number, e.cm_tp, e.cm_tn, e.cm_fp, e.cm_fn) for e in evaluations] == [
        (1, 40.0, 60.0, 6.0, 9.0),
        (2, 40.0, 60.0, 7.0, 9.0),
    ]
    assert evaluations[0].accuracy == pytest.approx(0.9)
    # Each client's epoch history, with its client and round.
    grouped = store.metrics_grouped_by_client(run.run_id)
    assert sorted(grouped) == ["11", "22", "33"]
    assert sorted({(m.round_number, m.step) for m in grouped["22"]}) == [
        (1, 0), (1, 1), (2, 0), (2, 1),
    ]  # fmt: skip
    assert all(m.context == "epoch_end" and m.name == "train_loss" for m in grouped["22"])
    # Final stats come from the last server evaluation.
    assert store.final_stats(run.run_id)["final_cm_fp"] == 7.0


def test_points_cover_rounds_client_replies_and_events(settings: Settings) -> None:
    with FederatedRun("points", settings=settings, num_rounds=2) as run:
        run_rounds(run.wrap(fedavg()), LocalGrid(clients()))
    lines = spool_lines(settings, run.run_id)

    server = lines_of(lines, "round", "round=2", "source=server")
    assert len(server) == 1
    assert field_value(server[0], "cm_fp") == 7.0
    assert field_value(server[0], "accuracy") == pytest.approx(0.9)
    assert len(lines_of(lines, "round", "round=0", "source=server")) == 1  # initial model
    aggregated = lines_of(lines, "round", "round=1", "source=aggregated")
    assert len(aggregated) == 1
    assert field_value(aggregated[0], "cm_tp") == sum(n // 2 for n in VAL_EXAMPLES.values())
    assert field_value(aggregated[0], "accuracy") == pytest.approx(0.8)
    assert field_value(aggregated[0], "num_clients") == 3.0
    assert field_value(aggregated[0], "num_examples") == 200.0
    assert field_value(aggregated[0], "duration_s") >= 0.0

    replies = lines_of(lines, "client_round", "client_id=22", "round=2")
    train = [line for line in replies if "train_loss=" in line]
    evaluate = [line for line in replies if "val_loss=" in line]
    assert len(train) == 1 and len(evaluate) == 1
    assert field_value(train[0], "num_examples") == 60.0
    assert field_value(train[0], "duration_s") == 0.5
    assert field_value(evaluate[0], "val_cm_tp") == 15.0
    for event in ("round_start", "round_end"):
        assert len(lines_of(lines, "event", f"event={event}")) == 2
    assert len(lines_of(lines, "event", "event=training_end")) == 1
    assert not lines_of(lines, "event", "event=client_failure")


def test_failed_and_missing_replies_are_recorded_and_training_goes_on(settings: Settings) -> None:
    port = free_port()
    settings = settings.with_overrides(prometheus_port=port)
    failing = FakeClient(22, fail_train_in_round=2)
    silent = FakeClient(33, silent_evaluate_in_round=2)
    with FederatedRun("failures", settings=settings, num_rounds=3) as run:
        result = run_rounds(run.wrap(fedavg()), LocalGrid(clients(a=failing, b=silent)), 3)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            exposition = response.read().decode()

    assert sorted(result.train_metrics_clientapp) == [1, 2, 3]
    failures = lines_of(spool_lines(settings, run.run_id), "event", "event=client_failure")
    assert len(failures) == 2
    assert any("client_id=22" in f and "round=2" in f and "injected failure" in f for f in failures)
    assert any("client_id=33" in f and "round=2" in f and "no reply" in f for f in failures)
    store = Store.from_settings(settings)
    rounds = {r.round_number: r for r in store.rounds(run.run_id)}
    assert rounds[2].num_clients == 2 and rounds[3].num_clients == 3
    assert store.get_run(run.run_id).status == "completed"
    # replies: 3 rounds x 3 clients x (train + evaluate) = 18, less the two failures
    labels = {"run_id": run.run_id}
    assert sample(exposition, "federated_clients_failed_total", labels) == 2.0
    assert sample(exposition, "federated_clients_responded_total", labels) == 16.0
    assert sample(exposition, "federated_round", labels) == 3.0
    assert sample(exposition, "federated_rounds_planned", labels) == 3.0
    final_loss = float(central_evaluation(3, result.arrays)["test_loss"])  # type: ignore[arg-type]
    assert sample(exposition, "federated_server_eval_loss", labels) == pytest.approx(final_loss)
    client_loss = sample(exposition, "federated_client_train_loss", {**labels, "client_id": "33"})
    assert client_loss == pytest.approx(1.0 / (3 + 33 / 11))


def sample(exposition: str, name: str, labels: dict[str, str]) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(exposition):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    raise AssertionError(f"{name}{labels} not exported")


@pytest.mark.integration
def test_server_points_reach_influxdb(settings: Settings, victoriametrics: Any) -> None:
    settings = settings.with_overrides(
        influx_url=victoriametrics.url, influx_org="runwatch", influx_token="t0ken"
    )
    with FederatedRun("influx", settings=settings, num_rounds=2) as run:
        run_rounds(run.wrap(fedavg()), LocalGrid(clients()))
    server = victoriametrics.samples(f'round_cm_fp{{run_id="{run.run_id}",source="server"}}')
    by_round = {dict(labels)["round"]: values[-1][1] for labels, values in server.items()}
    assert by_round == {"0": 5.0, "1": 6.0, "2": 7.0}
    replies = victoriametrics.samples(f'client_round_train_loss{{run_id="{run.run_id}"}}')
    assert {(dict(k)["client_id"], dict(k)["round"]) for k in replies} == {
        (c, r) for c in ("11", "22", "33") for r in ("1", "2")
    }


def test_a_server_that_dies_keeps_finished_rounds_and_is_later_marked_crashed(
    settings: Settings,
) -> None:
    class ServerDied(BaseException):
        pass

    class DiesInRound3(FedAvg):
        def configure_train(self, server_round: int, *args: Any) -> Iterable[Message]:
            if server_round == 3:
                raise ServerDied
            return super().configure_train(server_round, *args)

    run = FederatedRun("dies", settings=settings, num_rounds=4).start()
    strategy = run.wrap(DiesInRound3(min_train_nodes=3, min_evaluate_nodes=3))
    with pytest.raises(ServerDied):
        run_rounds(strategy, LocalGrid(clients()), 4)  # no finish(): as if killed
    store = Store.from_settings(settings)
    completed = [r.round_number for r in store.rounds(run.run_id) if r.status == "completed"]
    assert completed == [1, 2]
    assert [e.round_number for e in store.server_evaluations(run.run_id)] == [1, 2]
    assert store.get_run(run.run_id).status == "in_progress"
    assert run.run_id in store.mark_stale_runs_crashed(timedelta(seconds=0))
    assert store.get_run(run.run_id).status == "crashed"


def test_a_wrapper_started_alone_finishes_its_run(settings: Settings) -> None:
    run = FederatedRun("alone", settings=settings)
    run_rounds(run.wrap(fedavg()), LocalGrid(clients()))
    assert run.finished and run.status == "completed"
    assert Store.from_settings(settings).get_run(run.run_id).status == "completed"


def test_telemetry_failures_never_reach_training(settings: Settings, tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the database directory should be")
    broken = settings.with_overrides(db_url=f"sqlite:///{blocked}/sub/runs.db")
    bare = run_rounds(fedavg(), LocalGrid(clients()))
    with FederatedRun("broken-db", settings=broken) as run:
        wrapped = run_rounds(run.wrap(fedavg()), LocalGrid(clients()))
    np.testing.assert_allclose(wrapped.arrays["w"].numpy(), bare.arrays["w"].numpy(), rtol=1e-6)
    # No error reached anyone: the run's metadata went to its journal for `runwatch sync`.
    assert run.errors.counts == {}
    journal = journal_path(broken, run.run_id).read_text().splitlines()
    methods = [json.loads(line)["method"] for line in journal]
    assert methods[0] == "create_run" and methods[-1] == "complete_run"
    assert methods.count("record_round") >= 2
    # the points still reached the spool
    assert lines_of(spool_lines(broken, run.run_id), "round", "source=server")


# -- protocol --------------------------------------------------------------------------------


def test_client_report_round_trip_flags_nonfinite_values() -> None:
    instruction = Message(
        content=RecordDict({"config": ConfigRecord({"server-round": 1})}),
        message_type="train",
        dst_node_id=5,
    )
    content = RecordDict({"metrics": MetricRecord({"num-examples": 3})})
    epochs = [{"epoch": 0.0, "train_loss": math.nan, "val_loss": 0.25}]
    attach_client_report(content, ClientReport("5", epochs=epochs, duration_s=1.5))
    reply = Message(content=content, reply_to=instruction)

    report = read_client_report(reply)
    assert report is not None
    assert report.duration_s == 1.5
    assert report.epochs == [{"epoch": 0.0, "train_loss_nonfinite": 1.0, "val_loss": 0.25}]
    assert len(content.metric_records) == 1  # FedAvg's one-MetricRecord rule still holds
    assert read_run_note(instruction) is None


def test_unreadable_client_report_is_ignored() -> None:
    instruction = Message(content=RecordDict(), message_type="train", dst_node_id=5)
    content = RecordDict({RECORD_NAME: ConfigRecord({"epochs": "{not json"})})
    report = read_client_report(Message(content=content, reply_to=instruction))
    assert report is not None and report.epochs == []


def test_short_reason_keeps_the_message_of_a_long_traceback() -> None:
    wrapped = "\x1b[36mray::ClientAppActor.run()\x1b[39m " + "frame\n  " * 200 + "Message: boom"
    reason = short_reason(wrapped)
    assert reason.endswith("Message: boom") and "\x1b" not in reason and "\n" not in reason
    assert len(reason) <= 410
    assert short_reason("<class 'RuntimeError'>:<'boom'>") == "<class 'RuntimeError'>:<'boom'>"


@pytest.mark.parametrize(
    ("name", "field"),
    [
        ("test_acc", "accuracy"),
        ("val_loss", "loss"),
        ("server_cm_tp", "cm_tp"),
        ("auroc", "auroc"),
        ("eval_auc", "auroc"),
        ("train_loss", None),
        ("num_examples", None),
    ],
)
def test_evaluation_field_names(name: str, field: str | None) -> None:
    assert evaluation_field(name) == field


def test_round_fields_keep_only_evaluation_metrics() -> None:
    assert round_fields({"test_loss": 0.5, "test_acc": 0.9, "lr": 1e-3}) == {
        "loss": 0.5,
        "accuracy": 0.9,
    }
