"""Flower cannot tell a wrapped strategy from the strategy: the contract, at the installed flwr.

Every Message-API strategy Flower ships runs bare and wrapped on the same seeded inputs
through ``ClientAppGrid``: a Grid that hands each instruction to a real ``ClientApp`` (its
mods included), each node getting its own copy of the contents through Flower's own
protobuf serialisation, as over the wire. Flower's code runs on both sides; only the
transport is in-process (the simulation and deployment engines run end to end in
tests/trainer/test_federated.py).
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.serverapp import Grid
from flwr.serverapp import strategy as flower_strategies
from flwr.serverapp.strategy import (
    Bulyan,
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedXgbBagging,
    FedXgbCyclic,
    FedYogi,
    Krum,
    MultiKrum,
    QFedAvg,
    Result,
    Strategy,
)
from flwr.supercore.privacy_accounting import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    PrivacySpent,
    SamplingMethod,
)
from flwr.supercore.task_identity import TaskIdentity

from collector.config import Settings, load_settings
from collector.flower import (
    ClientReport,
    FederatedRun,
    RunNote,
    RunwatchStrategy,
    attach_client_report,
    read_run_note,
)
from collector.flower.protocol import RECORD_NAME, attach_run_note
from collector.recorder import RecorderTuning
from collector.shipper import RetryPolicy, ShipTuning
from collector.store import Store
from tests.servers._process import free_port

NODES = (101, 102, 103, 104, 105, 106)
SAMPLED = 3  # fraction 0.5 of six nodes
ROUNDS = 3
SEED = 20240


@pytest.fixture(autouse=True)
def task_identity() -> Iterator[None]:
    """Messages need a run and node identity; Flower's runtime sets it per process."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@pytest.fixture
def settings(runwatch_env: Path) -> Settings:
    return load_settings()


# -- the grid and the client apps -----------------------------------------------------------


def over_the_wire(content: RecordDict) -> RecordDict:
    return recorddict_from_proto(recorddict_to_proto(content))


class ClientAppGrid(Grid):
    """Delivers each instruction to a real ClientApp, one Context (and state) per node."""

    def __init__(self, app: ClientApp, nodes: Iterable[int] = NODES) -> None:
        self.app = app
        self.contexts = {
            node: Context(7, node, {"partition-id": i}, RecordDict(), {})
            for i, node in enumerate(nodes)
        }
        self.sent: list[tuple[str, list[int]]] = []
        """(message type, destination nodes) of every send_and_receive, in order."""
        self.delivered: list[Message] = []
        """Every instruction as its node received it."""

    def set_run(self, run: Any) -> None:  # pragma: no cover - not used
        raise NotImplementedError

    @property
    def run(self) -> Any:  # pragma: no cover - not used
        raise NotImplementedError

    def create_message(self, *args: Any, **kwargs: Any) -> Message:  # pragma: no cover
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # pragma: no cover
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # pragma: no cover
        raise NotImplementedError

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        kinds = {m.metadata.message_type for m in messages}
        self.sent.append(("/".join(sorted(kinds)), [m.metadata.dst_node_id for m in messages]))
        return [self._deliver(message) for message in messages]

    def _deliver(self, message: Message) -> Message:
        node = message.metadata.dst_node_id
        received = Message(
            content=over_the_wire(message.content),
            dst_node_id=node,
            message_type=message.metadata.message_type,
        )
        self.delivered.append(received)
        reply = self.app(received, self.contexts[node])
        if reply.has_error():
            return Message(reply.error, reply_to=message)
        return Message(content=over_the_wire(reply.content), reply_to=message)


def server_round_of(message: Message) -> int:
    config = next(iter(message.content.config_records.values()))
    return int(config["server-round"])  # type: ignore[arg-type]


def reply_with_report(message: Message, content: RecordDict, node: int) -> Message:
    """The reply a runwatch client sends: its report beside the records, when it has a note."""
    if read_run_note(message) is not None:
        attach_client_report(content, ClientReport(str(node), epochs=[{"epoch": 0.0}]))
    return Message(content=content, reply_to=message)


