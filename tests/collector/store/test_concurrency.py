"""Several real processes write to one fresh database at the same moment.

SQLite must never answer "database is locked": WAL, the busy timeout and BEGIN IMMEDIATE make
every writer wait its turn. The race over the first schema upgrade is part of the test.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable

import pytest
from sqlalchemy import func, select

from collector.store import Store
from collector.store.models import Run, RunMetric
from tests.collector.store._writers import EPOCHS, METRICS, RUNS_PER_WRITER, write_runs

WRITERS = 4


@pytest.mark.slow
def test_four_processes_write_at_once_without_lock_errors(new_db_url: Callable[[], str]) -> None:
    url = new_db_url()
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(WRITERS)
    results = context.Queue()
    processes = [
        context.Process(target=write_runs, args=(url, writer, barrier, results))
        for writer in range(WRITERS)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=240) for _ in processes]
    for process in processes:
        process.join(30)
        assert process.exitcode == 0

    failures = [detail for _, status, detail in outcomes if status != "ok"]
    assert failures == [], "\n".join(failures)
    store = Store(url)
    try:
        with store.session(write=False) as session:
            assert (
                session.scalar(select(func.count()).select_from(Run)) == WRITERS * RUNS_PER_WRITER
            )
            metric_rows = session.scalar(
                select(func.count())
                .select_from(RunMetric)
                .where(RunMetric.context != "final_epoch")
            )
        federated = RUNS_PER_WRITER // 2
        per_writer = RUNS_PER_WRITER * EPOCHS * len(METRICS) + federated
        assert metric_rows == WRITERS * per_writer
        assert sum(rows for _, _, rows in outcomes) == WRITERS * per_writer
        assert {run.status for run in store.list_runs()} == {"completed"}
    finally:
        store.dispose()
