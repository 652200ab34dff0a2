"""collector.store.journal: writes the database cannot take are kept in order with their
times and replayed once it answers; a journal with a live writer or a replay in progress is
never removed or replayed twice. SQLite is made unavailable by putting a file where its
directory was."""

from __future__ import annotations

import fcntl
import os
from datetime import timedelta
from pathlib import Path

import pytest

from collector.config import Settings
from collector.store import Store
from collector.store.journal import (
    ACK_SUFFIX,
    JournalingStore,
    journal_path,
    replay_journals,
)

EPOCHS = [
    {"epoch": 0, "train_loss": 0.9, "val_cm_tp": 3, "val_cm_tn": 4, "val_cm_fp": 2, "val_cm_fn": 1},
    {"epoch": 1, "train_loss": 0.5, "val_cm_tp": 5, "val_cm_tn": 4, "val_cm_fp": 1, "val_cm_fn": 0},
]


def settings_in(tmp_path: Path) -> Settings:
    db_dir = tmp_path / "db"
    db_dir.mkdir()
    return Settings(home=tmp_path / "home", db_url=f"sqlite:///{db_dir / 'runs.db'}")


def database_away(settings: Settings) -> Path:
    """Move the database's directory away and leave a file in its place (new connections
    fail, and the directory cannot be made again); returns where it went."""
    db_dir = Path(settings.db_url.removeprefix("sqlite:///")).parent
    away = db_dir.with_name("db-away")
    db_dir.rename(away)
    db_dir.write_text("not a directory")
    return away


def database_back(settings: Settings, away: Path) -> None:
    db_dir = Path(settings.db_url.removeprefix("sqlite:///")).parent
    db_dir.unlink()
    away.rename(db_dir)


def test_an_outage_mid_run_is_journaled_and_replayed_with_its_times(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    writer = JournalingStore.for_run(settings, "run-1")
    writer.create_run("exp", run_id="run-1", hyperparams={"lr": 0.1})
    writer.dispose()  # pooled connections closed: the next write needs a new one
    away = database_away(settings)

    writer.heartbeat("run-1")  # one warning, never an exception
    assert writer.persist_epoch_metrics("run-1", EPOCHS) == 0
    writer.complete_run("run-1")
    assert writer.unavailable is not None and writer.journaled == 2
    assert journal_path(settings, "run-1").exists()

    database_back(settings, away)
    (replay,) = replay_journals(settings)
    assert (replay.run_id, replay.replayed, replay.error) == ("run-1", 2, None)
    assert not replay.finished  # the writer (this process) still holds the run open
    writer_gone_replay = _after_writer_closed(writer, settings)
    assert writer_gone_replay.finished and not journal_path(settings, "run-1").exists()

    store = Store.from_settings(settings)
    summary = store.get_run("run-1", with_metrics=True)
    assert summary.status == "completed" and summary.hyperparams == {"lr": 0.1}
    assert sorted(m.name for m in summary.metrics if m.step == 1 and m.context == "epoch_end") == [
        "train_loss",
        "val_cm_fn",
        "val_cm_fp",
        "val_cm_tn",
        "val_cm_tp",
    ]
    assert summary.final_stats["final_recall_cm"] == 1.0  # from the replayed last matrix
    store.dispose()


def _after_writer_closed(writer: JournalingStore, settings: Settings) -> object:
    assert writer._live_fd is not None
    os.close(writer._live_fd)  # what the process's exit does
    writer._live_fd = None
    (replay,) = replay_journals(settings)
    assert replay.replayed == 0
    return replay


def test_a_run_that_never_reached_the_database_is_created_at_its_own_start(
    tmp_path: Path,
) -> None:
    settings = settings_in(tmp_path)
    away = database_away(settings)
    writer = JournalingStore.for_run(settings, "run-2")
    writer.create_run("exp", run_id="run-2")
    writer.persist_epoch_metrics("run-2", EPOCHS)
    database_back(settings, away)

    (replay,) = replay_journals(settings)
    assert replay.replayed == 2 and not replay.finished
    store = Store(settings.db_url, stale_after=timedelta(hours=1))
    summary = store.get_run("run-2")
    # Not completed in the journal: it stays in progress, then stale reads mark it crashed.
    assert summary.status == "in_progress"
    assert summary.start_time == summary.heartbeat_at
    assert Store(settings.db_url, stale_after=timedelta(0)).get_run("run-2").status == "crashed"
    store.dispose()


def test_a_failed_replay_keeps_what_is_left_and_resumes(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    away = database_away(settings)
    writer = JournalingStore.for_run(settings, "run-3")
    writer.create_run("exp", run_id="run-3")
    writer.complete_run("run-3")
    (failed,) = replay_journals(settings)  # still away
    assert failed.replayed == 0 and failed.pending == 2 and failed.error is not None
    assert failed.error.startswith("DatabaseUnavailableError")

    database_back(settings, away)
    (resumed,) = replay_journals(settings)
    assert resumed.replayed == 2 and resumed.error is None
    assert journal_path(settings, "run-3").with_suffix(ACK_SUFFIX).exists()


def test_a_journal_being_replayed_is_not_replayed_again(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    away = database_away(settings)
    writer = JournalingStore.for_run(settings, "run-4")
    writer.create_run("exp", run_id="run-4")
    database_back(settings, away)

    path = journal_path(settings, "run-4")
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another sync is replaying it
        (busy,) = replay_journals(settings)
        assert busy.replayed == 0 and busy.error is not None and "another" in busy.error
    finally:
        os.close(fd)
    (replay,) = replay_journals(settings)
    assert replay.replayed == 1


@pytest.mark.parametrize("run_id", ["a/b", "../escape", "sp ace"])
def test_journal_paths_stay_in_the_journal_directory(tmp_path: Path, run_id: str) -> None:
    settings = settings_in(tmp_path)
    path = journal_path(settings, run_id)
    assert path.parent == settings.home / "journal"