def numeric_app(
    train_mods: Iterable[Any] = (), weight: Callable[[int], int] = lambda node: node - 90
) -> ClientApp:
    """Local 'training': a node- and round-seeded step on every array (a private generator)."""
    app = ClientApp()

    @app.train(mods=list(train_mods))
    def train(message: Message, context: Context) -> Message:
        server_round = server_round_of(message)
        rng = np.random.default_rng([context.node_id, server_round])
        arrays = message.content.array_records["arrays"]
        updated = ArrayRecord(
            {k: Array(v.numpy() + rng.normal(0.0, 0.5, v.shape)) for k, v in arrays.items()}
        )
        metrics = MetricRecord(
            {"train_loss": float(rng.uniform(0.1, 1.0)), "num-examples": weight(context.node_id)}
        )
        content = RecordDict({"arrays": updated, "metrics": metrics})
        return reply_with_report(message, content, context.node_id)

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        arrays = message.content.array_records["arrays"]
        mean = float(np.mean([v.numpy().mean() for v in arrays.values()]))
        metrics = MetricRecord(
            {"loss": abs(mean) + context.node_id / 1000, "num-examples": weight(context.node_id)}
        )
        return reply_with_report(message, RecordDict({"metrics": metrics}), context.node_id)

    return app


def xgb_model(leaves: list[float]) -> np.ndarray:
    """An XGBoost JSON model as Flower's XGBoost strategies read it, one tree per leaf."""
    n = len(leaves)
    model = {
        "learner": {
            "gradient_booster": {
                "model": {
                    "gbtree_model_param": {"num_trees": str(n), "num_parallel_tree": "1"},
                    "iteration_indptr": list(range(n + 1)),
                    "trees": [{"id": i, "leaf": leaf} for i, leaf in enumerate(leaves)],
                    "tree_info": [0] * n,
                }
            }
        }
    }
    return np.frombuffer(json.dumps(model).encode(), dtype=np.uint8)


def xgb_app() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        leaf = context.node_id / 100 + server_round_of(message)
        content = RecordDict(
            {
                "arrays": ArrayRecord([xgb_model([leaf])]),
                "metrics": MetricRecord({"train_loss": 1 / leaf, "num-examples": 10}),
            }
        )
        return reply_with_report(message, content, context.node_id)

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        model = json.loads(message.content.array_records["arrays"]["0"].numpy().tobytes())
        trees = len(model["learner"]["gradient_booster"]["model"]["trees"])
        metrics = MetricRecord({"trees": trees, "num-examples": 10})
        return reply_with_report(message, RecordDict({"metrics": metrics}), context.node_id)

    return app


def numeric_arrays() -> ArrayRecord:
    return ArrayRecord(
        {"w": Array(np.linspace(-1, 1, 6, dtype=np.float64)), "b": Array(np.zeros(2))}
    )


