"""One canonical metric name and one value rule in every backend.

A real Lightning run logging ``val/acc@1`` and ``loss (smoothed)`` is written to a real
InfluxDB 2 and a store (SQLite, and PostgreSQL where installed); InfluxDB (Flux), the store,
``runs show``/``runs export`` and ``compare`` from both sources must then say the same names
and the same values. The value rule (what is a number, non-finite, dropped) is property-tested
across the InfluxDB points and the store rows.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.pytorch.demos.boring_classes import BoringModel

from collector.cli import main
from collector.comparison import compare_from_store, higher_is_better
from collector.config import Settings, load_settings
from collector.flower import ClientReport, FederatedRun, attach_client_report
from collector.points import PointBuilder
from collector.spool import list_streams
from collector.store import Store
from collector.store.values import FiniteValues
from collector.values import Outcome, canonical_name, classify, federated_metric_name
from tests.collector.cli.test_compare import point_env_at
from tests.collector.test_flower import LocalGrid
from tests.collector.test_flower import task_identity as task_identity
from tests.servers.influxdb2 import InfluxDB2

EPOCHS = 3


class OddNames(BoringModel):
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        output = super().training_step(batch, batch_idx)
        self.log("loss (smoothed)", 2.0 - self.current_epoch * 0.5 + batch_idx / 100, on_epoch=True)
        return output

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        output = super().validation_step(batch, batch_idx)
        self.log("val/acc@1", 0.5 + self.current_epoch / 10 - (self.current_epoch == 2) * 0.15)
        return output


# -- the names and the direction ------------------------------------------------------------


def test_canonical_names_and_direction() -> None:
    assert canonical_name("val/acc@1") == "val_acc_1"
    assert canonical_name("loss (smoothed)") == "loss_smoothed"
    assert canonical_name("//") is None
    assert not higher_is_better("loss (smoothed)")  # the example: it said higher
    assert not higher_is_better("loss_smoothed")
    assert not higher_is_better("val/error-rate")
    assert not higher_is_better("val_cm_fp")
    assert not higher_is_better("train_loss_nonfinite")
    assert higher_is_better("val/acc@1") and higher_is_better("val_acc_1")
    assert higher_is_better("lossless_ratio")  # a word, not a substring


def test_store_warnings_name_the_stored_fields(caplog: pytest.LogCaptureFixture) -> None:
    values = FiniteValues()
    with caplog.at_level(logging.WARNING, logger="collector.store"):
        pairs = dict(
            values.pairs([("loss (smoothed)", math.nan), ("val/acc@1", 2**2000), ("ok", 1)])
        )
        dict(values.pairs([("loss (smoothed)", math.inf)]))  # warned once per name
    assert pairs == {"loss_smoothed_nonfinite": 1.0, "ok": 1.0}
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "'loss_smoothed'" in messages[0] and "loss_smoothed_nonfinite=1.0" in messages[0]
    assert "(smoothed)_nonfinite" not in " ".join(messages)
    assert "'val_acc_1'" in messages[1] and "too large for a float" in messages[1]


# -- one value rule: the store and the points agree ------------------------------------------

names = st.one_of(
    st.sampled_from(["val/acc@1", "loss (smoothed)", "Train Loss", "time", "//", "x"]),
    st.text(max_size=20),
)
values = st.one_of(
    st.floats(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    st.binary(max_size=3),
    st.complex_numbers(),
    st.decimals(),
    st.just(Decimal("sNaN")),
)


@settings(max_examples=300, deadline=None)
@given(metrics=st.lists(st.tuples(names, values), max_size=6))
def test_store_rows_and_influx_fields_follow_one_rule(metrics: list[tuple[str, object]]) -> None:
    builder = PointBuilder({"run_id": "r", "experiment": "e", "mode": "centralized"})
    _line, observed, _tags = builder.build("epoch", dict(metrics), None, 1, observe=True)
    stored = dict(FiniteValues().pairs(dict(metrics).items()))
    assert stored == (observed or {})
    given_names = list(dict(metrics))
    for name, value in dict(metrics).items():
        canonical = canonical_name(name)
        if canonical is None or any(
            canonical_name(other) == canonical for other in given_names if other != name
        ):
            continue  # no name, or shared with another name (the last one wins in both)
        outcome, number = classify(value)
        flag = f"{canonical}_nonfinite"
        if outcome is Outcome.FINITE:
            assert stored[canonical] == number and flag not in stored
        elif outcome is Outcome.NONFINITE:
            assert stored[flag] == 1.0 and canonical not in stored
        else:
            assert canonical not in stored and flag not in stored


# -- a real run in every backend -----------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("fresh_postgres_url")())
    return f"sqlite:///{tmp_path / 'runs.db'}"


@pytest.fixture
def odd_run(
    influxdb2: InfluxDB2,
    influxdb2_bucket: str,
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[str, Settings]]:
    from collector.backlog import ship_backlog
    from collector.lightning import runwatch_telemetry

    writer = influxdb2.settings(tmp_path / "home", influxdb2_bucket, db_url=db_url)
    telemetry = runwatch_telemetry("odd-names", settings=writer, prometheus=False)
    pl.seed_everything(5, verbose=False)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=EPOCHS,
        limit_train_batches=4,
        limit_val_batches=2,
        log_every_n_steps=1,
        logger=telemetry.logger,
        callbacks=telemetry.callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(OddNames())
    backlog = ship_backlog(writer, timeout_s=60)
    assert backlog.error is None and backlog.remaining_bytes == 0, backlog
    reader = influxdb2.reader_settings(writer)
    point_env_at(monkeypatch, reader, tmp_path)
    yield telemetry.run_id, reader


def _cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.integration
@pytest.mark.slow
def test_one_name_and_one_value_in_every_backend(
    influxdb2: InfluxDB2,
    odd_run: tuple[str, Settings],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    run_id, reader = odd_run
    canonical = ("val_acc_1", "loss_smoothed")

    # InfluxDB 2, through Flux: the epoch fields carry the canonical names
    records = influxdb2.query(
        f'from(bucket: "{reader.influx_bucket}") |> range(start: -1h) '
        f'|> filter(fn: (r) => r._measurement == "epoch" and r.run_id == "{run_id}")'
    )
    influx: dict[str, dict[int, float]] = {}
    epoch_of: dict[Any, int] = {}
    for record in records:
        if record["_field"] == "epoch":
            epoch_of[record["_time"]] = int(record["_value"])
    for record in records:
        influx.setdefault(record["_field"], {})[epoch_of[record["_time"]]] = record["_value"]
    for name in canonical:
        assert sorted(influx[name]) == list(range(EPOCHS)), (name, influx.keys())
    assert not any("/" in f or "@" in f or " " in f or "(" in f for f in influx)

    # the store: the same names, the same values, per epoch
    store = Store.from_settings(reader)
    try:
        rows = store.metrics_by_context(run_id, "epoch_end")
    finally:
        store.dispose()
    stored: dict[str, dict[int, float]] = {}
    for row in rows:
        stored.setdefault(row.name, {})[row.step] = row.value
    for name in canonical:
        assert stored[name] == influx[name], name
    assert all(canonical_name(n) == n for n in stored), stored.keys()

    # runs show and runs export
    shown = _cli_json(capsys, "runs", "show", run_id)
    for name in canonical:
        assert shown["latest_metrics"][name] == influx[name][EPOCHS - 1]
    capsys.readouterr()
    assert main(["runs", "export", run_id, "--format", "csv", "--out", str(tmp_path / "x")]) == 0
    exported = Path(capsys.readouterr().out.strip())
    with exported.open(encoding="utf-8", newline="") as handle:
        csv_rows = [r for r in csv.DictReader(handle) if r["context"] == "epoch_end"]
    for name in canonical:
        assert {
            int(r["step"]): float(r["value"]) for r in csv_rows if r["metric_name"] == name
        } == (influx[name])

    # compare, from both sources, by the raw or the canonical name
    for raw, name, higher in (
        ("val/acc@1", "val_acc_1", True),
        ("loss (smoothed)", "loss_smoothed", False),
    ):
        documents = [
            _cli_json(capsys, "compare", run_id, "--metric", metric, "--source", source)
            for metric in (raw, name)
            for source in ("influx", "sql")
        ]
        for document in documents:
            assert document["metric"] == name and document["higher_is_better"] is higher
            assert document["runs"] == [{**documents[0]["runs"][0], "run_id": run_id}]
        (row,) = documents[0]["runs"]
        values = influx[name]
        best = (max if higher else min)(values.values())
        assert row["epochs"] == EPOCHS and row["best_value"] == best
        assert row["last_value"] == values[EPOCHS - 1]
    # the direction can be overridden
    lower = _cli_json(
        capsys, "compare", run_id, "--metric", "val/acc@1", "--lower-is-better", "--source", "sql"
    )
    assert lower["higher_is_better"] is False
    assert lower["runs"][0]["best_value"] == min(influx["val_acc_1"].values())


def test_compare_from_the_store_takes_the_raw_or_the_canonical_name(tmp_path: Path) -> None:
    from collector.comparison import compare_from_store

    store = Store(f"sqlite:///{tmp_path / 'runs.db'}")
    try:
        run_id = store.create_run("names")
        store.persist_epoch_metrics(
            run_id,
            [
                {"epoch": 0, "val/acc@1": 0.5, "loss (smoothed)": 0.9},
                {"epoch": 1, "val/acc@1": 0.7, "loss (smoothed)": 0.4},
                {"epoch": 2, "val/acc@1": 0.6, "loss (smoothed)": 0.6},
            ],
        )
        for raw, name, best in (("val/acc@1", "val_acc_1", 0.7), ("loss (smoothed)", None, 0.4)):
            by_raw = compare_from_store(store, [run_id], raw)
            by_name = compare_from_store(store, [run_id], name or canonical_name(raw) or "")
            assert by_raw == by_name
            assert by_raw.metric == canonical_name(raw)
            (row,) = by_raw.rows
            assert (row.epochs, row.best_value, row.best_epoch) == (3, best, 1)
        flipped = compare_from_store(store, [run_id], "val/acc@1", higher=False)
        assert not flipped.higher_is_better and flipped.rows[0].best_value == 0.5
    finally:
        store.dispose()


# -- federated names: what Flower's apps call their metrics -----------------------------------


@pytest.mark.parametrize(
    ("raw", "phase", "stored"),
    [
        ("eval_acc", "evaluate", "val_acc"),  # Flower's quickstart examples
        ("eval_loss", "evaluate", "val_loss"),
        ("accuracy", "evaluate", "val_acc"),  # a strategy's evaluate_fn / client without prefix
        ("eval_accuracy", "evaluate", "val_acc"),
        ("val_acc", "evaluate", "val_acc"),  # runwatch's own trainer
        ("test_acc", "evaluate", "val_acc"),
        ("eval_auc", "evaluate", "val_auroc"),
        ("eval_cm_tp", "evaluate", "val_cm_tp"),
        ("loss", "train", "train_loss"),
        ("train_loss", "train", "train_loss"),
        ("train/acc", "train", "train_acc"),
        ("val_loss", "train", "val_loss"),  # a prefix names the phase whichever reply holds it
        ("//", "evaluate", None),
    ],
)
def test_federated_metric_names(raw: str, phase: str, stored: str | None) -> None:
    assert federated_metric_name(raw, phase) == stored


def flower_named_client(node_id: int) -> Callable[[Message], Message]:
    """A client that names its metrics as Flower's quickstart examples do."""

    def reply(message: Message) -> Message:
        config = message.content.config_records["config"]
        server_round = int(config["server-round"])  # type: ignore[arg-type]
        if message.metadata.message_type == "train":
            metrics = {"train_loss": 1.0 / (server_round + node_id), "num-examples": 10 * node_id}
            content = RecordDict(
                {
                    "arrays": message.content.array_records["arrays"],
                    "metrics": MetricRecord(metrics),
                }
            )
            attach_client_report(content, ClientReport(str(node_id), partition_id=str(node_id - 1)))
        else:
            metrics = {
                "eval_loss": 0.5 / server_round + node_id / 100,
                "eval_acc": 0.5 + server_round / 10 + node_id / 100,
                "num-examples": 10,
            }
            content = RecordDict({"metrics": MetricRecord(metrics)})
        return Message(content=content, reply_to=message)

    return reply


