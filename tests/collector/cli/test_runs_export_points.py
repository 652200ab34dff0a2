"""``runwatch runs export --batches --gradients --events``: the run's points from the real spool
of a real Lightning training (and a plain run with hostile event text), as JSON keys or extra
CSV files, under their canonical names."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
from lightning.pytorch.demos.boring_classes import BoringModel

from collector import Run
from collector.cli import main
from collector.config import load_settings
from collector.lightning import runwatch_telemetry
from collector.spooled_points import parse_line
from tests.collector.test_lightning import read_points


class Logged(BoringModel):
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        output = super().training_step(batch, batch_idx)
        self.log("train/loss", output["loss"])
        return output


@pytest.fixture
def trained(runwatch_env: Path) -> str:
    telemetry = runwatch_telemetry("export", gradient_every_n=1, system_interval_s=0)
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=5,
        limit_val_batches=0,
        accelerator="cpu",
        logger=telemetry.logger,
        callbacks=telemetry.callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
    )
    trainer.fit(Logged())
    return telemetry.run_id


def exported(capsys: pytest.CaptureFixture[str], *argv: str) -> list[Path]:
    assert main(["runs", "export", *argv]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return [Path(line) for line in out.splitlines()]


def test_json_export_holds_the_spooled_batches_gradients_and_events(
    trained: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (path,) = exported(
        capsys,
        trained,
        "--format",
        "json",
        "--out",
        str(tmp_path),
        "--batches",
        "--gradients",
        "--events",
    )
    document = json.loads(path.read_text(encoding="utf-8"))
    spooled = read_points(load_settings(), trained)
    batches = [p for p in spooled if p.measurement == "batch"]
    assert [row["loss"] for row in document["batches"]] == [p.fields["loss"] for p in batches]
    assert [row["step"] for row in document["batches"]] == [0.0, 1.0, 2.0, 3.0, 4.0]
    gradients = [p for p in spooled if p.measurement in ("gradient", "gradient_layer")]
    assert len(document["gradients"]) == len(gradients) > 5
    layers = {
        row["layer"] for row in document["gradients"] if row["measurement"] == "gradient_layer"
    }
    assert layers == {"layer.weight", "layer.bias"}
    events = [row["event"] for row in document["events"]]
    assert events[0] == "training_start" and events[-1] == "training_end"
    assert all("run_id" not in row for kind in ("batches", "events") for row in document[kind])
    assert document["batches"][0]["time"].endswith("Z")


def test_without_the_flags_the_export_is_as_before(
    trained: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (path,) = exported(capsys, trained, "--format", "json", "--out", str(tmp_path))
    document = json.loads(path.read_text(encoding="utf-8"))
    assert not {"batches", "gradients", "events"} & set(document)


def test_csv_export_writes_one_more_file_per_kind(
    trained: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = exported(capsys, trained, "--format", "csv", "--out", str(tmp_path), "--batches")
    assert [p.name for p in paths] == [f"export_{trained}.csv", f"export_{trained}_batches.csv"]
    with paths[1].open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["step"]) for r in rows] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert {"time", "measurement", "loss", "epoch"} <= set(rows[0])


HOSTILE = 'a "quoted", text=with\\backslash,\nnewline and spaces'


def test_event_text_and_tags_read_back_exactly(
    runwatch_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Run("hostile", prometheus=False) as run:
        run.event("alert", text=HOSTILE, value=2.5)
        run.record("gradient_layer", {"norm": 1.5, "step": 0.0}, {"layer": "a,b=c d"})
    (path,) = exported(
        capsys, run.run_id, "--format", "json", "--out", str(tmp_path), "--events", "--gradients"
    )
    document = json.loads(path.read_text())
    alerts = [r for r in document["events"] if r["event"] == "alert"]
    assert [(r["text"], r["value"]) for r in alerts] == [(HOSTILE, 2.5)]
    assert [(r["layer"], r["norm"]) for r in document["gradients"]] == [("a,b=c d", 1.5)]


def test_lines_that_are_not_points_are_refused() -> None:
    assert parse_line("batch,run_id=r loss=1.0") is None  # no timestamp
    assert parse_line('event,run_id=r text="open 5') is None
    assert parse_line("") is None
    point = parse_line("gradient_layer,run_id=r,layer=a\\ b norm=0.5,step=3 17")
    assert point is not None
    assert (point.tags["layer"], point.fields, point.time_ns) == (
        "a b",
        {"norm": 0.5, "step": 3.0},
        17,
    )
