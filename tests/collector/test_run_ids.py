"""Caller-chosen run ids: validated at every entry point, never reused by accident, and a
hostile metric name in a real Lightning training costs only itself (store, spool, exports)."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from lightning.pytorch.demos.boring_classes import BoringModel

from collector import Recorder
from collector.config import Settings
from collector.errors import InvalidRunIdError, RunIdInUseError
from collector.flower import FederatedRun
from collector.flower.protocol import RunNote, read_run_note
from collector.lightning import RunSession, runwatch_telemetry
from collector.spool import list_streams
from collector.store import Store
from tests.collector.test_lightning import make_settings, of, quiet_trainer, read_points

BAD_RUN_IDS = ["../../../x", "/tmp/x", "a/b", "..", ".x", "x y", "x\n", "", "é", "x" * 65]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "home")


def _fit(settings: Settings, run_id: str | None, model: BoringModel | None = None) -> str:
    telemetry = runwatch_telemetry(
        "ids",
        settings=settings,
        run_id=run_id,
        prometheus=False,
        batch_every_n=0,
        gradient_every_n=0,
        system_interval_s=0,
    )
    trainer = quiet_trainer(
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=telemetry.logger,
        callbacks=telemetry.callbacks,
        enable_checkpointing=False,
    )
    trainer.fit(model or BoringModel())
    return telemetry.run_id


def _files_under(root: Path) -> set[Path]:
    return {Path(d, f) for d, _, files in os.walk(root) for f in files}


# -- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize("run_id", [r for r in BAD_RUN_IDS if r])
def test_every_entry_point_refuses_an_invalid_run_id(settings: Settings, run_id: str) -> None:
    store = Store.from_settings(settings)
    with pytest.raises(InvalidRunIdError, match="invalid run id"):
        runwatch_telemetry("x", settings=settings, run_id=run_id)
    with pytest.raises(InvalidRunIdError):
        RunSession("x", settings=settings, run_id=run_id)
    with pytest.raises(InvalidRunIdError):
        FederatedRun("x", settings=settings, run_id=run_id)
    with pytest.raises(InvalidRunIdError):
        store.create_run("x", run_id=run_id)
    assert read_run_note(_message_with(RunNote(run_id, "x", 1))) is None  # client side
    store.dispose()


def test_chosen_run_ids_within_the_rule_are_accepted(settings: Settings) -> None:
    for run_id in ("a", "server-chosen-id", "A.b_c-9", "x" * 64, "20260101T000000Z-abcdefghjk"):
        assert RunSession("x", settings=settings, run_id=run_id).run_id == run_id


def test_a_traversing_run_id_writes_nothing_outside_the_home(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "a" / "b" / "home")  # ../../.. stays in tmp_path
    with pytest.raises(InvalidRunIdError):
        _fit(settings, "../../../escaped")
    assert {p for p in _files_under(tmp_path) if settings.home not in p.parents} == set()


# -- reuse ----------------------------------------------------------------------------------


def test_a_reused_run_id_is_refused_before_any_point_is_written(settings: Settings) -> None:
    run_id = _fit(settings, "my-run")
    store = Store.from_settings(settings)
    first = store.get_run(run_id)
    spooled = {s.path: s.path.read_bytes() for s in list_streams(settings.spool_dir, run_id)}
    exports = (settings.home / "exports" / run_id / "metrics.csv").read_bytes()

    with pytest.raises(RunIdInUseError, match="'my-run' is already used"):
        _fit(settings, "my-run")

    assert {
        s.path: s.path.read_bytes() for s in list_streams(settings.spool_dir, run_id)
    } == spooled
    assert store.get_run(run_id) == first
    assert (settings.home / "exports" / run_id / "metrics.csv").read_bytes() == exports
    store.dispose()


def test_an_id_whose_points_are_only_in_the_spool_is_refused_too(settings: Settings) -> None:
    with Recorder("spool-only", experiment="x", settings=settings) as recorder:
        recorder.record("epoch", {"train_loss": 1.0, "epoch": 0.0})
    before = {s.path: s.path.read_bytes() for s in list_streams(settings.spool_dir, "spool-only")}

    with pytest.raises(RunIdInUseError, match="spool"):
        _fit(settings, "spool-only")
    with pytest.raises(RunIdInUseError, match="spool"):
        FederatedRun("x", settings=settings, run_id="spool-only", prometheus=False).start()

    after = {s.path: s.path.read_bytes() for s in list_streams(settings.spool_dir, "spool-only")}
    assert after == before
    store = Store.from_settings(settings)
    assert store.list_runs() == []
    store.dispose()


def test_a_federated_server_refuses_a_reused_run_id(settings: Settings) -> None:
    with FederatedRun("fed", settings=settings, run_id="fed-1", prometheus=False):
        pass
    spooled = {s.path: s.path.read_bytes() for s in list_streams(settings.spool_dir, "fed-1")}

    again = FederatedRun("fed", settings=settings, run_id="fed-1", prometheus=False)
    with pytest.raises(RunIdInUseError), again:
        pass

    assert {s.path: s.path.read_bytes() for s in list_streams(settings.spool_dir, "fed-1")} == (
        spooled
    )
    again.finish("failed")  # nothing to finish: the refused run never started
    store = Store.from_settings(settings)
    assert store.get_run("fed-1").status == "completed"
    store.dispose()


# -- a hostile metric name in a real training -------------------------------------------------


class LogsAHostileName(BoringModel):
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        output = super().training_step(batch, batch_idx)
        self.log("lone\ud800x", 1.5, on_step=False, on_epoch=True)
        self.log("neighbour", 2.5, on_step=False, on_epoch=True)
        return output


def test_a_lone_surrogate_name_costs_no_neighbour_in_store_spool_or_files(
    settings: Settings,
) -> None:
    run_id = _fit(settings, None, LogsAHostileName())

    store = Store.from_settings(settings)
    stored = {(m.name, m.step) for m in store.all_metrics(run_id) if m.context == "epoch_end"}
    store.dispose()
    # the canonical name, as in InfluxDB (the store kept "lone\ufffdx" before)
    assert {("neighbour", 0), ("neighbour", 1), ("lone_x", 0), ("lone_x", 1)} <= stored
    with (settings.home / "exports" / run_id / "metrics.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["epoch"], r["neighbour"], r["lone_x"]) for r in rows] == [
        ("0", "2.5", "1.5"),
        ("1", "2.5", "1.5"),
    ]
    epochs = of(read_points(settings, run_id), "epoch")
    assert [p.fields.get("neighbour") for p in epochs] == [2.5, 2.5]
    assert [p.fields.get("lone_x") for p in epochs] == [1.5, 1.5]


def _message_with(note: RunNote) -> Any:
    """Just what ``read_run_note`` reads of a Flower message."""
    from flwr.app import ConfigRecord, RecordDict

    from collector.flower.protocol import RECORD_NAME

    return SimpleNamespace(content=RecordDict({RECORD_NAME: ConfigRecord(note.to_record())}))
