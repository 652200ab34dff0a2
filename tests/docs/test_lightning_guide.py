"""docs/lightning.md: every ```python block, as pasted, written to its file and run in the
guide's order in a fresh directory (a temporary RUNWATCH_HOME, no InfluxDB, no exporter); then
what the guide says is recorded, and how often, is what the run store, the spool and the CLI
show, and the defaults it states are the code's."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from collector.cli import main
from collector.config import Settings, load_settings
from collector.lightning.callbacks import (
    DEFAULT_BATCH_EVERY_N,
    DEFAULT_GRADIENT_EVERY_N,
    DEFAULT_MONITOR,
    DEFAULT_MONITOR_MODE,
    DEFAULT_SYSTEM_INTERVAL_S,
)
from collector.lightning.gradients import DEFAULT_MAX_LAYERS
from collector.store import Store
from tests.collector.influx_wire import spool_points
from tests.docs.code_blocks import REPO, code_blocks, isolated_environment, run_python

GUIDE = REPO / "docs" / "lightning.md"
FILES = ("guide_model.py", "train.py", "tuned.py", "run_ids.py", "where.py")
STEPS_PER_EPOCH = 48  # make_loaders(): 1536 training samples in batches of 32
EPOCH_METRICS = ("train_loss", "val_loss", "val_acc", "val_recall", "lr", "val_cm_tp", "val_cm_fn")
NEEDS_INFLUXDB = {"runwatch sync"}


@dataclass(frozen=True)
class GuideRun:
    settings: Settings
    workdir: Path
    user_home: Path
    output: dict[str, str]
    """Each file's stdout."""

    def run_id(self, script: str) -> str:
        found = re.search(r"^run (\S+): finished$", self.output[script], re.MULTILINE)
        assert found, self.output[script]
        return found.group(1)

    @property
    def reused_run_id(self) -> str:
        found = re.search(r"^refused: run id '([^']+)' is already used", self.output["run_ids.py"])
        assert found, self.output["run_ids.py"]
        return found.group(1)


def test_every_python_block_is_a_file_of_the_guide_and_is_run() -> None:
    blocks = code_blocks(GUIDE, "python")
    assert tuple(b.title for b in blocks) == FILES
    assert [b.name for b in blocks if b.not_run] == []  # the guide marks none as not-run
    for block in blocks:
        compile(block.code, block.name, "exec")
        assert "pytorch_lightning" not in block.code


@pytest.fixture(scope="module")
def guide_run(tmp_path_factory: pytest.TempPathFactory) -> GuideRun:
    root = tmp_path_factory.mktemp("lightning-guide")
    workdir, home, user_home = root / "work", root / "runwatch-home", root / "user"
    workdir.mkdir()
    user_home.mkdir()
    env = isolated_environment(home, user_home)
    blocks = [b for b in code_blocks(GUIDE, "python") if b.not_run is None]
    for block in blocks:
        assert block.title is not None, block.name
        (workdir / block.title).write_text(block.code, encoding="utf-8")
    output = {}
    for block in blocks:
        assert block.title is not None
        output[block.title] = run_python(workdir / block.title, workdir, env).stdout
    settings = load_settings({"RUNWATCH_HOME": str(home)}, dotenv=None)
    return GuideRun(settings, workdir, user_home, output)


