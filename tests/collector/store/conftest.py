"""The store suite runs against SQLite and against a real PostgreSQL server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from collector.store import Store

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def new_db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[], str]:
    """A factory of URLs of new, empty databases on the parametrized backend."""
    if backend == "postgresql":
        factory: Callable[[], str] = request.getfixturevalue("fresh_postgres_url")
        return factory
    counter = iter(range(1, 1000))
    return lambda: f"sqlite:///{tmp_path / f'db{next(counter)}' / 'runs.db'}"


@pytest.fixture
def store(new_db_url: Callable[[], str]) -> Iterator[Store]:
    store = Store(new_db_url())
    yield store
    store.dispose()
