"""The Lightning adapter against real Lightning training, the real spool and a real SQLite store."""

from __future__ import annotations

import csv
import gc
import json
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.trainer import call as lightning_call
from lightning.pytorch.utilities import rank_zero_only

from collector import prometheus as prom
from collector.config import Settings, load_settings
from collector.errors import RunIdInUseError
from collector.lightning import (
    BatchMetricsCallback,
    GradientMonitorCallback,
    RunwatchLogger,
    StepTimerCallback,
    gradients,
    runwatch_telemetry,
)
from collector.lightning import callbacks as lightning_callbacks
from collector.lightning._guard import dispatcher, guarded
from collector.lightning.callbacks import (
    _HOOK_SKIP_TESTED_UP_TO,
    RunwatchCallback,
    SessionCallback,
    skipping_hook_loop,
)
from collector.run import ErrorLedger
from collector.spool import list_streams
from collector.store import Store
from tests.collector.test_recorder import tracked_within
from tests.servers._process import free_port
from trainer.data import BreastCancerDataModule
from trainer.model import MLPClassifier

# -- reading the spool back -----------------------------------------------------------------


@dataclass(frozen=True)
class SpooledPoint:
    measurement: str
    tags: dict[str, str]
    fields: dict[str, Any]
    time_ns: int


_UNESCAPED_SPACE = re.compile(r"(?<!\\) ")


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts, current, quoted, escaped = [], "", False, False
    for char in text:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            current += char
            escaped = True
        elif char == '"':
            quoted = not quoted
            current += char
        elif char == sep and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def parse_line(line: str) -> SpooledPoint:
    head, rest = _UNESCAPED_SPACE.split(line, maxsplit=1)
    field_text, _, time_text = rest.rpartition(" ")
    measurement, *tag_parts = head.split(",")
    tags = dict(part.split("=", 1) for part in tag_parts)
    fields: dict[str, Any] = {}
    for part in _split_outside_quotes(field_text, ","):
        key, raw = part.split("=", 1)
        fields[key] = raw[1:-1] if raw.startswith('"') else float(raw)
    return SpooledPoint(measurement, tags, fields, int(time_text))


def read_points(settings: Settings, run_id: str) -> list[SpooledPoint]:
    points: list[SpooledPoint] = []
    for stream in list_streams(settings.spool_dir, run_id):
        for line in stream.path.read_text(encoding="utf-8").splitlines():
            if line:
                points.append(parse_line(line))
    return points


def of(points: list[SpooledPoint], measurement: str) -> list[SpooledPoint]:
    return [p for p in points if p.measurement == measurement]


def events(points: list[SpooledPoint]) -> list[str]:
    return [p.tags["event"] for p in of(points, "event")]


# -- fixtures ---------------------------------------------------------------------------------


def make_settings(home: Path, prometheus_port: int = 0) -> Settings:
    return load_settings(
        {"RUNWATCH_HOME": str(home), "RUNWATCH_PROMETHEUS_PORT": str(prometheus_port)},
        dotenv=None,
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "home")


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    store = Store.from_settings(settings)
    yield store
    store.dispose()


def quiet_trainer(**kwargs: Any) -> pl.Trainer:
    defaults: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "log_every_n_steps": 5,
    }
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


def mlp() -> tuple[MLPClassifier, BreastCancerDataModule]:
    pl.seed_everything(7, verbose=False)
    return MLPClassifier(num_features=30), BreastCancerDataModule(batch_size=32, seed=7)


# -- the whole chain on the reference model ---------------------------------------------------