def quickstart_evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    """Flower's quickstart-pytorch central evaluation names: accuracy, loss."""
    return MetricRecord({"accuracy": 0.6 + server_round / 10, "loss": 1.0 / (server_round + 1)})


def test_flower_named_metrics_are_one_name_in_points_store_compare_and_show(
    runwatch_env: Path, task_identity: None, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = load_settings()
    grid = LocalGrid({node: flower_named_client(node) for node in (1, 2)})
    strategy = FedAvg(min_train_nodes=2, min_evaluate_nodes=2, min_available_nodes=2)
    initial = ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32))})
    with FederatedRun("flower-names", settings=settings, num_rounds=2) as run:
        run.wrap(strategy).start(
            grid,
            initial,
            num_rounds=2,
            train_config=ConfigRecord(),
            evaluate_config=ConfigRecord(),
            evaluate_fn=quickstart_evaluate_fn,
        )

    lines = [
        line
        for stream in list_streams(settings.spool_dir, run.run_id)
        for line in stream.path.read_text(encoding="utf-8").split("\n")
    ]
    replies = [line for line in lines if line.startswith("client_round,")]
    evaluations = [line for line in replies if " val_loss=" in line or ",val_loss=" in line]
    assert len(evaluations) == 4 and all("val_acc=" in line for line in evaluations)
    assert not [line for line in replies if "eval_" in line.split(" ")[1]]
    assert all(",partition_id=" in line.split(" ")[0] for line in replies)
    aggregated = [
        line for line in lines if line.startswith("round,") and "source=aggregated" in line
    ]
    assert len(aggregated) == 2
    assert all(
        all(f"{field}=" in line for field in ("accuracy", "loss", "train_loss"))
        for line in aggregated
    )

    store = Store.from_settings(settings)
    try:
        stored = {(m.step, m.name): m.value for m in store.aggregated_metrics(run.run_id)}
        assert {name for _, name in stored} == {"train_loss", "val_loss", "val_acc"}
        # FedAvg's weighted mean of eval_acc (equal weights)
        assert stored[(2, "val_acc")] == pytest.approx(0.5 + 0.2 + 0.015)
        same = {
            spelling: compare_from_store(store, [run.run_id], spelling).rows[0]
            for spelling in ("eval_acc", "accuracy", "val_acc")
        }
        assert len({(r.best_value, r.last_value, r.epochs) for r in same.values()}) == 1
        (train,) = compare_from_store(store, [run.run_id], "train_loss").rows
        assert (train.epochs, train.last_value) == (2, pytest.approx(stored[(2, "train_loss")]))
        assert store.get_run(run.run_id).client_partitions == {"1": "0", "2": "1"}
    finally:
        store.dispose()

    assert main(["runs", "show", run.run_id]) == 0
    shown = capsys.readouterr().out
    assert "1 (partition 0), 2 (partition 1)" in shown
    last_round = shown.split("Last round, clients' aggregate")[1]
    assert "val_acc" in last_round and "train_loss" in last_round
