"""``Store.listing`` (``runs list``): what it shows, newest first, filtered, in one statement
whatever the number of runs (three where the runs' listing copies are missing), on every
backend; the copies the writes keep are what the tables hold."""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event

from collector.store import Store, writes
from collector.store.records import RunListing
from collector.store.run_listing import (
    SQLITE_MOMENT,
    ListingFilter,
    SessionRows,
    final_stats_of,
    iso_moment,
)
from collector.store.run_listing import listing_json as list_runs_json
from tests.collector.store._runs import FORGET_COPIES, T0, forget_copies
from tests.collector.store._runs import fill_runs as _fill


def _selects(store: Store, call: Callable[[], object]) -> int:
    statements: list[str] = []
    listener = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(store.engine, "before_cursor_execute", listener)
    try:
        call()
    finally:
        event.remove(store.engine, "before_cursor_execute", listener)
    return len([s for s in statements if s.lstrip().upper().startswith("SELECT")])


@pytest.mark.parametrize("copies", ["kept", "missing"])
@pytest.mark.parametrize("details", [True, False])
def test_listing_costs_the_same_statements_for_any_number_of_runs(
    new_db_url: Callable[[], str], details: bool, copies: str
) -> None:
    counts = {}
    for runs in (1, 12, 40):
        store = Store(new_db_url())
        try:
            _fill(store, runs)
            if copies == "missing":
                forget_copies(store)
            store.upgrade()
            counts[runs] = _selects(store, functools.partial(store.listing, details=details))
            limited = _selects(
                store, functools.partial(store.listing, ListingFilter(limit=3), details=details)
            )
            if details:
                assert _selects(store, store.listing_json) == counts[runs]
        finally:
            store.dispose()
        assert limited == counts[runs]
    assert counts[1] == counts[12] == counts[40], counts
    # the runs with their copies; where those are missing, the hyperparameters and final stats
    assert counts[1] == (3 if details and copies == "missing" else 1), counts


def test_listing_shows_columns_hyperparameters_and_final_stats(store: Store) -> None:
    first, second = _fill(store, 2)
    listed = store.listing()
    assert [r.run_id for r in listed] == [second, first]
    newest = listed[0]
    assert isinstance(newest, RunListing)
    assert (newest.experiment, newest.mode, newest.status) == ("exp-1", "centralized", "completed")
    assert newest.start_time == T0 + timedelta(hours=1)
    assert newest.duration_s == 1800.0
    assert newest.hyperparams == {"lr": 0.1, "model.depth": 1}
    assert newest.final_stats == store.get_run(second).final_stats
    assert newest.final_stats["final_accuracy_cm"] == pytest.approx(0.85)
    brief = store.listing(details=False)
    assert [(r.run_id, r.hyperparams, r.final_stats) for r in brief] == [
        (second, {}, {}),
        (first, {}, {}),
    ]
    assert set(newest.to_dict()) == {
        "run_id", "experiment", "mode", "status", "start_time", "end_time", "heartbeat_at",
        "duration_s", "host", "source_path", "hyperparams", "final_stats",
    }  # fmt: skip


def test_listing_filters_by_experiment_start_and_limit_newest_first(store: Store) -> None:
    run_ids = _fill(store, 6)  # run n starts at T0 + n hours, experiment exp-(n % 2)

    def listed(**wanted: object) -> list[str]:
        return [r.run_id for r in store.listing(ListingFilter(**wanted))]  # type: ignore[arg-type]

    assert listed() == run_ids[::-1]
    assert listed(limit=2) == run_ids[:3:-1]
    assert listed(experiment="exp-1") == [run_ids[5], run_ids[3], run_ids[1]]
    assert listed(since=T0 + timedelta(hours=3)) == run_ids[:2:-1]
    assert listed(since=T0 + timedelta(hours=2, minutes=1), experiment="exp-0", limit=5) == [
        run_ids[4]
    ]
    assert listed(experiment="nope") == []
    # the details of a filtered listing belong to the runs listed
    (only,) = store.listing(ListingFilter(experiment="exp-0", limit=1))
    assert only.run_id == run_ids[4] and only.hyperparams == {"lr": 0.4, "model.depth": 4}


def test_final_stats_are_read_from_their_partial_index_not_every_metric(store: Store) -> None:
    _fill(store, 3)
    assert store.listing()[0].final_stats  # what the index holds
    for wanted in (ListingFilter(), ListingFilter(limit=2)):
        steps = _plan(store, wanted)
        metric_steps = [step for step in steps if "run_metrics" in step]
        assert metric_steps, steps
        # never every epoch metric of every run: an index of final stats, or one per listed run
        assert not any(
            step.strip() == "SCAN run_metrics" or "Seq Scan on run_metrics" in step
            for step in metric_steps
        ), steps
        if wanted == ListingFilter():
            assert any("ix_run_metrics_final_stats" in step for step in steps), steps


