"""docs/flower.md: the app's files, as pasted from the guide, run on Flower's simulation
engine (a private SuperLink, FLWR_HOME in a temp dir, no runtime dependency installation,
every Flower process stopped after), with runwatch's home given in the run config only; what
the guide says is recorded is what the run store, the spool and the CLI then show."""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from collector.cli import main
from collector.config import Settings, load_settings
from collector.store import Store
from trainer.federated.engines import FlowerRunResult, FlowerRuntime

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "flower.md"
TITLED_BLOCK = re.compile(r'^```(\w+) title="([^"]+)"\n(.*?)^```$', re.MULTILINE | re.DOTALL)
ROUNDS = 2
CLIENTS = 2


def guide_files() -> dict[str, str]:
    """The guide's files by path (blocks whose info string names a title)."""
    return {title: body for _, title, body in TITLED_BLOCK.findall(GUIDE.read_text("utf-8"))}


def app_files() -> dict[str, str]:
    return {path: text for path, text in guide_files().items() if not path.startswith("~")}


def test_the_guide_holds_a_whole_app_in_flowers_quickstart_structure() -> None:
    files = app_files()
    assert set(files) == {
        "pyproject.toml",
        "flower_guide/__init__.py",
        "flower_guide/task.py",
        "flower_guide/client_app.py",
        "flower_guide/server_app.py",
    }
    components = tomllib.loads(files["pyproject.toml"])["tool"]["flwr"]["app"]["components"]
    assert components == {
        "serverapp": "flower_guide.server_app:app",
        "clientapp": "flower_guide.client_app:app",
    }
    assert "@app.main()" in files["flower_guide/server_app.py"]
    assert "evaluate_fn=central_evaluate" in files["flower_guide/server_app.py"]
    assert {"@app.train()", "@app.evaluate()"} <= set(
        files["flower_guide/client_app.py"].splitlines()
    )
    for path, text in files.items():
        if path.endswith(".py"):
            compile(text, path, "exec")  # every block is whole, valid Python


@dataclass(frozen=True)
class GuideRun:
    flower: FlowerRunResult
    settings: Settings
    decoy_home: Path
    cwd: Path
    log: str


@pytest.fixture(scope="module")
def guide_run(tmp_path_factory: pytest.TempPathFactory) -> GuideRun:
    root = tmp_path_factory.mktemp("flower-guide")
    app_dir = root / "app"
    for path, text in app_files().items():
        target = app_dir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    home = root / "runwatch-home"
    run_config = root / "run-config.toml"
    run_config.write_text(f'runwatch-home = "{home}"\n', encoding="utf-8")
    # The SuperLink's own environment points elsewhere: the run config must win.
    decoy = root / "decoy-home"
    env = {"RUNWATCH_HOME": str(decoy), "RUNWATCH_PROMETHEUS_PORT": "0", "HOME": str(root)}
    workdir = root / "flower"
    workdir.mkdir()
    with FlowerRuntime(workdir, engine="simulation", num_clients=CLIENTS, env=env) as runtime:
        flower = runtime.run_app(run_config, app_dir=app_dir, timeout_s=500)
    settings = load_settings({"RUNWATCH_HOME": str(home)}, dotenv=None)
    log = flower.log_path.read_text(encoding="utf-8", errors="replace")
    return GuideRun(flower, settings, decoy, workdir, log)


def the_run_id(settings: Settings) -> str:
    store = Store.from_settings(settings)
    try:
        (summary,) = store.list_runs()
    finally:
        store.dispose()
    return summary.run_id


