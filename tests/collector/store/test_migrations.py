"""The shipped Alembic migrations build exactly the schema the models describe."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, select, text

from collector.store import Store
from collector.store.migrate import alembic_config, head_revisions
from collector.store.models import Base, Run
from tests.collector.store._runs import fill_runs


def test_first_use_upgrades_to_head_and_matches_the_models(new_db_url: Callable[[], str]) -> None:
    store = Store(new_db_url())
    store.list_runs()  # first use
    try:
        with store.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert set(context.get_current_heads()) == head_revisions()
            diff = compare_metadata(context, Base.metadata)
        assert diff == []
        tables = set(inspect(store.engine).get_table_names())
        assert set(Base.metadata.tables) <= tables
    finally:
        store.dispose()


def test_upgrade_is_idempotent_across_stores(new_db_url: Callable[[], str]) -> None:
    url = new_db_url()
    first = Store(url)
    run_id = first.create_run("kept")
    first.dispose()
    second = Store(url)
    second.upgrade()
    assert second.get_run(run_id).experiment == "kept"
    second.dispose()


def test_downgrade_to_base_and_upgrade_again(new_db_url: Callable[[], str]) -> None:
    url = new_db_url()
    Store(url).upgrade()
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            command.downgrade(alembic_config(connection), "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), "head")
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrading_a_store_keeps_listing_copies_of_its_runs(new_db_url: Callable[[], str]) -> None:
    url = new_db_url()
    with _opened(url) as store:
        run_ids = fill_runs(store, 3)
        store.save_hyperparams(run_ids[0], {"optim": {"betas": [0.9, 0.99]}, "name": "ü"})
        kept = store.listing_json()
        shown = [store.get_run(run_id).to_dict() for run_id in run_ids]
        with store.engine.begin() as connection:  # back through 0004's and 0002's columns
            command.downgrade(alembic_config(connection), "0001")
        columns = {column["name"] for column in inspect(store.engine).get_columns("runs")}
        assert "hyperparams_json" not in columns
    with _opened(url) as upgraded:
        upgraded.upgrade()
        copies = _copies(upgraded)
        assert len(copies) == 3 and all(None not in pair for pair in copies.values())
        assert upgraded.listing_json() == kept
        # nothing else was lost on the way down (SQLite's table rebuilds cascade deletes)
        assert [upgraded.get_run(run_id).to_dict() for run_id in run_ids] == shown


def test_a_hyperparameter_another_program_stored_as_non_json_never_stops_the_upgrade(
    new_db_url: Callable[[], str],
) -> None:
    url = new_db_url()
    with _opened(url) as store:
        garbled, intact = fill_runs(store, 2)
        with store.engine.begin() as connection:
            command.downgrade(alembic_config(connection), "0003")
            connection.execute(
                text(
                    "UPDATE run_configurations SET value = 'lr=0.1' "
                    "WHERE run_pk = (SELECT id FROM runs WHERE run_id = :run_id)"
                ),
                {"run_id": garbled},
            )
    with _opened(url) as upgraded:
        upgraded.upgrade()
        copies = _copies(upgraded)
        assert copies[garbled][0] is None  # read from its table, as before the revision
        assert copies[intact][0] == '{"lr": 0.1, "model.depth": 1}'


@contextmanager
def _opened(url: str) -> Iterator[Store]:
    store = Store(url)
    try:
        yield store
    finally:
        store.dispose()


def _copies(store: Store) -> dict[str, tuple[str | None, str | None]]:
    """Each run's (hyperparameters, final stats) listing copies."""
    with store.session(write=False) as session:
        query = select(Run.run_id, Run.hyperparams_json, Run.final_stats_json)
        return {run_id: (params, stats) for run_id, params, stats in session.execute(query)}