def central_evaluation(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
    if "w" not in arrays:
        return None
    return MetricRecord({"test_loss": float(np.abs(arrays["w"].numpy()).mean())})


# -- every strategy Flower ships --------------------------------------------------------------


def sampling(**extra: Any) -> dict[str, Any]:
    return {
        "fraction_train": 0.5,
        "fraction_evaluate": 0.5,
        "min_train_nodes": 2,
        "min_evaluate_nodes": 2,
        "min_available_nodes": len(NODES),
        **extra,
    }


@dataclass(frozen=True)
class Case:
    make: Callable[[], Strategy]
    app: Callable[[], ClientApp] = numeric_app
    initial: Callable[[], ArrayRecord] = numeric_arrays


CASES: dict[str, Case] = {
    "FedAvg": Case(lambda: FedAvg(**sampling())),
    "FedAvgM": Case(lambda: FedAvgM(**sampling(server_momentum=0.9))),
    "FedAdagrad": Case(lambda: FedAdagrad(**sampling())),
    "FedAdam": Case(lambda: FedAdam(**sampling())),
    "FedYogi": Case(lambda: FedYogi(**sampling())),
    "FedMedian": Case(lambda: FedMedian(**sampling())),
    "FedProx": Case(lambda: FedProx(**sampling(proximal_mu=0.1))),
    "FedTrimmedAvg": Case(lambda: FedTrimmedAvg(**sampling(beta=0.2))),
    "Krum": Case(lambda: Krum(**sampling())),
    "MultiKrum": Case(lambda: MultiKrum(**sampling(num_nodes_to_select=2))),
    "Bulyan": Case(lambda: Bulyan(**sampling())),
    "QFedAvg": Case(lambda: QFedAvg(client_learning_rate=0.1, **sampling(q=0.2))),
    "FedXgbBagging": Case(
        lambda: FedXgbBagging(**sampling()),
        app=xgb_app,
        initial=lambda: ArrayRecord([xgb_model([0.0])]),
    ),
    "FedXgbCyclic": Case(
        lambda: FedXgbCyclic(min_available_nodes=len(NODES)),
        app=xgb_app,
        initial=lambda: ArrayRecord([xgb_model([0.0])]),
    ),
    "DifferentialPrivacyServerSideFixedClipping": Case(
        lambda: DifferentialPrivacyServerSideFixedClipping(FedAvg(**sampling()), 0.5, 1.0, SAMPLED)
    ),
    "DifferentialPrivacyServerSideAdaptiveClipping": Case(
        lambda: DifferentialPrivacyServerSideAdaptiveClipping(FedAvg(**sampling()), 0.2, SAMPLED)
    ),
    "DifferentialPrivacyClientSideFixedClipping": Case(
        lambda: DifferentialPrivacyClientSideFixedClipping(FedAvg(**sampling()), 0.5, 1.0, SAMPLED),
        app=lambda: numeric_app(train_mods=[fixedclipping_mod]),
    ),
    "DifferentialPrivacyClientSideAdaptiveClipping": Case(
        lambda: DifferentialPrivacyClientSideAdaptiveClipping(FedAvg(**sampling()), 0.2, SAMPLED),
        app=lambda: numeric_app(train_mods=[adaptiveclipping_mod]),
    ),
}


def test_every_strategy_flower_ships_is_covered() -> None:
    shipped = {
        name
        for name in flower_strategies.__all__
        if isinstance(cls := getattr(flower_strategies, name), type)
        and issubclass(cls, Strategy)
        and cls is not Strategy
    }
    assert shipped == set(CASES)


@dataclass
class Outcome:
    result: Result
    sent: list[tuple[str, list[int]]]
    delivered: list[Message] = field(repr=False)


def seeded_start(strategy: Strategy, case: Case, num_rounds: int = ROUNDS) -> Outcome:
    random.seed(SEED)
    np.random.seed(SEED)  # Flower's DP noise draws from the global numpy generator
    grid = ClientAppGrid(case.app())
    result = strategy.start(
        grid,
        case.initial(),
        num_rounds=num_rounds,
        train_config=ConfigRecord({"lr": 0.1}),
        evaluate_config=ConfigRecord(),
        evaluate_fn=central_evaluation,
    )
    return Outcome(result, grid.sent, grid.delivered)


def assert_same_result(wrapped: Result, bare: Result) -> None:
    assert list(wrapped.arrays.keys()) == list(bare.arrays.keys())
    for key in bare.arrays:
        np.testing.assert_array_equal(wrapped.arrays[key].numpy(), bare.arrays[key].numpy())
    for name in (
        "train_metrics_clientapp",
        "evaluate_metrics_clientapp",
        "evaluate_metrics_serverapp",
    ):
        ours, theirs = getattr(wrapped, name), getattr(bare, name)
        assert {r: dict(m) for r, m in ours.items()} == {r: dict(m) for r, m in theirs.items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_wrapped_strategy_does_what_the_bare_one_does(name: str, settings: Settings) -> None:
    case = CASES[name]
    bare = seeded_start(case.make(), case)
    with FederatedRun(name, settings=settings) as run:
        wrapped = seeded_start(run.wrap(case.make()), case)

    assert wrapped.sent == bare.sent  # the same nodes, in the same order, every round
    assert_same_result(wrapped.result, bare.result)
    assert bare.result.train_metrics_clientapp  # something was trained and aggregated
    assert not [m for m in wrapped.delivered if m.has_error()]
    # Each instruction kept its shape (one ConfigRecord) and carried the run's note.
    assert {len(m.content.config_records) for m in wrapped.delivered} == {1}
    notes = {read_run_note(m) for m in wrapped.delivered}
    assert {(n.run_id, n.experiment) for n in notes if n} == {(run.run_id, name)}
    assert None not in notes
    # and the rounds were recorded
    rounds = Store.from_settings(settings).rounds(run.run_id)
    assert [(r.round_number, r.status) for r in rounds] == [
        (n, "completed") for n in range(1, ROUNDS + 1)
    ]
    trained = {len(nodes) for kind, nodes in wrapped.sent if kind == "train"}
    assert {r.num_clients for r in rounds} == trained


# -- client-side differential privacy --------------------------------------------------------


@pytest.mark.parametrize(
    ("dp_strategy", "mod"),
    [
        (DifferentialPrivacyClientSideFixedClipping, fixedclipping_mod),
        (DifferentialPrivacyClientSideAdaptiveClipping, adaptiveclipping_mod),
    ],
    ids=["fixed", "adaptive"],
)
@pytest.mark.parametrize("order", ["runwatch-outside", "runwatch-inside"])
def test_client_side_dp_mods_clip_and_the_round_aggregates(
    dp_strategy: Callable[..., Strategy], mod: Any, order: str, settings: Settings
) -> None:
    fixed = dp_strategy is DifferentialPrivacyClientSideFixedClipping
    args = (0.5, 1.0, SAMPLED) if fixed else (0.2, SAMPLED)  # noise multiplier, (norm,) sampled
    app = numeric_app(train_mods=[mod])
    with FederatedRun("dp", settings=settings) as run:
        if order == "runwatch-outside":
            strategy = run.wrap(dp_strategy(FedAvg(**sampling()), *args))
        else:
            strategy = dp_strategy(run.wrap(FedAvg(**sampling())), *args)
        grid = ClientAppGrid(app)
        result = strategy.start(grid, numeric_arrays(), num_rounds=2)

    assert sorted(result.train_metrics_clientapp) == [1, 2]
    assert list(result.arrays.keys()) == ["w", "b"]
    train = [m for m in grid.delivered if m.metadata.message_type == "train"]
    assert len(train) == 2 * SAMPLED
    for message in train:  # what the mod saw: one ConfigRecord, the clipping norm and the note
        (config,) = message.content.config_records.values()
        assert "clipping_norm" in config
        assert read_run_note(message) == RunNote(run.run_id, "dp", server_round_of(message))
    store = Store.from_settings(settings)
    assert [r.num_clients for r in store.rounds(run.run_id)] == [SAMPLED, SAMPLED]


class BasicCompositionAccountant:
    """Flower's ``PrivacyAccountant`` protocol by basic composition: each Gaussian release
    costs the classic bound ``sqrt(2 ln(1.25/delta)) / noise_multiplier``."""

    def __init__(self, config: PrivacyConfig) -> None:
        self._config = config
        self._events: list[GaussianPrivacyEvent] = []

    @property
    def config(self) -> PrivacyConfig:
        return self._config

    @property
    def num_releases(self) -> int:
        return len(self._events)

    def compose(self, event: GaussianPrivacyEvent, count: int = 1) -> None:
        self._events += [event] * count

    def _cost(self, event: GaussianPrivacyEvent, delta: float) -> float:
        return math.sqrt(2 * math.log(1.25 / delta)) / event.noise_multiplier

    def get_epsilon(self, delta: float) -> float:
        return sum(self._cost(e, delta) for e in self._events)

    def get_delta(self, epsilon: float) -> float:
        return self._config.target_delta if epsilon >= self.get_epsilon(1e-5) else 1.0

    def get_privacy_spent(self, delta: float | None = None) -> PrivacySpent:
        delta = self._config.target_delta if delta is None else delta
        return PrivacySpent(self.get_epsilon(delta), delta, self.num_releases, "basic")

    def would_exceed(
        self, event: GaussianPrivacyEvent, max_epsilon: float | None = None, count: int = 1
    ) -> bool:
        limit = max_epsilon if max_epsilon is not None else self._config.max_epsilon
        delta = self._config.target_delta
        spent = self.get_epsilon(delta) + count * self._cost(event, delta)
        return limit is not None and spent > limit

    def state_dict(self) -> dict[str, object]:
        return {"releases": len(self._events)}

    def load_state_dict(self, state: dict[str, object]) -> None:  # pragma: no cover
        raise NotImplementedError


def test_dp_fixed_clipping_with_an_accountant_accepts_a_wrapped_fedavg(settings: Settings) -> None:
    accountant = BasicCompositionAccountant(
        PrivacyConfig(
            target_delta=1e-5,
            population_size=len(NODES),
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )
    with FederatedRun("accounted", settings=settings) as run:
        wrapped = run.wrap(FedAvg(**sampling()))
        assert isinstance(wrapped, FedAvg) and isinstance(wrapped, RunwatchStrategy)
        strategy = DifferentialPrivacyServerSideFixedClipping(
            wrapped, 1.0, 1.0, SAMPLED, accountant=accountant
        )
        grid = ClientAppGrid(numeric_app(weight=lambda node: 10))  # accounting: equal weights
        result = strategy.start(grid, numeric_arrays(), num_rounds=2)

    assert sorted(result.train_metrics_clientapp) == [1, 2]
    assert accountant.num_releases == 2
    assert [r.status for r in Store.from_settings(settings).rounds(run.run_id)] == [
        "completed",
        "completed",
    ]


# -- a wrapped strategy is the strategy --------------------------------------------------------


def test_attribute_reads_and_writes_reach_the_wrapped_strategy(settings: Settings) -> None:
    run = FederatedRun("attributes", settings=settings)
    adam = FedAdam()
    wrapped = run.wrap(adam)
    arrays = {"w": np.ones(3)}
    wrapped.current_arrays = arrays
    wrapped.fraction_train = 0.5
    assert adam.current_arrays is arrays and adam.fraction_train == 0.5
    adam.eta = 0.25
    assert wrapped.eta == 0.25
    assert type(wrapped).__name__ == "FedAdam" and isinstance(wrapped, FedAdam)
    assert isinstance(wrapped, RunwatchStrategy)
    assert wrapped.wrapped_strategy is adam and wrapped.runwatch_run is run

    fedavg = FedAvg(min_available_nodes=len(NODES))
    with run:
        selecting = run.wrap(fedavg)
        selecting.fraction_train = 0.5  # after wrapping: the strategy itself now samples half
        outcome = seeded_start(selecting, Case(lambda: fedavg), num_rounds=1)
    assert [len(nodes) for kind, nodes in outcome.sent if kind == "train"] == [SAMPLED]


def test_the_wrapper_shadows_no_attribute_of_the_strategy(settings: Settings) -> None:
    inner = FedAvg()
    dp = DifferentialPrivacyServerSideFixedClipping(inner, 0.5, 1.0, SAMPLED)
    wrapped = run_wrap(settings, dp)
    assert wrapped.strategy is inner  # Flower's DP wrapper's own attribute
    assert wrapped.wrapped_strategy is dp
    assert (
        type(wrapped).aggregate_train is DifferentialPrivacyServerSideFixedClipping.aggregate_train
    )
    assert not hasattr(run_wrap(settings, FedAvg()), "strategy")


def test_wrapping_a_wrapped_strategy_records_in_the_new_run(settings: Settings) -> None:
    inner = FedAvg()
    first = FederatedRun("first", settings=settings)
    second = FederatedRun("second", settings=settings)
    again = second.wrap(first.wrap(inner))
    assert isinstance(again, RunwatchStrategy)
    assert again.wrapped_strategy is inner and again.runwatch_run is second
    assert type(again) is type(first.wrap(FedAvg()))  # one generated class per strategy class


def run_wrap(settings: Settings, strategy: Strategy) -> Any:
    return FederatedRun("wrap", settings=settings).wrap(strategy)


def test_flower_logs_the_wrapped_strategy_by_its_name(settings: Settings) -> None:
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Collect()
    flower_log = logging.getLogger("flwr")
    flower_log.addHandler(handler)
    try:
        with FederatedRun("log", settings=settings) as run:
            seeded_start(run.wrap(FedAvg(**sampling())), CASES["FedAvg"], num_rounds=1)
    finally:
        flower_log.removeHandler(handler)
    assert "Starting FedAvg strategy:" in seen


# -- a strategy with its own loop ----------------------------------------------------------------


class TrainOnceFedAvg(FedAvg):
    """Overrides ``start``: one training round, whatever ``num_rounds`` says, no evaluation."""

    def start(  # type: ignore[override]
        self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3, **_: Any
    ) -> Result:
        result = Result()
        messages = self.configure_train(1, initial_arrays, ConfigRecord(), grid)
        replies = grid.send_and_receive(messages, timeout=60)
        arrays, metrics = self.aggregate_train(1, replies)
        if arrays is not None and metrics is not None:
            result.arrays = arrays
            result.train_metrics_clientapp[1] = metrics
        return result


def test_a_strategy_that_overrides_start_runs_its_own_loop_recorded(settings: Settings) -> None:
    case = Case(lambda: TrainOnceFedAvg(**sampling()))
    bare = seeded_start(case.make(), case, num_rounds=3)
    with FederatedRun("own-loop", settings=settings) as run:
        wrapped = seeded_start(run.wrap(case.make()), case, num_rounds=3)

    assert wrapped.sent == bare.sent == [("train", wrapped.sent[0][1])]  # its one round
    assert_same_result(wrapped.result, bare.result)
    rounds = Store.from_settings(settings).rounds(run.run_id)
    assert [(r.round_number, r.status, r.num_clients) for r in rounds] == [
        (1, "completed", SAMPLED)
    ]
    assert read_run_note(wrapped.delivered[0]) == RunNote(run.run_id, "own-loop", 1)


# -- the note in the instruction ------------------------------------------------------------------


def test_the_note_goes_into_the_one_config_record_and_leaves_the_users_alone() -> None:
    config = ConfigRecord({"lr": 0.1})
    content = RecordDict({"arrays": numeric_arrays(), "config": config})
    first = Message(content=content, message_type="train", dst_node_id=101)
    second = Message(content=content, message_type="train", dst_node_id=102)
    note = RunNote("20240101T000000Z-abcdefghij", "shape", 2)
    attach_run_note(first, note)
    attach_run_note(second, note)

    assert list(content.config_records) == ["config"]
    assert dict(config) == {"lr": 0.1}  # the user's record is not written to
    assert content.config_records["config"]["lr"] == 0.1
    assert read_run_note(first) == note and read_run_note(second) == note


def test_an_instruction_without_config_gets_one_config_record() -> None:
    message = Message(
        content=RecordDict({"arrays": numeric_arrays()}), message_type="train", dst_node_id=5
    )
    note = RunNote("20240101T000000Z-abcdefghij", "bare", 1)
    attach_run_note(message, note)
    assert list(message.content.config_records) == [RECORD_NAME]
    assert read_run_note(message) == note


# -- telemetry never touches the user's random streams --------------------------------------------


def global_rng_states() -> tuple[Any, ...]:
    import torch

    numpy_state = np.random.get_state()
    return (
        random.getstate(),
        (numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]),  # type: ignore[index]
        torch.random.get_rng_state().tolist(),
    )


FAST_RETRIES = RecorderTuning(
    flush_interval_s=0.05,
    ship=ShipTuning(request_timeout_s=5.0, retry=RetryPolicy(base_delay_s=0.01, max_delay_s=0.05)),
)


def influx_settings(settings: Settings, influx: str, request: pytest.FixtureRequest) -> Settings:
    if influx == "down":
        return settings.with_overrides(
            influx_url=f"http://127.0.0.1:{free_port()}", influx_org="runwatch", influx_token="t"
        )
    server = request.getfixturevalue("influxdb2")
    bucket = request.getfixturevalue("influxdb2_bucket")
    token = {
        "up": server.write_token,
        "read-only token": server.read_token,
        "unknown token": "not-a-token",
    }[influx]
    return settings.with_overrides(
        influx_url=server.url, influx_org=server.org, influx_token=token, influx_bucket=bucket
    )


def shipper_has_answered(run: FederatedRun, influx: str) -> bool:
    recorder = run.recorder
    assert recorder is not None
    stats = recorder.stats
    return stats.points_shipped > 0 if influx == "up" else stats.last_error is not None


@pytest.mark.integration
@pytest.mark.parametrize("influx", ["up", "down", "read-only token", "unknown token"])
def test_a_seeded_run_selects_the_same_nodes_whatever_influxdb_does(
    influx: str, settings: Settings, request: pytest.FixtureRequest
) -> None:
    import time

    case = CASES["FedAvg"]
    bare = seeded_start(case.make(), case, num_rounds=4)
    bare_states = global_rng_states()

    configured = influx_settings(settings, influx, request)
    with FederatedRun("seeded", settings=configured, recorder_tuning=FAST_RETRIES) as run:
        wrapped = seeded_start(run.wrap(case.make()), case, num_rounds=4)
        run.flush()
        deadline = time.monotonic() + 60  # not a timing assertion: a bound on the wait
        while not shipper_has_answered(run, influx) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert shipper_has_answered(run, influx)
        assert run.recorder is not None
        run.recorder.close(timeout=0.5)  # retries (and their backoff) until then
        wrapped_states = global_rng_states()

    assert wrapped.sent == bare.sent
    assert_same_result(wrapped.result, bare.result)
    assert wrapped_states == bare_states
