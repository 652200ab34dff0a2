"""Bulk persistence of epoch metrics into SQLite through ``Store.persist_epoch_metrics``.

Prints the median rows/s over several repeats (target: at least 100,000 rows/s on a 2-core
machine). Each repeat writes 100,000 rows (10,000 epochs x 10 metrics) into a new run of one
WAL-mode database file, the way a long training run hands its history over at the end.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from collector.store import Store

METRIC_NAMES = (
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_precision",
    "val_recall",
    "val_f1",
    "val_auroc",
    "val_cm_tp",
    "lr",
)


def epochs(count: int) -> list[dict[str, object]]:
    return [
        {"epoch": e, **{name: (e + i) / (count + 10.0) for i, name in enumerate(METRIC_NAMES)}}
        for e in range(count)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    history = epochs(args.rows // len(METRIC_NAMES))
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        store = Store(f"sqlite:///{Path(tmp) / 'runs.db'}")
        store.upgrade()
        rates = []
        for _ in range(args.repeats):
            run_id = store.create_run("bench")
            started = time.perf_counter()
            written = store.persist_epoch_metrics(run_id, history)
            elapsed = time.perf_counter() - started
            rates.append(written / elapsed)
        store.dispose()
    print(f"persist_epoch_metrics, SQLite file, {written:,} rows per call, {args.repeats} repeats")
    print(
        f"  median {statistics.median(rates):,.0f} rows/s  (min {min(rates):,.0f}, max {max(rates):,.0f})"
    )
    print("  target >= 100,000 rows/s")


if __name__ == "__main__":
    main()
