"""``runwatch runs list``: filters, JSON one run per line, and the lazy imports that keep
``runwatch --help`` fast."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from collector.cli import main
from collector.cli.runs import since_arg
from collector.config import load_settings
from collector.store import Store


@pytest.fixture
def store(runwatch_env: Path) -> Iterator[Store]:
    store = Store.from_settings(load_settings())
    yield store
    store.dispose()


def test_since_and_experiment_filter_the_listing(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    now = datetime.now(UTC)
    old = store.create_run("alpha", started_at=now - timedelta(days=10))
    recent = store.create_run("alpha", started_at=now - timedelta(hours=2))
    other = store.create_run("beta", started_at=now - timedelta(hours=1))
    for run_id in (old, recent, other):
        store.complete_run(run_id)

    def listed(*args: str) -> list[str]:
        assert main(["runs", "list", "--json", *args]) == 0
        return [run["run_id"] for run in json.loads(capsys.readouterr().out)]

    assert listed() == [other, recent, old]
    assert listed("--since", "1d") == [other, recent]
    assert listed("--since", "3h", "--experiment", "alpha") == [recent]
    assert listed("--since", (now - timedelta(days=20)).date().isoformat()) == [other, recent, old]
    assert listed("--experiment", "gamma") == []
    assert main(["runs", "list", "--experiment", "gamma"]) == 0
    assert "no runs match" in capsys.readouterr().out


def test_json_listing_is_one_run_per_line(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    run_ids = [store.create_run(f"exp-{i}", hyperparams={"lr": i / 10}) for i in range(3)]
    assert main(["runs", "list", "--json"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[0] == "[" and lines[-1] == "]" and len(lines) == 5
    assert [json.loads(line.rstrip(","))["run_id"] for line in lines[1:-1]] == run_ids[::-1]
    assert json.loads(out)[0]["hyperparams"] == {"lr": 0.2}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-04", datetime(2026, 3, 4, tzinfo=UTC)),
        ("2026-03-04T05:06:07", datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)),
        ("2026-03-04T05:06:07+02:00", datetime(2026, 3, 4, 3, 6, 7, tzinfo=UTC)),
    ],
)
def test_since_reads_iso_dates_and_times_as_utc(text: str, expected: datetime) -> None:
    assert since_arg(text) == expected


def test_since_reads_spans_back_from_now() -> None:
    for text, span in (
        ("12h", timedelta(hours=12)),
        ("7d", timedelta(days=7)),
        ("30m", timedelta(minutes=30)),
    ):
        before = datetime.now(UTC)
        since = since_arg(text)
        assert before - span <= since <= datetime.now(UTC) - span


@pytest.mark.parametrize("bad", ["yesterday", "12x", "", "-3d"])
def test_a_bad_since_is_a_usage_error(
    runwatch_env: Path, bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["runs", "list", "--since", bad])
    assert exit_info.value.code == 2
    assert "--since" in capsys.readouterr().err


def test_help_imports_neither_the_store_nor_alembic() -> None:
    script = """
import sys
from collector.cli import main
try:
    main(["--help"])
except SystemExit:
    pass
print(sorted(m for m in ("sqlalchemy", "alembic", "collector.store") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_listing_a_sqlite_store_imports_neither_sqlalchemy_nor_other_commands(
    store: Store, runwatch_env: Path
) -> None:
    run_id = store.create_run("light", hyperparams={"lr": 0.5})
    script = """
import json, sys
from collector.cli import main
main(["runs", "list", "--json"])
heavy = ("sqlalchemy", "alembic", "importlib.metadata", "collector.cli.compare", "trainer")
print(json.dumps(sorted(m for m in heavy if m in sys.modules)))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    *listing, imported = done.stdout.strip().splitlines()
    assert json.loads(imported) == []
    (listed,) = json.loads("\n".join(listing))
    assert (listed["run_id"], listed["hyperparams"]) == (run_id, {"lr": 0.5})


def test_a_store_to_create_is_listed_by_the_store(
    runwatch_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["runs", "list"]) == 0  # no database yet: the store creates it
    assert "no runs recorded yet" in capsys.readouterr().out
    assert (runwatch_env / "runs.db").is_file()


def test_the_stores_json_listing_is_the_sqlite_readers(
    store: Store, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = store.create_run("exp", hyperparams={"lr": 0.5, "model": {"depth": 3}})
    store.complete_run(run_id)
    store.create_run("exp")  # in progress
    assert main(["runs", "list", "--json"]) == 0
    read_by_sqlite3 = capsys.readouterr().out
    # URL options: only the store's engine applies them, so the store answers
    monkeypatch.setenv("RUNWATCH_DB_URL", f"{load_settings().db_url}?timeout=20")
    asked: list[object] = []
    listing_json = Store.listing_json
    monkeypatch.setattr(Store, "listing_json", lambda *a: asked.append(a) or listing_json(*a))
    assert main(["runs", "list", "--json"]) == 0
    assert capsys.readouterr().out == read_by_sqlite3
    assert len(asked) == 1
    assert json.loads(read_by_sqlite3)[1]["hyperparams"] == {"lr": 0.5, "model.depth": 3}
