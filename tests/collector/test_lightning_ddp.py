"""DDP on CPU (2 processes, gloo): exactly one run, one set of points, one exporter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from collector.config import load_settings
from collector.spool import list_streams
from collector.store import Store
from tests.collector.test_lightning import of, read_points
from tests.servers._process import free_port

EPOCHS = 2

SCRIPT = textwrap.dedent(
    """
    import json, os, sys, warnings
    warnings.filterwarnings("ignore")
    import lightning.pytorch as pl
    from collector.lightning import runwatch_telemetry
    from trainer.data import BreastCancerDataModule
    from trainer.model import MLPClassifier

    out = sys.argv[1]
    pl.seed_everything(5, verbose=False)
    telemetry = runwatch_telemetry("ddp", batch_every_n=2, gradient_every_n=2)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=EPOCHS,
        logger=telemetry.logger, callbacks=telemetry.callbacks,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        log_every_n_steps=2,
    )
    trainer.fit(MLPClassifier(num_features=30), datamodule=BreastCancerDataModule())
    session = telemetry.session
    report = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "run_id": session.run_id,
        "started": session.started,
        "exporter": session.exporter is not None,
        "exporter_served": bool(session.exporter is not None and session.exporter.port),
        "global_step": trainer.global_step,
    }
    with open(os.path.join(out, f"rank{trainer.global_rank}.json"), "w") as handle:
        json.dump(report, handle)
    """
).replace("EPOCHS", str(EPOCHS))


@pytest.mark.slow
def test_ddp_two_cpu_processes_record_one_run(tmp_path: Path) -> None:
    home = tmp_path / "home"
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT, encoding="utf-8")
    env = {
        **os.environ,
        "RUNWATCH_HOME": str(home),
        "RUNWATCH_PROMETHEUS_PORT": str(free_port()),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    for name in ("RUNWATCH_DB_URL", "INFLUXDB_V2_URL", "INFLUXDB_V2_TOKEN"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in reports] == [2, 2]
    assert [r["started"] for r in reports] == [True, False]
    assert [r["exporter"] for r in reports] == [True, False]
    assert reports[0]["exporter_served"]

    settings = load_settings({"RUNWATCH_HOME": str(home)}, dotenv=None)
    store = Store.from_settings(settings)
    try:
        runs = store.list_runs()
    finally:
        store.dispose()
    assert [run.run_id for run in runs] == [reports[0]["run_id"]]
    assert runs[0].status == "completed"

    streams = list_streams(settings.spool_dir)
    assert len(streams) == 1 and streams[0].index == 0
    lines = streams[0].path.read_text(encoding="utf-8").splitlines()
    duplicates = [line for line, n in Counter(lines).items() if n > 1]
    assert duplicates == []
    points = read_points(settings, runs[0].run_id)
    assert [p.fields["epoch"] for p in of(points, "epoch")] == [float(e) for e in range(EPOCHS)]
    events = [p.tags["event"] for p in of(points, "event")]
    assert events.count("training_start") == 1 and events.count("training_end") == 1
    steps = [p.fields["step"] for p in of(points, "gradient")]
    assert steps == sorted(set(steps))  # one process wrote them
    assert {p.tags["rank"] for p in of(points, "system")} <= {"0"}
