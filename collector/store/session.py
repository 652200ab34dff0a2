"""``session_scope``: commit on success, roll back on any error, always close."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session


@contextmanager
def session_scope(make_session: Callable[[], Session]) -> Iterator[Session]:
    """A session from ``make_session`` (a ``sessionmaker``) for one unit of work."""
    session = make_session()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
