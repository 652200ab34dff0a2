"""collector.run.Run: the one run lifecycle (row, heartbeat, recorder, end of run), used alone
by a plain training loop and under RunSession and FederatedRun, against real stores."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from collector import Run
from collector import prometheus as prom
from collector.cli import main
from collector.config import Settings
from collector.errors import RunIdInUseError
from collector.flower import FederatedRun
from collector.lightning import RunSession
from collector.run import ErrorLedger, Heartbeat
from collector.store import Store
from tests.collector.test_lightning import of, read_points
from tests.servers.prometheus import PrometheusServer
from tests.servers.victoriametrics import VictoriaMetrics

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        factory: Callable[[], str] = request.getfixturevalue("fresh_postgres_url")
        return factory()
    return f"sqlite:///{tmp_path / 'db' / 'runs.db'}"


def make_settings(home: Path, db_url: str, influx_url: str | None = None) -> Settings:
    return Settings(
        home=home,
        db_url=db_url,
        influx_url=influx_url,
        influx_org="org",
        influx_token="token",
        influx_bucket="training",
        prometheus_port=0,
    )


def test_a_plain_loop_run_owns_its_row_heartbeat_and_end(tmp_path: Path, db_url: str) -> None:
    settings = make_settings(tmp_path / "home", db_url)
    with Run("plain", settings=settings, hyperparams={"lr": 0.1}, heartbeat_interval_s=0.05) as run:
        store = Store(db_url)
        first = store.get_run(run.run_id)
        assert first.status == "in_progress" and first.mode == "centralized"
        assert first.hyperparams == {"lr": 0.1}
        time.sleep(0.3)
        assert store.get_run(run.run_id).heartbeat_at > first.heartbeat_at
        for step in range(5):
            run.record("batch", {"loss": 1.0 / (step + 1), "step": step})
        run.log_epoch(0, {"train_loss": 0.5, "val_acc": 0.75})
        run.log_epoch(1, {"train_loss": 0.25, "val_acc": 0.875})
        run.event("checkpoint", text="last.ckpt", tags={"kind": "best"})
    summary = store.get_run(run.run_id, with_metrics=True)
    assert summary.status == "completed" and summary.end_time is not None
    assert {(m.name, m.step, m.value) for m in summary.metrics} >= {
        ("val_acc", 0, 0.75),
        ("val_acc", 1, 0.875),
        ("train_loss", 1, 0.25),
    }
    store.dispose()
    assert run.recorder is None and run.errors.total == 0
    points = read_points(settings, run.run_id)
    assert len(of(points, "batch")) == 5
    assert [p.fields["val_acc"] for p in of(points, "epoch")] == [0.75, 0.875]
    events = [p.tags["event"] for p in of(points, "event")]
    assert events == ["training_start", "checkpoint", "training_end"]


def test_a_failing_body_fails_the_run_and_a_reused_id_is_refused(
    tmp_path: Path, db_url: str
) -> None:
    settings = make_settings(tmp_path / "home", db_url)
    with pytest.raises(ZeroDivisionError), Run("plain", settings=settings) as run:
        run.record("batch", {"loss": 1.0})
        _ = 1 / 0
    store = Store(db_url)
    assert store.get_run(run.run_id).status == "failed"
    store.dispose()
    again = Run("plain", settings=settings, run_id=run.run_id)
    for _ in range(2):  # every time, and nothing is written
        with pytest.raises(RunIdInUseError):
            again.start()
    assert not again.started and again.recorder is None


def test_a_run_made_while_the_database_is_down_is_journaled_and_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db_dir = tmp_path / "db"
    settings = make_settings(tmp_path / "home", f"sqlite:///{db_dir / 'runs.db'}")
    db_dir.write_text("not a directory")  # the database cannot be opened or created
    with Run("offline", settings=settings) as run:
        run.log_epoch(0, {"val_acc": 0.5})
    assert (settings.home / "journal" / f"{run.run_id}.jsonl").is_file()
    assert run.status == "completed" and read_points(settings, run.run_id)

    db_dir.unlink()
    db_dir.mkdir()
    monkeypatch.setenv("RUNWATCH_HOME", str(settings.home))
    monkeypatch.setenv("RUNWATCH_DB_URL", settings.db_url)
    monkeypatch.delenv("INFLUXDB_V2_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["sync", run.run_id]) == 0
    capsys.readouterr()
    store = Store(settings.db_url)
    summary = store.get_run(run.run_id, with_metrics=True)
    store.dispose()
    assert summary.status == "completed"
    assert [(m.name, m.value) for m in summary.metrics] == [("val_acc", 0.5)]


def test_the_three_owners_share_one_lifecycle_and_one_ledger(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", f"sqlite:///{tmp_path / 'runs.db'}")
    runs: list[Any] = [
        Run("a", settings=settings, prometheus=False),
        RunSession("b", settings=settings, prometheus=False),
        FederatedRun("c", settings=settings, prometheus=False, num_rounds=2),
    ]
    for run in runs:
        assert isinstance(run, Run) and isinstance(run.error_ledger, ErrorLedger)
        assert run.start() is run and run.active
        run.event("alert", text="x", tags={"round": "1"})
        run.finish("completed")
        run.finish("failed")  # the first status wins
        assert run.status == "completed" and not run.active
        alert = [
            p for p in of(read_points(settings, run.run_id), "event") if p.tags["event"] == "alert"
        ]
        assert alert[0].tags["round"] == "1"
    store = Store.from_settings(settings)
    assert {s.run_id: s.status for s in store.list_runs()} == {r.run_id: "completed" for r in runs}
    store.dispose()


def test_a_plain_loop_run_is_in_runs_list_show_export_and_compare_sql(
    runwatch_env: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with Run("plain-loop", hyperparams={"optimizer": "sgd"}) as run:
        for epoch, acc in enumerate([0.5, 0.75, 0.625]):
            run.record("batch", {"loss": 1.0 - acc, "step": epoch})
            run.log_epoch(epoch, {"train_loss": 1.0 - acc, "val_acc": acc})
    capsys.readouterr()

    assert main(["runs", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["run_id"], r["status"], r["mode"]) for r in listed] == [
        (run.run_id, "completed", "centralized")
    ]

    assert main(["runs", "show", run.run_id, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "completed" and shown["experiment"] == "plain-loop"
    assert shown["hyperparams"] == {"optimizer": "sgd"}
    assert shown["latest_metrics"]["val_acc"] == 0.625

    out = tmp_path / "export"
    assert main(["runs", "export", run.run_id, "--format", "csv", "--out", str(out)]) == 0
    exported = "\n".join(p.read_text() for p in out.rglob("*.csv"))
    assert "val_acc" in exported and "0.625" in exported
    capsys.readouterr()

    code = main(["compare", run.run_id, "--metric", "val_acc", "--source", "sql", "--json"])
    assert code == 0
    compared = json.dumps(json.loads(capsys.readouterr().out))
    assert run.run_id in compared and "0.75" in compared


@pytest.mark.integration
def test_a_plain_loop_runs_points_reach_an_influx_peer(
    tmp_path: Path, victoriametrics: VictoriaMetrics
) -> None:
    settings = make_settings(
        tmp_path / "home", f"sqlite:///{tmp_path / 'runs.db'}", victoriametrics.url
    )
    with Run("vm plain", settings=settings, prometheus=False) as run:
        for step in range(10):
            run.record("batch", {"loss": step / 2, "step": step})
    assert run.status == "completed"
    victoriametrics.force_flush()
    samples = victoriametrics.samples(f'batch_step{{run_id="{run.run_id}"}}')
    values = sorted(v for series in samples.values() for _, v in series)
    assert values == [float(s) for s in range(10)]


@pytest.mark.integration
def test_prometheus_sees_a_plain_loop_runs_final_status(
    prometheus_scraper: PrometheusServer, runwatch_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert prometheus_scraper.exporter_port is not None
    monkeypatch.setenv("RUNWATCH_PROMETHEUS_PORT", str(prometheus_scraper.exporter_port))
    with Run("scraped plain") as run:
        run.record("batch", {"loss": 0.5, "step": 1})
        prometheus_scraper.wait_for_scrape()
    ended = time.time()
    assert run.exporter is not None and not run.exporter.serving
    selector = f'{prom.RUN_STATUS}{{run_id="{run.run_id}",status="completed"}}'
    status = prometheus_scraper.query(f"last_over_time({selector}[1m])", ended)
    assert status and float(status[0]["value"][1]) == 1.0
    loss = prometheus_scraper.query(
        f'last_over_time({prom.TRAIN_LOSS}{{run_id="{run.run_id}"}}[1m])', ended
    )
    assert loss and float(loss[0]["value"][1]) == 0.5


def test_a_heartbeat_beats_first_after_its_own_delay_then_every_interval() -> None:
    beats: list[float] = []
    started = time.monotonic()
    heartbeat = Heartbeat(lambda: beats.append(time.monotonic()), 1.0, first_after_s=0.01)
    heartbeat.start()
    deadline = started + 10
    while len(beats) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    heartbeat.stop()
    assert not heartbeat.is_alive()
    assert len(beats) >= 2
    assert beats[0] - started < 1.0  # without its own delay, the first beat waits the interval
    assert beats[1] - beats[0] >= 0.99
