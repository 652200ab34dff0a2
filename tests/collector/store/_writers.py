"""A writer process for the concurrency test (a module of its own so spawn can import it)."""

from __future__ import annotations

import traceback
from typing import Any

RUNS_PER_WRITER = 15
EPOCHS = 40
METRICS = ("train_loss", "val_loss", "val_acc", "lr", "val_cm_tp")


def write_runs(url: str, writer: int, barrier: Any, results: Any) -> None:
    from collector.store import Store

    try:
        store = Store(url)
        barrier.wait(60)  # everyone starts on the fresh database at once, migration included
        rows = 0
        for number in range(RUNS_PER_WRITER):
            mode = "federated" if number % 2 else "centralized"
            run_id = store.create_run(
                f"writer-{writer}", mode, hyperparams={"writer": writer, "n": number}
            )
            store.heartbeat(run_id)
            epochs = [
                {"epoch": e, **{m: e * 0.01 + writer for m in METRICS}} for e in range(EPOCHS)
            ]
            if mode == "federated":
                rows += store.persist_epoch_metrics(
                    run_id, epochs, client_id=f"c{writer}", round_number=1
                )
                store.record_round(run_id, 1, aggregated_metrics={"val_acc": 0.5}, num_clients=1)
                rows += 1
            else:
                rows += store.persist_epoch_metrics(run_id, epochs)
            store.heartbeat(run_id)
            store.complete_run(run_id)
        store.dispose()
        results.put((writer, "ok", rows))
    except BaseException:
        results.put((writer, "error", traceback.format_exc()))