def exported(guide_run: GuideRun, run_id: str, tmp_path: Path) -> dict[str, Any]:
    """The run as `runwatch runs export --format json --batches --gradients --events` writes
    it: the store's rows and the spool's points."""
    args = ["runs", "export", run_id, "--format", "json", "--batches", "--gradients", "--events"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob(f"*{run_id}.json")
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return document


@pytest.fixture
def guide_env(guide_run: GuideRun, monkeypatch: pytest.MonkeyPatch) -> GuideRun:
    """This process set up as the guide's shell: same RUNWATCH_HOME, no InfluxDB, its cwd."""
    for name in ("RUNWATCH_DB_URL", "INFLUXDB_V2_URL", "INFLUXDB_V2_ORG", "INFLUXDB_V2_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RUNWATCH_HOME", str(guide_run.settings.home))
    monkeypatch.setenv("RUNWATCH_PROMETHEUS_PORT", "0")
    monkeypatch.chdir(guide_run.workdir)
    return guide_run


def epoch_rows(summary: Any) -> dict[str, dict[int, float]]:
    rows: dict[str, dict[int, float]] = {}
    for metric in summary.metrics:
        if metric.context == "epoch_end":
            assert metric.step not in rows.get(metric.name, {}), (metric.name, metric.step)
            rows.setdefault(metric.name, {})[metric.step] = metric.value
    return rows


@pytest.mark.slow
def test_train_py_records_the_run_its_epochs_and_hyperparameters(guide_run: GuideRun) -> None:
    run_id = guide_run.run_id("train.py")
    store = Store.from_settings(guide_run.settings)
    try:
        summary = store.get_run(run_id, with_metrics=True)
    finally:
        store.dispose()
    assert (summary.experiment, summary.mode, summary.status) == (
        "guide-mlp",
        "centralized",
        "completed",
    )
    # save_hyperparameters() and runwatch_telemetry(hyperparams=...), each with its type:
    # the numpy int is the number 32, the dataclass its fields
    params = summary.hyperparams
    assert params["hidden"] == 32 and type(params["hidden"]) is int
    assert params["lr"] == pytest.approx(0.05)
    assert (params["schedule.step_size"], params["schedule.gamma"]) == (2, 0.5)
    assert (params["batch_size"], params["dataset"]) == (32, "synthetic-sum")
    epochs = epoch_rows(summary)
    for name in EPOCH_METRICS:
        assert set(epochs.get(name, {})) == {0, 1, 2, 3}, name
    assert epochs["lr"][2] == pytest.approx(0.025)  # StepLR halved it after two epochs
    # the confusion matrix the module keeps, read without logging it by hand
    assert {"final_precision_cm", "final_recall_cm", "final_f1_cm"} <= set(summary.final_stats)
    # Lightning's checkpoints: under the run's directory, the run's artifacts, none in the cwd
    checkpoints = [Path(a.path) for a in summary.artifacts if a.kind == "checkpoint"]
    assert checkpoints and all(p.is_file() for p in checkpoints)
    assert all(guide_run.settings.home / "runs" / run_id in p.parents for p in checkpoints)
    assert not list(guide_run.workdir.rglob("*.ckpt"))
    assert not (guide_run.workdir / "lightning_logs").exists()
    assert not (guide_run.user_home / ".runwatch").exists()  # RUNWATCH_HOME was honoured
    files = guide_run.settings.home / "exports" / run_id
    document = json.loads((files / "metrics.json").read_text(encoding="utf-8"))
    assert (document["monitor"], document["total_epochs"]) == ("val_recall", 4)
    best = max(epochs["val_recall"].items(), key=lambda item: item[1])
    assert (document["best_epoch"], document["best_val_recall"]) == pytest.approx(best)
    assert (files / "metrics.csv").is_file()


def test_the_defaults_the_guide_states_are_the_codes() -> None:
    guide = " ".join(GUIDE.read_text(encoding="utf-8").split())
    assert (DEFAULT_MONITOR, DEFAULT_MONITOR_MODE) == ("val_recall", "max")
    assert f"best `{DEFAULT_MONITOR}` (mode `{DEFAULT_MONITOR_MODE}`)" in guide
    assert f"every {DEFAULT_GRADIENT_EVERY_N}th optimizer step" in guide
    assert f"the first {DEFAULT_MAX_LAYERS} parameters" in guide
    assert f"every {DEFAULT_SYSTEM_INTERVAL_S:g} s" in guide
    # batch points follow log_every_n_steps; batch_every_n only switches fields on or off
    assert DEFAULT_BATCH_EVERY_N > 0
    assert "every `log_every_n_steps` (Lightning's default: 50)" in guide


@pytest.mark.slow
def test_points_are_sampled_as_the_guide_says(guide_env: GuideRun, tmp_path: Path) -> None:
    default = exported(guide_env, guide_env.run_id("train.py"), tmp_path / "default")
    steps = 4 * STEPS_PER_EPOCH
    # batch points: on Lightning's logging steps (log_every_n_steps=10), with Lightning's step
    batches = default["batches"]
    assert [b["step"] for b in batches] == [float(s) for s in range(9, steps, 10)]
    assert all({"loss", "samples_per_s", "batch_idx"} <= set(b) for b in batches)
    gradients = [g for g in default["gradients"] if g["measurement"] == "gradient"]
    expected = [float(s) for s in range(0, steps, DEFAULT_GRADIENT_EVERY_N)]
    assert [g["step"] for g in gradients] == expected
    layers = {g["layer"] for g in default["gradients"] if g["measurement"] == "gradient_layer"}
    assert layers == {"net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"}
    events = [e["event"] for e in default["events"]]
    assert events[0] == "training_start" and events[-1] == "training_end"
    assert events.count("checkpoint") >= 1
    assert f"best {DEFAULT_MONITOR}" in default["events"][-1]["text"]

    # tuned.py: batch_every_n=0, gradient_every_n=5, gradient_max_layers=2, no system points
    tuned_id = guide_env.run_id("tuned.py")
    tuned = exported(guide_env, tuned_id, tmp_path / "tuned")
    assert tuned["batches"] and not any("samples_per_s" in b for b in tuned["batches"])
    tuned_steps = 2 * STEPS_PER_EPOCH
    gradients = [g for g in tuned["gradients"] if g["measurement"] == "gradient"]
    assert [g["step"] for g in gradients] == [float(s) for s in range(0, tuned_steps, 5)]
    layers = {g["layer"] for g in tuned["gradients"] if g["measurement"] == "gradient_layer"}
    assert layers == {"net.0.weight", "net.0.bias"}
    # (how many system points a default run has depends on how long it trained)
    assert not spool_points(guide_env.settings.home, tuned_id, "system")  # system_interval_s=0
    # monitor="val_loss", monitor_mode="min", export_dir="exports/tuned" (relative to the cwd)
    document = json.loads((guide_env.workdir / "exports/tuned/metrics.json").read_text("utf-8"))
    assert document["run_id"] == tuned_id and document["monitor"] == "val_loss"
    losses = {row["epoch"]: row["val_loss"] for row in document["metrics_history"]}
    assert document["best_val_loss"] == min(losses.values())
    assert not (guide_env.settings.home / "exports" / tuned_id).exists()


@pytest.mark.slow
def test_a_reused_run_id_is_refused_and_the_first_run_is_left_as_it_was(
    guide_env: GuideRun, tmp_path: Path
) -> None:
    run_id = guide_env.reused_run_id
    assert "a new training needs a new run id" in guide_env.output["run_ids.py"]
    store = Store.from_settings(guide_env.settings)
    try:
        summary = store.get_run(run_id, with_metrics=True)
        assert [r.run_id for r in store.list_runs()].count(run_id) == 1
    finally:
        store.dispose()
    assert summary.status == "completed"
    assert set(epoch_rows(summary)["val_loss"]) == {0, 1}  # the first training's two epochs only
    events = [e["event"] for e in exported(guide_env, run_id, tmp_path)["events"]]
    assert events.count("training_start") == 1 and events.count("training_end") == 1


@pytest.mark.slow
def test_where_py_prints_the_home_the_trainings_used(guide_run: GuideRun) -> None:
    said = dict(
        line.split(None, 1) for line in guide_run.output["where.py"].splitlines() if line.strip()
    )
    assert said["RUNWATCH_HOME"] == str(guide_run.settings.home)
    assert said["INFLUXDB_V2_URL"].startswith("(not set")


@pytest.mark.slow
def test_the_guides_commands_run_and_show_the_runs(
    guide_env: GuideRun, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = {
        "<RUN_ID>": guide_env.run_id("train.py"),
        "<OTHER_RUN_ID>": guide_env.run_id("tuned.py"),
    }
    commands = [
        line.strip()
        for block in code_blocks(GUIDE, "bash")
        for line in block.code.splitlines()
        if line.strip().startswith("runwatch ")
    ]
    offline = [c for c in commands if c not in NEEDS_INFLUXDB]
    assert set(commands) - set(offline) == NEEDS_INFLUXDB
    assert len(offline) >= 4
    said = {}
    for command in offline:
        argv = shlex.split(command)[1:]
        argv = [ids.get(arg, arg) for arg in argv]
        capsys.readouterr()
        assert main(argv) == 0, command
        said[" ".join(argv[:2])] = capsys.readouterr().out
    shown = said["runs show"]
    assert re.search(r"^\s+hidden\s+32$", shown, re.MULTILINE), shown
    assert re.search(r"^\s+schedule\.gamma\s+0\.5$", shown, re.MULTILINE), shown
    assert "final_precision_cm" in shown and "checkpoint" in shown
    assert all(run_id in said[f"compare {ids['<RUN_ID>']}"] for run_id in ids.values())
    assert (guide_env.workdir / "exports" / f"guide-mlp_{ids['<RUN_ID>']}.json").is_file()
