"""The federated trainer: data split, config, ClientApp telemetry, and whole runs on Flower's
simulation engine and on a real SuperLink with SuperNodes (every process stopped after).

The end-to-end runs take tens of seconds each (Flower and ray start-up dominate), so one
simulation run serves several tests.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from collector.config import Settings, load_settings
from collector.flower import ClientTelemetry, RunNote, read_client_report
from collector.flower.protocol import attach_run_note
from collector.flower.settings import CONFIG_KEYS
from collector.spool import list_streams
from collector.store import Store
from tests.trainer.flower_apps import app_dir_with
from trainer.data import load_splits
from trainer.federated import client_app
from trainer.federated.cli import register_federated, run_train_federated
from trainer.federated.config import FederatedConfig, write_run_config
from trainer.federated.data import client_data, iid_shard
from trainer.federated.engines import APP_DIR
from trainer.federated.runner import FederatedResult, run_federated
from trainer.federated.task import build_model, model_arrays, train_locally

TEST_SPLIT_SIZE = 114  # 20 % of the 569 breast-cancer examples
VAL_SPLIT_SIZE = 114


def isolated_settings(home: Path) -> Settings:
    return load_settings({"RUNWATCH_HOME": str(home), "RUNWATCH_PROMETHEUS_PORT": "0"}, dotenv=None)


def flower_processes(workdir: Path) -> list[psutil.Process]:
    """Live processes whose FLWR_HOME is under ``workdir`` (ray workers inherit it too)."""
    found = []
    for process in psutil.process_iter():
        try:
            flwr_home = process.environ().get("FLWR_HOME", "")
            if flwr_home.startswith(str(workdir)) and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.Error:
            continue
    return found


def assert_nothing_left(workdir: Path) -> None:
    deadline = time.monotonic() + 10
    while (left := flower_processes(workdir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, [(p.pid, p.name()) for p in left]


def spool_lines(settings: Settings, run_id: str) -> list[str]:
    # not splitlines(): string fields keep their newlines as U+001E in the spool, which
    # str.splitlines() would also break at
    streams = list_streams(settings.spool_dir, run_id)
    text = "".join(s.path.read_text(encoding="utf-8") for s in streams)
    return [line for line in text.split("\n") if line]


# -- pieces ----------------------------------------------------------------------------------


def test_iid_shards_are_disjoint_equal_and_cover_the_split() -> None:
    train = load_splits().train
    shards = [iid_shard(train, i, 3, seed=7) for i in range(3)]
    sizes = [len(s) for s in shards]
    assert sum(sizes) == len(train) and max(sizes) - min(sizes) <= 1
    rows = {tuple(row.tolist()) for s in shards for row in s.features}
    assert len(rows) == len(train)
    again = iid_shard(train, 1, 3, seed=7)
    assert again.features.equal(shards[1].features)  # same seed, same partition, any process
    with pytest.raises(ValueError, match="partition_id"):
        iid_shard(train, 3, 3, seed=7)


def test_run_config_round_trips_through_flowers_toml(tmp_path: Path) -> None:
    config = FederatedConfig(
        num_rounds=4, num_clients=3, lr=0.01, experiment="a b", telemetry=False
    )
    path = write_run_config(config, tmp_path / "run.toml")
    assert FederatedConfig.from_run_config(tomllib.loads(path.read_text())) == config
    declared = tomllib.loads((APP_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    runwatch_keys = {k for k in declared["config"] if k.startswith("runwatch-")}
    assert runwatch_keys <= set(CONFIG_KEYS)
    assert set(declared["config"]) - runwatch_keys == set(config.to_run_config())
    assert FederatedConfig.from_run_config(declared["config"]) == FederatedConfig()


def test_cli_rejects_bad_arguments() -> None:
    parser = argparse.ArgumentParser()
    register_federated(parser.add_subparsers(dest="mode"))
    args = parser.parse_args(["federated", "--rounds", "2", "--clients", "3"])
    assert (args.rounds, args.clients, args.engine) == (2, 3, "simulation")
    for bad in (["--engine", "cloud"], ["--rounds", "0"], ["--experiment", 'a"b']):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(["federated", *bad])
        assert exit_info.value.code == 2


@pytest.fixture
def task_identity() -> Iterator[None]:
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def test_client_trains_with_telemetry_tagged_and_never_opens_the_database(
    runwatch_env: Path, task_identity: None
) -> None:
    settings = load_settings()
    config = FederatedConfig(local_epochs=2, num_clients=2)
    data = client_data(0, 2)
    arrays = model_arrays(build_model(data.num_features, config))
    instruction = Message(
        content=RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 4})}),
        message_type="train",
        dst_node_id=1234,
    )
    attach_run_note(instruction, RunNote("run-abc", "client-test", 4))
    context = Context(
        run_id=7,
        node_id=1234,
        node_config={"partition-id": 0, "num-partitions": 2},
        state=RecordDict(),
        run_config=config.to_run_config(),
    )

    reply = client_app.train(instruction, context)

    metrics = reply.content.metric_records["metrics"]
    assert metrics["num-examples"] == len(data.train)
    assert set(metrics) == {"num-examples", *client_app.TRAIN_REPLY_METRICS}
    assert isinstance(reply.content.array_records["arrays"], ArrayRecord)
    report = read_client_report(reply)
    assert report is not None and report.duration_s is not None and report.duration_s > 0
    assert [e["epoch"] for e in report.epochs] == [0.0, 1.0]
    assert {"train_loss", "val_loss", "val_cm_tp"} <= set(report.epochs[-1])
    epochs = [line for line in spool_lines(settings, "run-abc") if line.startswith("epoch,")]
    assert len(epochs) == 2
    assert all("client_id=1234" in e and "round=4" in e and "mode=federated" in e for e in epochs)
    assert not (settings.home / "runs.db").exists()  # clients never open the relational DB


@pytest.mark.integration
def test_client_points_reach_influxdb_tagged_by_client_and_round(
    runwatch_env: Path, task_identity: None, victoriametrics: Any
) -> None:
    settings = load_settings().with_overrides(
        influx_url=victoriametrics.url, influx_org="runwatch", influx_token="t0ken"
    )
    config = FederatedConfig(num_clients=2)
    arrays = model_arrays(build_model(client_data(1, 2).num_features, config))
    instruction = Message(
        content=RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 2})}),
        message_type="train",
        dst_node_id=4321,
    )
    attach_run_note(instruction, RunNote("run-vm-client", "client-influx", 2))
    context = Context(7, 4321, {"partition-id": 1, "num-partitions": 2}, RecordDict(), {})
    telemetry = ClientTelemetry.for_message(instruction, context, settings=settings)
    assert telemetry is not None
    data = client_data(1, 2)
    with telemetry:
        train_locally(
            build_model(data.num_features, config),
            data,
            config,
            seed=1,
            logger=telemetry.logger,
            callbacks=telemetry.callbacks,
        )
    found = victoriametrics.samples('epoch_train_loss{run_id="run-vm-client"}')
    assert len(found) == 1
    labels = dict(next(iter(found)))
    assert (labels["client_id"], labels["round"], labels["mode"]) == ("4321", "2", "federated")


def test_client_checkpoints_go_under_the_runs_home_tagged_with_its_partition(
    runwatch_env: Path, tmp_path: Path, task_identity: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning's default ModelCheckpoint of a client writes under RUNWATCH_HOME (not into
    the working directory of Flower's process), the kept files travel in the report, and
    the client's points carry its node config's partition id."""
    import lightning.pytorch as pl

    cwd = tmp_path / "superlink-cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    config = FederatedConfig(num_clients=2)
    data = client_data(1, 2)
    instruction = Message(
        content=RecordDict({"config": ConfigRecord({"server-round": 3})}),
        message_type="train",
        dst_node_id=77,
    )
    attach_run_note(instruction, RunNote("run-ckpt", "client-ckpt", 3))
    context = Context(7, 77, {"partition-id": 1, "num-partitions": 2}, RecordDict(), {})
    with ClientTelemetry.for_message(instruction, context) as telemetry:
        trainer = pl.Trainer(
            max_epochs=2,
            logger=telemetry.logger,
            callbacks=telemetry.callbacks,
            enable_progress_bar=False,
            enable_model_summary=False,
        )  # checkpointing on, as by default
        trainer.fit(
            build_model(data.num_features, config),
            data.train_loader(32, 1),
            data.val_loader(32),
        )
    content = telemetry.attach_report(RecordDict({"metrics": MetricRecord({"num-examples": 1})}))
    report = read_client_report(Message(content, reply_to=instruction))
    assert report is not None and report.partition_id == "1"
    assert not list(cwd.rglob("*.ckpt"))
    expected_dir = runwatch_env / "checkpoints" / "run-ckpt" / "client-77" / "round-3"
    assert report.checkpoints and all(
        Path(p).parent == expected_dir and Path(p).is_file() for p in report.checkpoints
    )
    assert len(report.checkpoints) == 1  # the default keeps the latest only
    epochs = [
        line for line in spool_lines(load_settings(), "run-ckpt") if line.startswith("epoch,")
    ]
    assert len(epochs) == 2 and all(",partition_id=1" in e.split(" ")[0] for e in epochs)


