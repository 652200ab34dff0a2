"""Runs to list: shared by the tests of ``Store.listing`` and of its sqlite3 reader."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from collector.store import Store

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def fill_runs(store: Store, runs: int) -> list[str]:
    """Run n starts at T0 + n hours in experiment exp-(n % 2), federated when n % 3 == 0,
    with two hyperparameters, final stats, an artifact; completed half an hour later."""
    run_ids = []
    for number in range(runs):
        run_id = store.create_run(
            f"exp-{number % 2}",
            "federated" if number % 3 == 0 else "centralized",
            hyperparams={"lr": 0.1 * number, "model": {"depth": number}},
            started_at=T0 + timedelta(hours=number),
        )
        store.persist_epoch_metrics(
            run_id,
            [{"epoch": 0, "val_cm_tp": 40, "val_cm_tn": 45, "val_cm_fp": 10, "val_cm_fn": 5}],
            client_id="c1" if number % 3 == 0 else None,
            round_number=1 if number % 3 == 0 else None,
        )
        store.add_artifact(run_id, f"/ckpt/{number}.ckpt")
        store.complete_run(run_id, ended_at=T0 + timedelta(hours=number, minutes=30))
        run_ids.append(run_id)
    return run_ids


FORGET_COPIES = "UPDATE runs SET hyperparams_json = NULL, final_stats_json = NULL"
"""Every run's listing copies gone, as on rows another program wrote: the listing reads the
details from their tables."""


def forget_copies(store: Store) -> None:
    with store.session() as session:
        session.execute(text(FORGET_COPIES))