def test_full_chain_on_the_reference_mlp(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", prometheus_port=free_port())
    telemetry = runwatch_telemetry(
        "chain", settings=settings, batch_every_n=5, gradient_every_n=5, system_interval_s=0.01
    )
    model, data = mlp()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_recall", mode="max")
    trainer = quiet_trainer(
        max_epochs=3,
        logger=telemetry.logger,
        callbacks=[*telemetry.callbacks, checkpoint],
    )
    trainer.fit(model, datamodule=data)
    run_id = telemetry.run_id
    assert telemetry.logger.version == run_id and telemetry.logger.name == "chain"
    steps_per_epoch = math.ceil(len(data.splits.train) / 32)
    assert trainer.global_step == 3 * steps_per_epoch

    points = read_points(settings, run_id)
    epochs = of(points, "epoch")
    # one merged point per epoch: train and validation metrics and the learning rate together
    assert [p.fields["epoch"] for p in epochs] == [0.0, 1.0, 2.0]
    for point in epochs:
        for name in (
            "train_loss",
            "train_acc",
            "val_loss",
            "val_recall",
            "val_auroc",
            "val_cm_tp",
            "lr",
        ):
            assert name in point.fields, (name, point.fields)
        assert not any(k.endswith(("_step", "_epoch")) for k in point.fields)
    assert epochs[-1].fields["train_loss"] < epochs[0].fields["train_loss"]

    # one batch point per step Lightning logs (log_every_n_steps=5), with Lightning's step:
    # the logged values and the sampler's fields together, never two points for one step
    batches = of(points, "batch")
    logged_steps = [s for s in range(trainer.global_step) if (s + 1) % 5 == 0]
    assert [p.fields["step"] for p in batches] == [float(s) for s in logged_steps]
    assert [p.fields["batch_idx"] for p in batches] == [
        float(s % steps_per_epoch) for s in logged_steps
    ]
    for point in batches:
        assert {"loss", "acc", "recall", "f1", "step", "epoch", "samples_per_s"} <= (
            point.fields.keys()
        )

    gradients = of(points, "gradient")
    assert [p.fields["step"] for p in gradients] == [
        float(s) for s in range(0, trainer.global_step, 5)
    ]
    for point in gradients:
        assert point.fields["min_norm"] <= point.fields["max_norm"] <= point.fields["total_norm"]
    layers = of(points, "gradient_layer")
    assert len(layers) == len(gradients) * len(list(model.parameters()))
    assert {p.tags["layer"] for p in layers} == {n for n, _ in model.named_parameters()}

    system = of(points, "system")
    assert system and system[0].fields["rss_bytes"] > 0 and system[0].tags["rank"] == "0"

    names = events(points)
    assert names[0] == "training_start" and names[-1] == "training_end"
    assert "checkpoint" in names

    # relational store: status, hyperparameters, bulk epoch metrics, final stats, artifacts
    store = Store.from_settings(settings)
    try:
        run = store.get_run(run_id)
        assert run.status == "completed" and run.experiment == "chain"
        assert run.hyperparams["lr"] == pytest.approx(1e-3)
        assert run.hyperparams["batch_size"] == 32
        assert run.final_stats["final_cm_tp"] == epochs[-1].fields["val_cm_tp"]
        assert run.artifacts and run.artifacts[0].path.endswith(".ckpt")
        assert run.artifacts[0].metric_name == "val_recall"
        stored = {(m.name, m.step) for m in store.metrics_by_context(run_id, "epoch_end")}
        assert ("val_recall", 2) in stored and ("train_loss", 0) in stored
    finally:
        store.dispose()

    # CSV + JSON export
    export_dir = settings.home / "exports" / run_id
    with (export_dir / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["0", "1", "2"]
    document = json.loads((export_dir / "metrics.json").read_text())
    assert document["run_id"] == run_id and document["total_epochs"] == 3
    assert document["best_epoch"] in (0, 1, 2)

    # live gauges: the final state, status completed, server stopped
    exporter = telemetry.session.exporter
    assert exporter is not None and not exporter.serving
    registry = exporter.registry
    label = {"run_id": run_id}
    assert registry.get_sample_value(prom.EPOCH, label) == 2.0
    assert registry.get_sample_value(prom.OPTIMIZER_STEPS, label) == trainer.global_step
    assert registry.get_sample_value(prom.SAMPLES, label) == len(data.splits.train) * 3
    assert registry.get_sample_value(prom.STEP_DURATION + "_count", label) == trainer.global_step
    assert registry.get_sample_value(prom.VAL_RECALL, label) == epochs[-1].fields["val_recall"]
    assert registry.get_sample_value(prom.RUN_STATUS, {**label, "status": "completed"}) == 1.0
    assert telemetry.session.error_ledger.total == 0


def test_test_stage_after_fit_lands_on_the_last_epoch(settings: Settings, store: Store) -> None:
    telemetry = runwatch_telemetry("fit-test", settings=settings, prometheus=False)
    model, data = mlp()
    trainer = quiet_trainer(
        max_epochs=2,
        logger=telemetry.logger,
        callbacks=telemetry.callbacks,
        enable_checkpointing=False,
    )
    trainer.fit(model, datamodule=data)
    trainer.test(model, datamodule=data, verbose=False)
    points = read_points(settings, telemetry.run_id)
    test_points = [p for p in of(points, "epoch") if "test_loss" in p.fields]
    assert len(test_points) == 1 and test_points[0].fields["epoch"] == 1.0
    assert "test_recall" in test_points[0].fields
    # the spool has one stream even though the recorder was reopened for the test stage
    assert len(list_streams(settings.spool_dir, telemetry.run_id)) == 1
    stored = {m.name for m in store.metrics_by_dataset_type(telemetry.run_id, "test")}
    assert "test_recall" in stored
    assert store.get_run(telemetry.run_id).status == "completed"


# -- Lightning's own demo model, unmodified -----------------------------------------------------


def fit_boring(
    model: BoringModel,
    settings: Settings,
    *,
    epochs: int,
    train_batches: int,
    val_batches: int,
    gradient_every_n: int,
) -> str:
    """Fit a BoringModel with the whole telemetry (Lightning logs every 2 steps); the run_id."""
    logger, callbacks = runwatch_telemetry(
        "boring",
        settings=settings,
        batch_every_n=2,
        gradient_every_n=gradient_every_n,
        prometheus=False,
    )
    trainer = quiet_trainer(
        max_epochs=epochs,
        limit_train_batches=train_batches,
        limit_val_batches=val_batches,
        log_every_n_steps=2,
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=False,
    )
    trainer.fit(model)
    return str(logger.version)


def test_boring_model_trains_with_logger_and_callbacks(settings: Settings, store: Store) -> None:
    run_id = fit_boring(
        BoringModel(), settings, epochs=2, train_batches=8, val_batches=2, gradient_every_n=2
    )
    points = read_points(settings, run_id)
    batches = of(points, "batch")
    assert len(batches) == 2 * 4 and all("loss" in p.fields for p in batches)
    assert len(of(points, "gradient")) == 8
    assert events(points)[0] == "training_start" and events(points)[-1] == "training_end"
    assert store.get_run(run_id).status == "completed"


class BoundsTheStepBacklog(pl.Callback):
    """Lowers the exporter's bound on unfolded steps once the run's exporter exists."""

    def __init__(self, telemetry: Any, bound: int) -> None:
        self.telemetry = telemetry
        self.bound = bound

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.telemetry.session.exporter.steps.max_backlog = self.bound


class ReadsTheEpochGauge(pl.Callback):
    """The exporter's epoch gauge as each epoch's first batch starts (after the bundle)."""

    def __init__(self, telemetry: Any) -> None:
        self.telemetry = telemetry
        self.read: list[float | None] = []

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if args[-1] == 0:
            exporter = self.telemetry.session.exporter
            label = {"run_id": self.telemetry.run_id}
            self.read.append(exporter.registry.get_sample_value(prom.EPOCH, label))


STEP_SLEEP_S = 0.004


class SleepsInItsStep(BoringModel):
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        time.sleep(STEP_SLEEP_S)
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize(
    ("batch_every_n", "timer"),
    [(10, BatchMetricsCallback), (0, StepTimerCallback)],
    ids=["batch-callback-times", "step-timer"],
)
def test_unscraped_steps_stay_bounded_and_each_is_counted_with_its_end_time(
    tmp_path: Path, batch_every_n: int, timer: type[SessionCallback]
) -> None:
    """Each ended step is appended for the exporter to fold at a scrape (by the batch
    callback, or by the step timer where there are no batch points); with nobody scraping,
    the training thread folds them once more than the bound wait. A scrape then counts every
    step with its duration and samples, and the last one's end as Unix time."""
    settings = make_settings(tmp_path / "home", prometheus_port=free_port())
    telemetry = runwatch_telemetry("steps", settings=settings, batch_every_n=batch_every_n)
    parts = telemetry.callback.parts
    timers = [p for p in parts if isinstance(p, (BatchMetricsCallback, StepTimerCallback))]
    assert [type(p) for p in timers] == [timer]  # one part times the steps, never two
    epochs = ReadsTheEpochGauge(telemetry)
    trainer = quiet_trainer(
        max_epochs=2,
        limit_train_batches=10,
        limit_val_batches=0,
        logger=telemetry.logger,
        callbacks=[*telemetry.callbacks, BoundsTheStepBacklog(telemetry, bound=3), epochs],
        enable_checkpointing=False,
    )
    started = time.time()
    trainer.fit(SleepsInItsStep())
    ended = time.time()
    exporter = telemetry.session.exporter
    assert exporter is not None
    assert len(exporter.steps.ended) <= 4
    label = {"run_id": telemetry.run_id}
    registry = exporter.registry
    assert trainer.global_step == 20
    assert registry.get_sample_value(prom.STEP_DURATION + "_count", label) == 20
    durations = registry.get_sample_value(prom.STEP_DURATION + "_sum", label)
    assert durations is not None and 20 * STEP_SLEEP_S <= durations < ended - started
    assert registry.get_sample_value(prom.OPTIMIZER_STEPS, label) == 20
    assert registry.get_sample_value(prom.SAMPLES, label) == 20  # BoringModel: one a batch
    assert epochs.read == [0, 1]  # set as each epoch starts
    last_step = registry.get_sample_value(prom.LAST_STEP_TIMESTAMP, label)
    assert last_step is not None and started < last_step < ended


class LogsItsOwnStepMetric(BoringModel):
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        output = super().training_step(batch, batch_idx)
        self.log("train/grad_penalty", 0.25 + batch_idx, on_step=True, on_epoch=False)
        return output


def test_user_step_metrics_reach_the_batch_points(settings: Settings) -> None:
    run_id = fit_boring(
        LogsItsOwnStepMetric(),
        settings,
        epochs=1,
        train_batches=6,
        val_batches=1,
        gradient_every_n=0,
    )
    batches = of(read_points(settings, run_id), "batch")
    # log_every_n_steps=2: Lightning logs steps 1, 3 and 5, one batch point each
    assert [p.fields["batch_idx"] for p in batches] == [1.0, 3.0, 5.0]
    assert [p.fields["step"] for p in batches] == [1.0, 3.0, 5.0]
    assert [p.fields.get("grad_penalty") for p in batches] == [1.25, 3.25, 5.25]
    assert all("loss" in p.fields for p in batches)  # training_step's output
    assert not any(name.startswith("train_") for p in batches for name in p.fields)


# -- a loss that turns NaN -------------------------------------------------------------------------


class TurnsNaN(MLPClassifier):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        if self.global_step >= 12:
            loss = loss * float("nan")
        return loss


def test_nan_loss_is_flagged_shown_as_nan_and_training_goes_on(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", prometheus_port=free_port())
    telemetry = runwatch_telemetry("nan", settings=settings, batch_every_n=1, gradient_every_n=1)
    pl.seed_everything(1, verbose=False)
    trainer = quiet_trainer(
        max_epochs=2,
        logger=telemetry.logger,
        callbacks=telemetry.callbacks,
        enable_checkpointing=False,
    )
    trainer.fit(TurnsNaN(num_features=30), datamodule=BreastCancerDataModule())
    assert trainer.global_step == 22  # both epochs ran
    points = read_points(settings, telemetry.run_id)
    sampled = [p for p in of(points, "batch") if "batch_idx" in p.fields]
    before = [p for p in sampled if p.fields["step"] <= 12]
    after = [p for p in sampled if p.fields["step"] > 13]
    assert all("loss" in p.fields and "loss_nonfinite" not in p.fields for p in before)
    assert after and all(p.fields.get("loss_nonfinite") == 1.0 for p in after)
    assert all("loss" not in p.fields for p in after)
    assert any(p.fields.get("total_norm_nonfinite") == 1.0 for p in of(points, "gradient"))
    exporter = telemetry.session.exporter
    assert exporter is not None
    loss = exporter.registry.get_sample_value(prom.TRAIN_LOSS, {"run_id": telemetry.run_id})
    assert loss is not None and math.isnan(loss)
    nonfinite = exporter.registry.get_sample_value(
        prom.NONFINITE_VALUES, {"run_id": telemetry.run_id}
    )
    assert nonfinite is not None and nonfinite > 0
    assert telemetry.session.error_ledger.total == 0


class QueuedEntries(pl.Callback):
    """After runwatch's hooks of each training step: how many objects Python's collector
    tracks in each entry waiting in runwatch's recorder queue (after two collections: held
    here, the entries are those of a queue nobody drains)."""

    def __init__(self, telemetry: Any) -> None:
        self.telemetry = telemetry
        self.tracked: dict[str, set[int]] = {}

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        waiting = list(self.telemetry.session._recorder._queue.entries)  # before a flush takes them
        gc.collect()
        gc.collect()
        for entry in waiting:
            if isinstance(entry, str):
                kind = "built line"  # an event's, built at the call
            else:
                kind = entry[0] if isinstance(entry[0], str) else type(entry).__name__
            self.tracked.setdefault(kind, set()).add(tracked_within(entry))


def test_a_fit_with_every_step_norms_queues_one_tracked_object_a_point(tmp_path: Path) -> None:
    """No list, function or partial waits in the queue for the flush: a long fit would have
    them promoted into the collector's oldest generation and pay its full collections."""
    settings = make_settings(tmp_path / "home", prometheus_port=free_port())
    telemetry = runwatch_telemetry("gc", settings=settings, batch_every_n=1, gradient_every_n=1)
    probe = QueuedEntries(telemetry)
    trainer = quiet_trainer(
        max_epochs=1,
        limit_train_batches=16,
        log_every_n_steps=1,
        logger=telemetry.logger,
        callbacks=[*telemetry.callbacks, probe],
        enable_checkpointing=False,
    )
    model, data = mlp()
    trainer.fit(model, datamodule=data)
    assert {"batch", "gradient", "_Series"} <= set(probe.tracked)  # each kind waited
    assert all(max(counts) <= 1 for counts in probe.tracked.values()), probe.tracked
    assert of(read_points(settings, telemetry.run_id), "gradient_layer")


# -- pieces alone ----------------------------------------------------------------------------------


def test_logger_alone_files_epoch_and_step_metrics(settings: Settings, store: Store) -> None:
    logger = RunwatchLogger("logger-only", settings=settings, prometheus=False)
    model, data = mlp()
    trainer = quiet_trainer(max_epochs=2, logger=logger, enable_checkpointing=False)
    trainer.fit(model, datamodule=data)
    points = read_points(settings, logger.version)
    epochs = of(points, "epoch")
    assert [p.fields["epoch"] for p in epochs] == [0.0, 1.0]
    assert {"train_loss", "val_loss", "val_recall"} <= epochs[0].fields.keys()
    batches = of(points, "batch")
    assert batches and all({"loss", "acc", "step"} <= p.fields.keys() for p in batches)
    run = store.get_run(logger.version)
    assert run.status == "completed" and run.hyperparams["hidden"] == 64


def test_a_callback_alone_opens_and_completes_its_own_run(
    runwatch_env: Path, tmp_path: Path
) -> None:
    settings = load_settings()
    callback = GradientMonitorCallback(every_n_steps=4)
    model, data = mlp()
    trainer = quiet_trainer(
        max_epochs=1, logger=False, callbacks=[callback], enable_checkpointing=False
    )
    trainer.fit(model, datamodule=data)
    run_id = callback.session.run_id
    points = read_points(settings, run_id)
    assert [p.fields["step"] for p in of(points, "gradient")] == [0.0, 4.0, 8.0]
    store = Store.from_settings(settings)
    try:
        assert store.get_run(run_id).status == "completed"
    finally:
        store.dispose()


def test_without_layers_the_gradient_point_is_written_alone(runwatch_env: Path) -> None:
    settings = load_settings()
    callback = GradientMonitorCallback(every_n_steps=4, max_layers=0)
    model, data = mlp()
    trainer = quiet_trainer(
        max_epochs=1, logger=False, callbacks=[callback], enable_checkpointing=False
    )
    trainer.fit(model, datamodule=data)
    points = read_points(settings, callback.session.run_id)
    gradient = of(points, "gradient")
    assert [p.fields["step"] for p in gradient] == [0.0, 4.0, 8.0]
    assert all(p.fields["total_norm"] > 0 for p in gradient)
    assert of(points, "gradient_layer") == []


def test_a_declining_queue_is_taken_again_and_no_gradient_point_is_lost(
    runwatch_env: Path,
) -> None:
    """Where the recorder's compiled queue declines (a recorder closed and reopened mid-fit
    leaves the hook a stale one), the step is recorded by the Python path and the hook takes
    the running recorder's queue again."""
    settings = load_settings()
    callback = GradientMonitorCallback(every_n_steps=1, max_layers=2)
    stale_steps: list[int] = []
    taken: list[bool] = []

    class Staler(pl.Callback):
        def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
            recorder = callback.session.recorder
            compiled = recorder.compiled_put_series if recorder is not None else None
            if trainer.global_step in (4, 6) and compiled is not None:
                taken.append(callback._put_series == compiled)
            if trainer.global_step in (3, 5):
                callback._put_series = lambda *args: False
                stale_steps.append(trainer.global_step)

    model, data = mlp()
    trainer = quiet_trainer(
        max_epochs=1,
        limit_train_batches=8,
        logger=False,
        callbacks=[callback, Staler()],
        enable_checkpointing=False,
    )
    trainer.fit(model, datamodule=data)
    assert stale_steps == [3, 5]
    points = read_points(settings, callback.session.run_id)
    assert [p.fields["step"] for p in of(points, "gradient")] == [float(s) for s in range(8)]
    assert len(of(points, "gradient_layer")) == 2 * 8
    if gradients._queue_norms is not None:  # the compiled modules are built
        assert taken == [True, True]


# -- failures ----------------------------------------------------------------------------------------


def test_the_batch_size_is_the_first_tensor_s_first_dimension() -> None:
    tensor = torch.zeros(5, 3)
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    assert lightning_callbacks.batch_size_of(tensor) == 5
    assert lightning_callbacks.batch_size_of((tensor, torch.zeros(5))) == 5
    assert lightning_callbacks.batch_size_of({"x": [tensor], "y": torch.zeros(2)}) == 5
    assert lightning_callbacks.batch_size_of(torch.tensor(1.0)) == 1  # a scalar: one sample
    assert lightning_callbacks.batch_size_of(["text", tensor]) == 0  # the first item decides
    assert lightning_callbacks.batch_size_of([]) == 0
    assert lightning_callbacks.batch_size_of(cyclic) == 0  # no endless loop


@pytest.fixture
def broken_batch_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in BatchMetricsCallback's on_train_batch_start: reading the batch size raises."""

    def broken(batch: Any) -> int:
        raise RuntimeError("telemetry bug")

    monkeypatch.setattr(lightning_callbacks, "batch_size_of", broken)


@pytest.mark.usefixtures("broken_batch_size")
def test_hook_errors_are_counted_never_raised(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    logger = RunwatchLogger("broken", settings=settings, prometheus=False)
    broken = BatchMetricsCallback(logger.session, every_n_batches=1)
    model, data = mlp()
    trainer = quiet_trainer(
        max_epochs=1, logger=logger, callbacks=[broken], enable_checkpointing=False
    )
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 11
    assert logger.session.error_ledger.total == 11
    warnings = [r for r in caplog.records if "telemetry error" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.usefixtures("broken_batch_size")
def test_a_bundled_part_that_raises_is_counted_and_the_next_parts_still_run(
    settings: Settings,
) -> None:
    """RunwatchCallback guards its parts in its own dispatch: each part's error is reported
    under the part's hook name, and the parts after it in the same hook still run."""
    logger = RunwatchLogger("bundled", settings=settings, prometheus=False)
    broken = BatchMetricsCallback(logger.session, every_n_batches=1)
    counter = _CountingStarts(logger.session)
    bundle = RunwatchCallback(logger.session, [broken, counter])
    model, data = mlp()
    trainer = quiet_trainer(
        max_epochs=1, logger=logger, callbacks=[bundle], enable_checkpointing=False
    )
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 11 and counter.batch_starts == 11
    ledger = logger.session.error_ledger
    assert ledger.total == 11
    assert dict(ledger.counts) == {"BatchMetricsCallback.on_train_batch_start": 11}


def test_log_metrics_counts_its_errors_and_lets_a_refused_run_id_through(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    logger = RunwatchLogger("guarded", settings=settings, prometheus=False)

    def broken(*args: Any) -> None:
        raise ValueError("bug")

    monkeypatch.setattr(logger, "_log_any", broken)
    assert logger.log_metrics({"val_loss": 0.5}, step=3) is None
    assert dict(logger.session.error_ledger.counts) == {"RunwatchLogger.log_metrics": 1}

    def refused(*args: Any) -> None:
        raise RunIdInUseError("taken", "the store")

    monkeypatch.setattr(logger, "_log_any", refused)
    with pytest.raises(RunIdInUseError):
        logger.log_metrics({"val_loss": 0.5}, step=3)


def test_the_bundle_dispatch_lets_a_refused_run_id_and_unguarded_errors_through() -> None:
    class Part:
        error_ledger = ErrorLedger()

        @guarded
        def refused(self) -> None:
            raise RunIdInUseError("taken", "the store")

        @guarded
        def broken(self) -> None:
            raise ValueError("bug")

    part = Part()
    with pytest.raises(RunIdInUseError):
        dispatcher([part.broken, part.refused])()
    assert part.error_ledger.counts[Part.broken.__qualname__] == 1

    def unguarded() -> None:
        raise KeyError("not telemetry's to swallow")

    with pytest.raises(KeyError):
        dispatcher([part.broken, unguarded])()
    assert part.error_ledger.total == 2


class _CountingPart(SessionCallback):
    def __init__(self, session: Any) -> None:
        super().__init__(session)
        self.batch_ends = 0

    @guarded
    def on_train_batch_end(self, *args: Any) -> None:
        self.batch_ends += 1


class _CountingStarts(SessionCallback):
    def __init__(self, session: Any) -> None:
        super().__init__(session)
        self.batch_starts = 0

    @guarded
    def on_train_batch_start(self, *args: Any) -> None:
        self.batch_starts += 1


class _HookCalls(PassThroughProfiler):
    """Counts the actions Lightning profiles: one ``[Callback]<key>.<hook>`` per hook call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def start(self, action_name: str) -> None:
        self.calls[action_name] += 1


class _CountingBackward(SessionCallback):
    def __init__(self, session: Any) -> None:
        super().__init__(session)
        self.backwards = 0

    @guarded
    def on_after_backward(self, *args: Any) -> None:
        self.backwards += 1


def test_the_bundle_gives_lightning_no_per_batch_hook_that_no_part_implements(
    settings: Settings,
) -> None:
    """On the installed Lightning, when it is a release the skip was tested with; on a newer
    one every hook is dispatched (then check its hook loop and raise the bound)."""
    tested = tuple(map(int, pl.__version__.split(".")[:2])) <= _HOOK_SKIP_TESTED_UP_TO
    logger = RunwatchLogger("hooks", settings=settings, prometheus=False)
    counter, backward = _CountingPart(logger.session), _CountingBackward(logger.session)
    bundle = RunwatchCallback(logger.session, [counter, backward])
    hooks = _HookCalls()
    model, data = mlp()
    trainer = quiet_trainer(
        max_epochs=1,
        logger=logger,
        callbacks=[bundle],
        enable_checkpointing=False,
        profiler=hooks,
    )
    trainer.fit(model, datamodule=data)
    trainer.test(model, datamodule=data)

    def called(hook: str) -> int:
        return hooks.calls[f"[Callback]RunwatchCallback.{hook}"]

    assert trainer.global_step == 11
    assert counter.batch_ends == called("on_train_batch_end") == 11
    assert backward.backwards == called("on_after_backward") == 11
    every_step = ("on_before_backward", "on_before_zero_grad", "on_train_batch_start")
    assert {hook: called(hook) for hook in every_step} == dict.fromkeys(
        every_step, 0 if tested else 11
    )
    evaluation = ("on_validation_batch_start", "on_validation_batch_end", "on_test_batch_end")
    assert {hook: called(hook) > 0 for hook in evaluation} == dict.fromkeys(evaluation, not tested)
    assert called("on_train_epoch_start") == 1  # hooks outside the batch loop: as before
    assert called("on_validation_epoch_start") >= 1


class _Forwarding(pl.Callback):
    """A composite callback: calls its inner callback's per-batch hooks itself."""

    def __init__(self, inner: pl.Callback) -> None:
        self.inner = inner

    def on_train_batch_start(self, *args: Any) -> None:
        self.inner.on_train_batch_start(*args)

    def on_before_backward(self, *args: Any) -> None:
        self.inner.on_before_backward(*args)

    def on_after_backward(self, *args: Any) -> None:
        self.inner.on_after_backward(*args)

    def on_before_zero_grad(self, *args: Any) -> None:
        self.inner.on_before_zero_grad(*args)

    def on_train_batch_end(self, *args: Any) -> None:
        self.inner.on_train_batch_end(*args)


def test_a_hook_no_part_implements_is_a_no_op_to_anyone_but_lightnings_loop(
    settings: Settings,
) -> None:
    logger = RunwatchLogger("forwarded", settings=settings, prometheus=False)
    counter = _CountingPart(logger.session)
    bundle = RunwatchCallback(logger.session, [counter])
    assert bundle.on_before_backward(None, None, None) is None  # type: ignore[arg-type]
    assert RunwatchCallback.on_before_backward is pl.Callback.on_before_backward
    model, data = mlp()
    forwarding = _Forwarding(bundle)
    trainer = quiet_trainer(
        max_epochs=1, logger=logger, callbacks=[forwarding], enable_checkpointing=False
    )
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 11 and counter.batch_ends == 11


def _calls_every_hook(
    trainer: Any, hook_name: str, *args: Any, monitoring_callbacks: Any = None, **kwargs: Any
) -> None:
    """A hook loop that calls each callback's hook without looking (a Lightning that did so)."""
    for callback in trainer.callbacks:
        getattr(callback, hook_name)(trainer, trainer.lightning_module, *args, **kwargs)


@pytest.fixture
def fresh_hook_probe() -> Iterator[None]:
    skipping_hook_loop.cache_clear()
    yield
    skipping_hook_loop.cache_clear()


def test_a_lightning_that_calls_every_hook_gets_every_hook(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, fresh_hook_probe: None
) -> None:
    monkeypatch.setattr(lightning_call, "_call_callback_hooks", _calls_every_hook)
    logger = RunwatchLogger("every-hook", settings=settings, prometheus=False)
    counter = _CountingPart(logger.session)
    bundle = RunwatchCallback(logger.session, [counter])
    assert callable(bundle.on_before_backward) and callable(bundle.on_train_batch_start)
    model, data = mlp()
    trainer = quiet_trainer(
        max_epochs=1, logger=logger, callbacks=[bundle], enable_checkpointing=False
    )
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 11 and counter.batch_ends == 11


def test_a_lightning_release_newer_than_tested_gets_every_hook(
    monkeypatch: pytest.MonkeyPatch, fresh_hook_probe: None
) -> None:
    major, minor = _HOOK_SKIP_TESTED_UP_TO
    monkeypatch.setattr(pl, "__version__", f"{major}.{minor + 1}.0")
    assert skipping_hook_loop() is None


class SlowSteps(BoringModel):
    """Two long training steps, the time of several system samples each."""

    STEP_S = 0.3

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        time.sleep(self.STEP_S)
        return super().training_step(batch, batch_idx)


def _system_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "runwatch-system"]


def test_system_points_are_sampled_on_their_own_thread_through_long_steps(
    settings: Settings,
) -> None:
    telemetry = runwatch_telemetry(
        "slow", settings=settings, system_interval_s=0.05, gradient_every_n=0, prometheus=False
    )
    system_part = telemetry.callback.part(lightning_callbacks.SystemMetricsCallback)
    assert isinstance(system_part, lightning_callbacks.SystemMetricsCallback)
    seen_in_step: list[bool] = []

    class Watch(pl.Callback):
        def on_train_batch_end(self, *args: Any) -> None:
            seen_in_step.append(system_part.sampling and bool(_system_threads()))

    trainer = quiet_trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=0,
        logger=telemetry.logger,
        callbacks=[*telemetry.callbacks, Watch()],
        enable_checkpointing=False,
    )
    trainer.fit(SlowSteps())
    assert seen_in_step == [True, True]
    assert not system_part.sampling and not _system_threads()  # stopped with the training
    points = read_points(settings, telemetry.run_id)
    system = of(points, "system")
    # at batch ends alone there would be at most three (two batch ends and the epoch's end)
    assert len(system) >= 6, len(system)
    assert all(p.fields["rss_bytes"] > 0 and p.tags["rank"] == "0" for p in system)
    started, ended = (
        next(p.time_ns for p in of(points, "event") if p.tags["event"] == name)
        for name in ("training_start", "training_end")
    )
    assert all(started < p.time_ns < ended for p in system)


def test_a_failing_sample_is_counted_and_the_next_samples_still_come(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    sample = lightning_callbacks.SystemMetricsCallback.sample

    def first_one_fails(self: lightning_callbacks.SystemMetricsCallback) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("no /proc")
        sample(self)

    monkeypatch.setattr(lightning_callbacks.SystemMetricsCallback, "sample", first_one_fails)
    telemetry = runwatch_telemetry(
        "sampling", settings=settings, system_interval_s=0.05, gradient_every_n=0
    )
    trainer = quiet_trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=0,
        logger=telemetry.logger,
        callbacks=telemetry.callbacks,
        enable_checkpointing=False,
    )
    trainer.fit(SlowSteps())
    assert dict(telemetry.session.error_ledger.counts) == {"SystemMetricsCallback.sample": 1}
    assert len(of(read_points(settings, telemetry.run_id), "system")) == len(calls) - 1 >= 3


class Explodes(MLPClassifier):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.current_epoch == 1 and batch_idx == 3:
            raise ValueError("boom")
        return super().training_step(batch, batch_idx)


def test_training_exception_marks_the_run_failed(settings: Settings, store: Store) -> None:
    telemetry = runwatch_telemetry("explodes", settings=settings, prometheus=False)
    pl.seed_everything(3, verbose=False)
    trainer = quiet_trainer(
        max_epochs=3,
        logger=telemetry.logger,
        callbacks=telemetry.callbacks,
        enable_checkpointing=False,
    )
    with pytest.raises(ValueError, match="boom"):
        trainer.fit(Explodes(num_features=30), datamodule=BreastCancerDataModule())
    run = store.get_run(telemetry.run_id)
    assert run.status == "failed"
    # what was learned before the failure is kept
    stored = store.metrics_by_context(telemetry.run_id, "epoch_end")
    assert {m.step for m in stored if m.name == "train_loss"} == {0}
    assert {m.step for m in stored if m.name == "lr"} == {0, 1}  # epoch 1 had begun
    points = read_points(settings, telemetry.run_id)
    end = [p for p in of(points, "event") if p.tags["event"] == "training_end"]
    assert len(end) == 1 and "failed" in end[0].fields["text"] and "boom" in end[0].fields["text"]
    assert not _system_threads()  # the sampler stopped before the run finished


def test_early_stopping_event(settings: Settings) -> None:
    telemetry = runwatch_telemetry("early", settings=settings, prometheus=False)
    model, data = mlp()
    # val_auroc barely moves on this data: min_delta makes every check a non-improvement
    stopper = EarlyStopping(monitor="val_auroc", mode="max", patience=1, min_delta=0.5)
    trainer = quiet_trainer(
        max_epochs=10,
        logger=telemetry.logger,
        callbacks=[*telemetry.callbacks, stopper],
        enable_checkpointing=False,
    )
    trainer.fit(model, datamodule=data)
    assert trainer.current_epoch < 10
    names = events(read_points(settings, telemetry.run_id))
    assert names.count("early_stopping") == 1
    assert names.index("early_stopping") < names.index("training_end")


def test_early_stopping_in_epoch_zero_is_an_event(settings: Settings) -> None:
    """Divergence at once, the stop users most need to see (Lightning's stopped_epoch is 0)."""
    telemetry = runwatch_telemetry("diverges", settings=settings, prometheus=False)
    model, data = mlp()
    stopper = EarlyStopping(monitor="val_loss", mode="min", divergence_threshold=0.0)
    trainer = quiet_trainer(
        max_epochs=10,
        logger=telemetry.logger,
        callbacks=[*telemetry.callbacks, stopper],
        enable_checkpointing=False,
    )
    trainer.fit(model, datamodule=data)
    assert stopper.stopped_epoch == 0 and trainer.current_epoch == 1
    points = read_points(settings, telemetry.run_id)
    stops = [p for p in of(points, "event") if p.tags["event"] == "early_stopping"]
    assert len(stops) == 1
    assert "stopped at epoch 0" in stops[0].fields["text"]
    assert "divergence" in stops[0].fields["text"].lower()


def test_non_zero_rank_writes_nothing(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    telemetry = runwatch_telemetry("rank1", settings=settings, prometheus=False)
    model, data = mlp()
    trainer = quiet_trainer(
        max_epochs=1,
        logger=telemetry.logger,
        callbacks=telemetry.callbacks,
        enable_checkpointing=False,
    )
    trainer.fit(model, datamodule=data)
    assert not telemetry.session.started
    assert list_streams(settings.spool_dir) == []
    assert not (settings.home / "runs.db").exists()


# -- no device sync on unsampled steps --------------------------------------------------------


class _HostTransfers:
    """Counts Tensor.item/tolist/__float__ calls made from collector/lightning code."""

    def __init__(self) -> None:
        self.batch_idx: int | None = None
        self.step = -1
        self.calls: list[tuple[int, int]] = []

    def wrap(self, original: Any) -> Any:
        import sys as _sys

        def counting(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            caller = _sys._getframe(1).f_code.co_filename
            if self.batch_idx is not None and "/collector/lightning/" in caller:
                self.calls.append((self.batch_idx, self.step))
            return original(tensor, *args, **kwargs)

        return counting


class _BatchWindow(pl.Callback):
    def __init__(self, transfers: _HostTransfers, opens: bool) -> None:
        self.transfers = transfers
        self.opens = opens

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.opens:
            self.transfers.batch_idx, self.transfers.step = batch_idx, trainer.global_step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.opens:
            self.transfers.batch_idx = None


@pytest.mark.parametrize("norms", ["compiled", "cpu", "accelerator"])
def test_unsampled_steps_make_no_host_transfer(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, norms: str
) -> None:
    """The compiled module reads CPU gradients' memory (no tensor is read); without it,
    gradient norms of CPU tensors are read one by one (there is no device to wait for); on an
    accelerator the fused path reads them all in one transfer: run here by taking it for CPU
    tensors too."""
    if norms == "compiled" and gradients._cpu_norms is None:
        pytest.skip("the compiled module is not built (covered by test_lightning_gradients)")
    if norms != "compiled":  # as where the compiled module is not built
        monkeypatch.setattr(gradients, "_cpu_norms", None)
        monkeypatch.setattr(gradients, "_queue_norms", None)
    if norms == "accelerator":
        monkeypatch.setattr(gradients, "norms_one_by_one", gradients.fused_norms)
    transfers = _HostTransfers()
    for name in ("item", "tolist", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, transfers.wrap(getattr(torch.Tensor, name)))
    telemetry = runwatch_telemetry(
        "sync", settings=settings, batch_every_n=5, gradient_every_n=7, system_interval_s=0.001
    )
    model, data = mlp()
    norm_reads = {"compiled": 0, "cpu": len(list(model.parameters())), "accelerator": 1}[norms]
    trainer = quiet_trainer(
        max_epochs=2,
        logger=telemetry.logger,
        enable_checkpointing=False,
        callbacks=[
            _BatchWindow(transfers, True),
            *telemetry.callbacks,
            _BatchWindow(transfers, False),
        ],
    )
    trainer.fit(model, datamodule=data)
    if norm_reads:
        assert transfers.calls  # the check sees the sampled steps' transfers
    per_step: dict[tuple[int, int], int] = {}
    for key in transfers.calls:
        per_step[key] = per_step.get(key, 0) + 1
    for (batch_idx, step), count in per_step.items():
        # the norms' reads on gradient samples, nothing on any other step; the output loss is
        # not read at all: this model logs train_loss, which the batch point takes instead
        expected = norm_reads * int(step % 7 == 0)
        assert count == expected, (batch_idx, step, count)


def test_validate_before_fit_does_not_end_the_run(settings: Settings, store: Store) -> None:
    telemetry = runwatch_telemetry("validate-first", settings=settings, prometheus=False)
    model, data = mlp()
    # (inference_mode=False: torchmetrics states made under inference mode break the later fit)
    trainer = quiet_trainer(
        max_epochs=1,
        logger=telemetry.logger,
        callbacks=telemetry.callbacks,
        enable_checkpointing=False,
        inference_mode=False,
    )
    trainer.validate(model, datamodule=data, verbose=False)
    assert store.get_run(telemetry.run_id).status == "in_progress"
    trainer.fit(model, datamodule=data)
    assert store.get_run(telemetry.run_id).status == "completed"
    assert events(read_points(settings, telemetry.run_id)).count("training_end") == 1