@pytest.mark.slow
def test_the_guides_app_runs_and_records_into_the_run_configs_home(guide_run: GuideRun) -> None:
    assert guide_run.flower.ok, guide_run.log[-3000:]
    assert not guide_run.decoy_home.exists()  # the SuperLink's environment was overridden
    run_id = the_run_id(guide_run.settings)
    # the server says once where it writes, without secrets
    said = [line for line in guide_run.log.splitlines() if f"runwatch: run {run_id} ->" in line]
    assert len(said) == 1 and str(guide_run.settings.spool_dir) in said[0]
    store = Store.from_settings(guide_run.settings)
    try:
        summary = store.get_run(run_id)
        assert (summary.mode, summary.status) == ("federated", "completed")
        assert [r.round_number for r in summary.rounds] == list(range(1, ROUNDS + 1))
        assert sorted(summary.client_partitions.values()) == ["0", "1"]
        aggregated = {(m.step, m.name) for m in store.aggregated_metrics(run_id)}
        for name in ("train_loss", "val_loss", "val_acc", "val_cm_tp", "val_cm_fn"):
            assert {(r, name) for r in range(1, ROUNDS + 1)} <= aggregated, name
        evaluations = store.server_evaluations(run_id)
        assert [e.round_number for e in evaluations] == list(range(1, ROUNDS + 1))
        assert all(None not in (e.loss, e.accuracy, e.cm_tp, e.cm_fn) for e in evaluations)
        # every client's Lightning checkpoints: under the run's home, listed as artifacts
        checkpoints = [a.path for a in summary.artifacts if a.kind == "checkpoint"]
        assert len(checkpoints) == ROUNDS * CLIENTS
        root = guide_run.settings.home / "checkpoints" / run_id
        assert all(Path(p).is_file() and root in Path(p).parents for p in checkpoints)
    finally:
        store.dispose()
    assert not list(guide_run.cwd.rglob("*.ckpt"))  # nothing in the SuperLink's directory


@pytest.mark.slow
def test_the_guides_commands_show_the_run(
    guide_run: GuideRun, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert guide_run.flower.ok
    run_id = the_run_id(guide_run.settings)
    monkeypatch.setenv("RUNWATCH_HOME", str(guide_run.settings.home))
    monkeypatch.delenv("INFLUXDB_V2_URL", raising=False)
    assert main(["runs", "show", run_id]) == 0
    shown = capsys.readouterr().out
    assert "(partition 0)" in shown and "(partition 1)" in shown
    assert "val_acc" in shown.split("Last round, clients' aggregate")[1]
    assert main(["compare", run_id, "--metric", "eval_acc", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["runs"]
    assert (row["unit"], row["epochs"]) == ("round", ROUNDS)
    assert row["best_value"] is not None


@pytest.mark.slow
def test_on_supernodes_each_client_takes_its_home_from_its_node_config(
    tmp_path: Path,
) -> None:
    """The deployment engine: a real SuperLink and two SuperNodes whose environment points at
    one home; each node's ``--node-config runwatch-home`` wins for its ClientApps, the run
    config's for the ServerApp."""
    app_dir = tmp_path / "app"
    for path, text in app_files().items():
        target = app_dir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    server_home = tmp_path / "server-home"
    client_homes = [tmp_path / f"node-{i}-home" for i in range(CLIENTS)]
    run_config = tmp_path / "run-config.toml"
    run_config.write_text(f'runwatch-home = "{server_home}"\n', encoding="utf-8")
    decoy = tmp_path / "decoy-home"
    env = {"RUNWATCH_HOME": str(decoy), "RUNWATCH_PROMETHEUS_PORT": "0", "HOME": str(tmp_path)}
    workdir = tmp_path / "flower"
    workdir.mkdir()
    with FlowerRuntime(
        workdir,
        engine="deployment",
        num_clients=CLIENTS,
        env=env,
        client_node_config=[{"runwatch-home": str(home)} for home in client_homes],
    ) as runtime:
        flower = runtime.run_app(run_config, app_dir=app_dir, timeout_s=500)
    log = flower.log_path.read_text(encoding="utf-8", errors="replace")
    assert flower.ok, log[-3000:]
    assert not decoy.exists()
    settings = load_settings({"RUNWATCH_HOME": str(server_home)}, dotenv=None)
    run_id = the_run_id(settings)
    partitions: set[str] = set()
    for home in client_homes:
        spooled = [
            line
            for stream in (home / "spool").glob("*.lp")
            for line in stream.read_text(encoding="utf-8").splitlines()
        ]
        assert spooled, f"no client points under {home}"
        assert all(f"run_id={run_id}" in line for line in spooled)
        partitions |= set(re.findall(r",partition_id=(\d+)", "\n".join(spooled)))
        assert list((home / "checkpoints" / run_id).rglob("*.ckpt"))
    assert partitions == {"0", "1"}
    server_lines = "\n".join(
        p.read_text(encoding="utf-8") for p in (server_home / "spool").glob("*.lp")
    )
    assert re.search(r"^round,", server_lines, re.MULTILINE)  # the server's rounds
    # the clients' own epoch points are in their homes, none in the server's
    assert not re.search(r"^epoch,.*client_id=", server_lines, re.MULTILINE)
