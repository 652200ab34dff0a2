"""session_scope commits, rolls back on error, and always closes (real SQLite engine)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from collector.store import session_scope
from collector.store.models import Base, Run, utc_now


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'scope.db'}")
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


def _run(run_id: str) -> Run:
    now = utc_now()
    return Run(
        run_id=run_id,
        experiment_name="e",
        training_mode="centralized",
        status="in_progress",
        start_time=now,
        heartbeat_at=now,
    )


def _count(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.scalar(select(func.count()).select_from(Run)) or 0)


def test_commits_on_success_and_closes(engine: Engine) -> None:
    with session_scope(sessionmaker(bind=engine)) as session:
        session.add(_run("a"))
    assert _count(engine) == 1
    assert not session.in_transaction()
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_rolls_back_on_error_reraises_and_closes(engine: Engine) -> None:
    with (
        pytest.raises(RuntimeError, match="boom"),
        session_scope(sessionmaker(bind=engine)) as session,
    ):
        session.add(_run("b"))
        session.flush()  # the row reached the database inside the transaction
        raise RuntimeError("boom")
    assert _count(engine) == 0
    assert not session.in_transaction()
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_database_errors_roll_back_earlier_work(engine: Engine) -> None:
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError), session_scope(sessionmaker(bind=engine)) as session:
        session.add(_run("dup"))
        session.flush()
        session.add(_run("dup"))
        session.flush()
    assert _count(engine) == 0
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
