"""``sqlite_listing``: ``runs list`` read with sqlite3 alone gives the store's own answer, or
none at all where only the store can give it."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from collector.store import Store, sqlite_listing
from collector.store.models import Run, utc_now
from collector.store.records import RunListing
from collector.store.run_listing import ListingFilter
from tests.collector.store._runs import T0, fill_runs, forget_copies

FILTERS = [
    ListingFilter(),
    ListingFilter(limit=2),
    ListingFilter(experiment="exp-1"),
    ListingFilter(since=T0 + timedelta(hours=2, minutes=1)),
    ListingFilter(since=T0 + timedelta(hours=1), experiment="exp-0", limit=1),
    ListingFilter(experiment="nope"),
]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'runs.db'}"


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    store = Store(url)
    yield store
    store.dispose()


def _read(url: str, wanted: ListingFilter = ListingFilter(), **options: object) -> list[RunListing]:
    options = {"details": True, "stale_after": None, **options}
    listed = sqlite_listing.listing(url, wanted, **options)  # type: ignore[arg-type]
    assert listed is not None
    return listed


def _as_json(listed: list[RunListing]) -> list[str]:
    return [json.dumps(run.to_dict()) for run in listed]  # key order included


@pytest.mark.parametrize("wanted", FILTERS, ids=repr)
@pytest.mark.parametrize("details", [True, False])
def test_it_lists_what_the_store_lists(
    store: Store, url: str, wanted: ListingFilter, details: bool
) -> None:
    fill_runs(store, 6)
    store.create_run("exp-0", started_at=T0 + timedelta(hours=9))  # in progress: no end
    expected = store.listing(wanted, details=details)
    assert _as_json(_read(url, wanted, details=details)) == _as_json(expected)
    if wanted == ListingFilter() and details:
        assert expected[1].hyperparams and expected[1].final_stats  # the check compares both


@pytest.mark.parametrize("copies", ["kept", "missing", "some missing"])
def test_its_json_listing_is_the_stores(store: Store, url: str, copies: str) -> None:
    fill_runs(store, 6)
    store.create_run("exp-0", started_at=T0 + timedelta(hours=9))
    kept = {wanted: store.listing_json(wanted) for wanted in FILTERS}
    if copies == "missing":
        forget_copies(store)
    elif copies == "some missing":  # one copy or the other, as another program might leave
        with sqlite3.connect(url.removeprefix("sqlite:///")) as connection:
            connection.execute("UPDATE runs SET final_stats_json = NULL WHERE id % 2 = 0")
            connection.execute("UPDATE runs SET hyperparams_json = NULL WHERE id % 3 = 0")
    documents = {
        wanted: sqlite_listing.listing_json(url, wanted, stale_after=None) for wanted in FILTERS
    }
    assert documents == kept
    assert {wanted: store.listing_json(wanted) for wanted in FILTERS} == kept
    as_dicts = {wanted: [r.to_dict() for r in store.listing(wanted)] for wanted in FILTERS}
    assert as_dicts == {wanted: json.loads(document) for wanted, document in kept.items()}
    everything = json.loads(kept[ListingFilter()])
    assert len(everything) == 7 and everything[1]["hyperparams"] and everything[1]["final_stats"]
    assert sqlite_listing.listing_json(f"{url}?mode=ro", FILTERS[0], stale_after=None) is None


def test_stale_runs_are_marked_crashed_in_the_database(store: Store, url: str) -> None:
    stale, alive = store.create_run("dies"), store.create_run("lives")
    with store.session() as session:
        session.execute(
            update(Run)
            .where(Run.run_id == stale)
            .values(heartbeat_at=utc_now() - timedelta(hours=1))
        )
    listed = {run.run_id: run for run in _read(url, stale_after=timedelta(minutes=5))}
    assert listed[stale].status == "crashed"
    assert listed[stale].end_time == listed[stale].heartbeat_at
    assert listed[alive].status == "in_progress"
    assert store.get_run(stale).status == "crashed"  # written, not only shown


def test_the_statements_are_the_same_for_any_number_of_runs(
    store: Store, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    statements: list[str] = []
    connect = sqlite3.connect

    def traced(*args: object, **kwargs: object) -> sqlite3.Connection:
        connection = connect(*args, **kwargs)  # type: ignore[arg-type]
        connection.set_trace_callback(statements.append)
        return connection

    monkeypatch.setattr(sqlite_listing.sqlite3, "connect", traced)
    counts = []
    for runs in (1, 12):
        fill_runs(store, runs - len(store.listing(details=False)))
        statements.clear()
        _read(url, stale_after=timedelta(minutes=5))
        counts.append(len([s for s in statements if s.lstrip().upper().startswith("SELECT")]))
    # the schema's revision, the stale runs, the runs with their details' copies
    assert counts == [3, 3]


def test_no_answer_where_only_the_store_can_give_one(
    store: Store, url: str, tmp_path: Path
) -> None:
    fill_runs(store, 1)
    wanted = ListingFilter()

    def read(db_url: str) -> list[RunListing] | None:
        return sqlite_listing.listing(db_url, wanted, details=True, stale_after=None)

    assert read(url) is not None
    assert read("sqlite://") is None  # in memory
    assert read(f"{url}?mode=ro") is None  # options the store's engine applies
    assert read(f"postgresql://localhost/{tmp_path.name}") is None
    missing = tmp_path / "new" / "runs.db"
    assert read(f"sqlite:///{missing}") is None
    assert not missing.exists()  # the store creates databases, not the listing
    not_a_database = tmp_path / "notes.db"
    not_a_database.write_text("these are not the runs you are looking for\n" * 100)
    assert read(f"sqlite:///{not_a_database}") is None
    with sqlite3.connect(tmp_path / "runs.db") as connection:  # a store to migrate
        connection.execute("UPDATE alembic_version SET version_num = '0002'")
    assert read(url) is None


def test_a_plain_file_url_is_the_path_sqlalchemy_reads(tmp_path: Path) -> None:
    from sqlalchemy.engine import make_url

    for url in (f"sqlite:///{tmp_path}/runs.db", "sqlite:///relative/runs.db", "sqlite:///~/r.db"):
        database = make_url(url).database
        assert database is not None
        assert sqlite_listing.sqlite_file_of(url) == Path(database).expanduser()
    for other in ("sqlite://", "sqlite:///:memory:", "sqlite:///a%20b.db", "sqlite:///file:x"):
        assert sqlite_listing.sqlite_file_of(other) is None


def test_it_waits_for_a_writer_as_long_as_the_store_does() -> None:
    from collector.store import engine

    assert sqlite_listing.BUSY_TIMEOUT_S == engine.BUSY_TIMEOUT_S