def test_client_without_runwatch_server_trains_plainly(
    runwatch_env: Path, task_identity: None
) -> None:
    config = FederatedConfig(num_clients=2)
    arrays = model_arrays(build_model(client_data(1, 2).num_features, config))
    instruction = Message(
        content=RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})}),
        message_type="train",
        dst_node_id=99,
    )
    context = Context(7, 99, {"partition-id": 1, "num-partitions": 2}, RecordDict(), {})
    reply = client_app.train(instruction, context)
    assert read_client_report(reply) is None
    assert not (runwatch_env / "spool").exists() or not any((runwatch_env / "spool").iterdir())


def test_readme_client_pattern_under_a_server_without_runwatch(
    runwatch_env: Path, tmp_path: Path, task_identity: None
) -> None:
    """The README's ClientApp code, pasted as is, when the ServerApp does not run runwatch:
    it trains and replies as without runwatch, and records nothing."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    class Regression(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            features, targets = batch
            loss = torch.nn.functional.mse_loss(self.layer(features), targets)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    msg = Message(
        content=RecordDict({"config": ConfigRecord({"server-round": 1})}),
        message_type="train",
        dst_node_id=5,
    )
    context = Context(7, 5, {"partition-id": 0, "num-partitions": 1}, RecordDict(), {})
    loader = DataLoader(TensorDataset(torch.randn(32, 4), torch.randn(32, 1)), batch_size=8)
    with ClientTelemetry.for_message(msg, context) as telemetry:
        trainer = L.Trainer(
            logger=telemetry.logger,
            callbacks=telemetry.callbacks,
            max_epochs=1,
            default_root_dir=tmp_path,
            enable_progress_bar=False,
            enable_checkpointing=False,
        )
        trainer.fit(Regression(), loader)
    assert trainer.global_step == 4
    content = RecordDict({"metrics": MetricRecord({"num-examples": 32})})
    assert telemetry.attach_report(content) is content
    assert not telemetry.attached and read_client_report(Message(content, reply_to=msg)) is None
    assert not (runwatch_env / "spool").exists() or not any((runwatch_env / "spool").iterdir())


# -- whole runs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimulatedRun:
    run_id: str
    settings: Settings
    workdir: Path
    output: str
    exit_code: int


@pytest.fixture(scope="module")
def simulated_run(tmp_path_factory: pytest.TempPathFactory) -> SimulatedRun:
    """``runwatch train federated --engine simulation --clients 3 --rounds 3``, once."""
    settings = isolated_settings(tmp_path_factory.mktemp("federated-simulation"))
    parser = argparse.ArgumentParser()
    register_federated(parser.add_subparsers(dest="mode"))
    args = parser.parse_args(
        ["federated", "--engine", "simulation", "--clients", "3", "--rounds", "3",
         "--experiment", "sim-e2e", "--timeout", "500"]
    )  # fmt: skip
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exit_code = run_train_federated(args, settings)
    (summary,) = Store.from_settings(settings).list_runs()
    workdir = settings.home / "federated" / summary.run_id
    return SimulatedRun(summary.run_id, settings, workdir, output.getvalue(), exit_code)


@pytest.mark.slow
def test_simulation_three_clients_three_rounds_completes(simulated_run: SimulatedRun) -> None:
    assert simulated_run.exit_code == 0
    assert f"run id        {simulated_run.run_id} (completed, simulation engine, 3 rounds" in (
        simulated_run.output
    )
    store = Store.from_settings(simulated_run.settings)
    summary = store.get_run(simulated_run.run_id)
    assert (summary.experiment, summary.mode, summary.status) == (
        "sim-e2e",
        "federated",
        "completed",
    )
    assert len(summary.clients) == 3
    assert sorted(summary.client_partitions.values()) == ["0", "1", "2"]
    assert [(r.round_number, r.status, r.num_clients) for r in summary.rounds] == [
        (1, "completed", 3), (2, "completed", 3), (3, "completed", 3),
    ]  # fmt: skip
    assert summary.hyperparams["num_clients"] == 3
    assert summary.final_stats["final_cm_tp"] + summary.final_stats["final_cm_fn"] > 0
    assert_nothing_left(simulated_run.workdir)


@pytest.mark.slow
def test_simulation_points_are_tagged_by_client_and_round(simulated_run: SimulatedRun) -> None:
    lines = spool_lines(simulated_run.settings, simulated_run.run_id)
    client_ids = Store.from_settings(simulated_run.settings).get_run(simulated_run.run_id).clients
    for client_id in client_ids:
        for round_number in (1, 2, 3):
            tags = (f"client_id={client_id}", f"round={round_number}")
            epoch = [x for x in lines if x.startswith("epoch,") and all(t in x for t in tags)]
            replies = [
                x for x in lines if x.startswith("client_round,") and all(t in x for t in tags)
            ]
            assert len(epoch) == 1, (client_id, round_number)
            assert len(replies) == 2  # its train reply and its evaluate reply
    for source in ("server", "aggregated"):
        assert sum(1 for x in lines if x.startswith("round,") and f"source={source}" in x) >= 3
    for event in ("training_start", "round_start", "round_end", "training_end"):
        assert any(x.startswith("event,") and f"event={event}" in x for x in lines), event


# The store's federated queries (per client, per context, aggregated), on a finished federated run.


@pytest.mark.slow
def test_pattern4_metrics_grouped_by_client(simulated_run: SimulatedRun) -> None:
    store = Store.from_settings(simulated_run.settings)
    grouped = store.metrics_grouped_by_client(simulated_run.run_id)
    assert sorted(grouped) == sorted(store.get_run(simulated_run.run_id).clients)
    for client_id, metrics in grouped.items():
        assert all(m.client_id == client_id and m.context == "epoch_end" for m in metrics)
        assert sorted({m.round_number for m in metrics}) == [1, 2, 3]
        names = {m.name for m in metrics}
        assert {"train_loss", "val_loss", "val_acc", "val_cm_tp", "val_cm_fn"} <= names
        assert [m.step for m in metrics] == sorted(m.step for m in metrics)


@pytest.mark.slow
def test_pattern4_aggregated_metrics_by_run(simulated_run: SimulatedRun) -> None:
    store = Store.from_settings(simulated_run.settings)
    aggregated = store.aggregated_metrics(simulated_run.run_id)
    assert [m.step for m in aggregated] == sorted(m.step for m in aggregated)
    by_round: dict[int, dict[str, float]] = {}
    for m in aggregated:
        assert m.context == "aggregated" and m.client_id is None and m.round_number == m.step
        by_round.setdefault(m.step, {})[m.name] = m.value
    assert sorted(by_round) == [1, 2, 3]
    for values in by_round.values():
        # every client evaluated its validation share: the summed matrix covers the split
        cm = sum(values[f"val_cm_{k}"] for k in ("tp", "tn", "fp", "fn"))
        assert cm == VAL_SPLIT_SIZE
        assert 0.0 <= values["val_acc"] <= 1.0 and values["train_loss"] > 0


@pytest.mark.slow
def test_pattern4_server_evaluations_per_round(simulated_run: SimulatedRun) -> None:
    store = Store.from_settings(simulated_run.settings)
    evaluations = store.server_evaluations(simulated_run.run_id)
    assert [e.round_number for e in evaluations] == [1, 2, 3]
    for e in evaluations:
        assert None not in (e.loss, e.accuracy, e.cm_tp, e.cm_tn, e.cm_fp, e.cm_fn)
        assert e.cm_tp + e.cm_tn + e.cm_fp + e.cm_fn == TEST_SPLIT_SIZE  # type: ignore[operator]
        assert e.accuracy == pytest.approx((e.cm_tp + e.cm_tn) / TEST_SPLIT_SIZE, abs=1e-6)  # type: ignore[operator]


@pytest.mark.slow
def test_pattern4_metrics_by_dataset_type(simulated_run: SimulatedRun) -> None:
    store = Store.from_settings(simulated_run.settings)
    validation = store.metrics_by_dataset_type(simulated_run.run_id, "validation")
    train = store.metrics_by_dataset_type(simulated_run.run_id, "train")
    assert validation and train
    assert all(m.name.startswith("val_") for m in validation)
    assert all(m.name.startswith("train_") for m in train)
    assert {m.context for m in validation} == {"epoch_end", "aggregated"}
    # the store orders by client (run-level rows first), then step
    for client_id in {m.client_id for m in validation}:
        steps = [m.step for m in validation if m.client_id == client_id]
        assert steps == sorted(steps)
    aggregated_rounds = {m.round_number for m in validation if m.context == "aggregated"}
    assert aggregated_rounds == {1, 2, 3}


@pytest.mark.slow
def test_simulation_client_failure_in_round_two_is_recorded(tmp_path: Path) -> None:
    settings = isolated_settings(tmp_path / "home")
    config = FederatedConfig(num_rounds=3, num_clients=2, experiment="faulty")
    result = run_federated(
        config,
        settings,
        workdir=tmp_path / "flower",
        app_dir=app_dir_with(tmp_path, "faulty_client", "clientapp"),
        timeout_s=500,
    )
    assert result.ok, result
    store = Store.from_settings(settings)
    rounds = {r.round_number: r for r in store.rounds(result.run_id)}
    assert [rounds[n].status for n in (1, 2, 3)] == ["completed"] * 3
    assert (rounds[1].num_clients, rounds[2].num_clients, rounds[3].num_clients) == (2, 1, 2)
    failures = [
        line
        for line in spool_lines(settings, result.run_id)
        if line.startswith("event,") and "event=client_failure" in line
    ]
    assert len(failures) == 1
    assert "round=2" in failures[0] and "injected client failure" in failures[0]
    assert_nothing_left(tmp_path / "flower")


@pytest.mark.slow
def test_simulation_server_killed_after_round_two_keeps_rounds_one_and_two(tmp_path: Path) -> None:
    settings = isolated_settings(tmp_path / "home")
    config = FederatedConfig(num_rounds=5, num_clients=2, experiment="killed")
    result = run_federated(
        config,
        settings,
        workdir=tmp_path / "flower",
        app_dir=app_dir_with(tmp_path, "killed_server", "serverapp"),
        timeout_s=300,
    )
    assert not result.ok
    assert result.status == "crashed"  # the runner saw the ServerApp die
    store = Store.from_settings(settings)
    completed = [r.round_number for r in store.rounds(result.run_id) if r.status == "completed"]
    assert completed == [1, 2]
    assert [e.round_number for e in store.server_evaluations(result.run_id)] == [1, 2]
    assert sorted({m.step for m in store.aggregated_metrics(result.run_id)}) == [1, 2]
    summary = store.get_run(result.run_id)
    assert summary.status == "crashed" and summary.end_time == summary.heartbeat_at
    assert_nothing_left(tmp_path / "flower")


@pytest.mark.slow
def test_deployment_superlink_two_supernodes_two_rounds(tmp_path: Path) -> None:
    settings = isolated_settings(tmp_path / "home")
    config = FederatedConfig(num_rounds=2, num_clients=2, experiment="deployed")
    workdir = tmp_path / "flower"
    result: FederatedResult = run_federated(
        config, settings, engine="deployment", workdir=workdir, timeout_s=500
    )
    assert result.ok, result
    assert result.rounds_completed == 2
    logs = {p.name for p in workdir.glob("*.log")}
    assert {"superlink.log", "supernode-0.log", "supernode-1.log"} <= logs
    store = Store.from_settings(settings)
    summary = store.get_run(result.run_id)
    assert len(summary.clients) == 2
    # each SuperNode's --node-config partition-id, on its client row
    assert sorted(summary.client_partitions.values()) == ["0", "1"]
    assert [e.round_number for e in store.server_evaluations(result.run_id)] == [1, 2]
    assert len(store.metrics_grouped_by_client(result.run_id)) == 2
    assert_nothing_left(workdir)
