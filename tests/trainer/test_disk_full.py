"""A full disk or a read-only RUNWATCH_HOME never crashes the reference training.

Real mounts: a tiny tmpfs (the checkpoint does not fit; the spool and exports do) and a
read-only bind mount (nothing under the home can be written). The run's metadata goes to a
database outside the home, so it is the home alone that fails. Needs root (``mount``); skips
with the reason otherwise. Decision under test: checkpoints are skipped with one warning line,
training completes, ``runwatch train`` exits 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.store import Store

CHECKPOINT_WARNING = "checkpoint not saved"


def _mount(*argv: str) -> None:
    result = subprocess.run(["mount", *argv], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount ({' '.join(argv)}): {result.stderr.strip() or 'not root?'}")


def _unmount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True, check=False)


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """64 KiB: the spool and the metric files of two epochs fit, an MLP checkpoint does not."""
    home = tmp_path / "tiny"
    home.mkdir()
    _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(home))
    try:
        yield home
    finally:
        _unmount(home)


@pytest.fixture
def read_only_home(tmp_path: Path) -> Iterator[Path]:
    source, home = tmp_path / "source", tmp_path / "read-only"
    source.mkdir()
    home.mkdir()
    _mount("--bind", str(source), str(home))
    try:
        _mount("-o", "remount,bind,ro", str(home))
        yield home
    finally:
        _unmount(home)


def _train(home: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], str]:
    db_url = f"sqlite:///{tmp_path / 'runs.db'}"
    env = {
        **os.environ,
        "RUNWATCH_HOME": str(home),
        "RUNWATCH_DB_URL": db_url,
        "RUNWATCH_PROMETHEUS_PORT": "0",
    }
    for name in ("INFLUXDB_V2_URL", "INFLUXDB_V2_ORG", "INFLUXDB_V2_TOKEN"):
        env.pop(name, None)
    argv = [sys.executable, "-m", "collector", "train", "centralized", "--epochs", "2", "--no-test"]
    result = subprocess.run(
        argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    return result, db_url


def _assert_trained_despite_the_disk(
    result: subprocess.CompletedProcess[str], db_url: str, reason: str
) -> None:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    warnings = [line for line in result.stderr.splitlines() if CHECKPOINT_WARNING in line]
    assert len(warnings) == 1 and reason in warnings[0], result.stderr
    run_id = result.stdout.split()[1].rstrip(":")
    store = Store(db_url)
    try:
        run = store.get_run(run_id)
        assert run.status == "completed" and run.artifacts == ()
        assert {m.step for m in store.all_metrics(run_id) if m.context == "epoch_end"} == {0, 1}
    finally:
        store.dispose()


@pytest.mark.slow
def test_a_full_disk_skips_checkpoints_and_training_completes(
    tiny_tmpfs: Path, tmp_path: Path
) -> None:
    result, db_url = _train(tiny_tmpfs, tmp_path)

    _assert_trained_despite_the_disk(result, db_url, "No space left on device")
    assert not any((tiny_tmpfs / "checkpoints").rglob("*.ckpt"))  # no torn file left behind
    assert any((tiny_tmpfs / "spool").iterdir())  # telemetry went on writing what fits


@pytest.mark.slow
def test_a_read_only_home_skips_checkpoints_and_training_completes(
    read_only_home: Path, tmp_path: Path
) -> None:
    result, db_url = _train(read_only_home, tmp_path)

    _assert_trained_despite_the_disk(result, db_url, "Read-only file system")
    assert list(read_only_home.iterdir()) == []
