"""The store knows its newest migration without alembic: that constant must be alembic's head."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from collector.store.migrate import HEAD_REVISION, head_revisions


def test_head_revision_is_the_newest_shipped_migration() -> None:
    assert head_revisions() == {HEAD_REVISION}


def test_a_store_at_head_is_used_without_importing_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    script = f"""
import sys
from collector.store import Store
store = Store({url!r})
run_id = store.create_run("first")
print("alembic" in sys.modules)
"""
    first = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    second = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    # a new database is upgraded with alembic; one already at head never imports it
    assert (first.stdout.split(), second.stdout.split()) == (["True"], ["False"])
