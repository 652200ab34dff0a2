"""Listing runs with everything attached costs the same number of statements for any N."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import event

from collector.store import Store


def _fill(store: Store, runs: int) -> None:
    for number in range(runs):
        run_id = store.create_run(
            f"exp-{number}", "federated", hyperparams={"lr": 0.1, "n": number}
        )
        store.persist_epoch_metrics(
            run_id,
            [{"epoch": e, "loss": 1.0 / (e + 1)} for e in range(3)],
            client_id=f"c{number % 3}",
            round_number=1,
        )
        store.record_round(run_id, 1, aggregated_metrics={"val_acc": 0.5})
        store.add_artifact(run_id, f"/ckpt/{number}.ckpt")
        store.complete_run(run_id)


def _statements_to_list(store: Store, *, with_metrics: bool) -> tuple[int, int]:
    store.upgrade()
    statements: list[str] = []
    listener = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(store.engine, "before_cursor_execute", listener)
    try:
        summaries = store.list_runs(with_metrics=with_metrics)
    finally:
        event.remove(store.engine, "before_cursor_execute", listener)
    if with_metrics:
        assert all(
            len(s.metrics) == 4 and s.clients and s.rounds and s.artifacts for s in summaries
        )
        assert all(s.metrics[0].client_id is not None for s in summaries)
    return len(summaries), len([s for s in statements if s.lstrip().upper().startswith("SELECT")])


@pytest.mark.parametrize("with_metrics", [True, False])
def test_listing_n_runs_issues_a_constant_number_of_statements(
    new_db_url: Callable[[], str], with_metrics: bool
) -> None:
    counts = {}
    for runs in (1, 10, 50):
        store = Store(new_db_url())
        try:
            _fill(store, runs)
            listed, selects = _statements_to_list(store, with_metrics=with_metrics)
        finally:
            store.dispose()
        assert listed == runs
        counts[runs] = selects
    assert counts[1] == counts[10] == counts[50], counts
    assert counts[1] <= 6