def _plan(store: Store, wanted: ListingFilter) -> list[str]:
    with store.session(write=False) as session:
        rows = SessionRows(session)
        sql, params = final_stats_of(wanted, rows)
        if rows.is_sqlite:
            return [row[-1] for row in rows(f"EXPLAIN QUERY PLAN {sql}", params)]
        # with sequential scans priced out, an index is taken only where it is usable
        rows("SET LOCAL enable_seqscan = off", {})
        return [row[0] for row in rows(f"EXPLAIN {sql}", params)]


def _from_copies_and_from_tables(store: Store, wanted: ListingFilter = ListingFilter()) -> str:
    """The JSON listing, checked equal to the one read without the copies the writes kept."""
    listed = store.listing_json(wanted)
    with store.session() as session:  # rolled back: the copies stay for the next write
        rows = SessionRows(session)
        rows(FORGET_COPIES, {})
        read = list_runs_json(rows, wanted)
        session.rollback()
    assert listed == read
    return listed


def test_the_writes_keep_copies_of_what_the_tables_hold(store: Store) -> None:
    plain = store.create_run("exp")
    first, second = _fill(store, 2)
    assert _from_copies_and_from_tables(store)
    store.save_hyperparams(first, {"lr": 0.5, "optim": {"name": "adam", "betas": [0.9, 0.99]}})
    store.save_hyperparams(first, {"Z": None, "a": "text ✓", "nan": float("nan")})
    store.persist_epoch_metrics(
        second, [{"epoch": 5, "val_cm_tp": 1, "val_cm_tn": 2, "val_cm_fp": 3, "val_cm_fn": 4}]
    )
    store.complete_run(second, "failed")  # final stats from the newest matrix
    store.heartbeat(plain)
    listed = json.loads(_from_copies_and_from_tables(store))
    by_id = {run["run_id"]: run for run in listed}
    assert by_id[first]["hyperparams"]["optim.betas"] == [0.9, 0.99]
    assert list(by_id[first]["hyperparams"]) == sorted(by_id[first]["hyperparams"])
    assert by_id[second]["final_stats"]["final_cm_tp"] == 1
    assert by_id[plain]["hyperparams"] == by_id[plain]["final_stats"] == {}
    assert _from_copies_and_from_tables(store, ListingFilter(experiment="exp-0", limit=1))


def test_the_json_listing_is_the_listing_as_json(store: Store) -> None:
    _fill(store, 3)
    store.create_run("exp-0", started_at=T0 + timedelta(hours=9))  # in progress: no end
    store.complete_run(store.create_run("exp-1"))  # moments with microseconds
    for wanted in (ListingFilter(), ListingFilter(limit=2), ListingFilter(experiment="no")):
        as_dicts = [json.dumps(run.to_dict()) for run in store.listing(wanted)]
        expected = "[\n" + ",\n".join(as_dicts) + "\n]" if as_dicts else "[]"
        assert store.listing_json(wanted) == expected  # key order and spacing included


def test_a_writer_waits_for_another_writer_of_the_run_before_keeping_its_copy(
    store: Store,
) -> None:
    run_id = store.create_run("exp")
    second_writer = threading.Thread(target=store.save_hyperparams, args=(run_id, {"b": 2}))
    with store.session() as first:  # the first writer's transaction, open across the second's
        writes.upsert_hyperparams(first, writes.run_pk_of(first, run_id), {"a": 1})
        second_writer.start()
        second_writer.join(0.5)  # reads what the first kept only if it waited for its commit
    second_writer.join(30)
    (listed,) = json.loads(_from_copies_and_from_tables(store))
    assert listed["hyperparams"] == {"a": 1, "b": 2}


@pytest.mark.parametrize(
    "moment",
    [
        T0,
        T0 + timedelta(microseconds=1),
        T0 + timedelta(days=400, seconds=59, microseconds=999_999),
        datetime.now(UTC),
    ],
)
def test_moments_are_written_as_isoformat_writes_them(moment: datetime) -> None:
    stored_by_sqlite = moment.replace(tzinfo=None).strftime(SQLITE_MOMENT)
    assert iso_moment(stored_by_sqlite) == moment.isoformat()
    assert iso_moment(moment) == moment.isoformat()  # PostgreSQL's aware datetimes
    assert iso_moment(stored_by_sqlite[:19]) == moment.replace(microsecond=0).isoformat()
    assert iso_moment(None) is None
