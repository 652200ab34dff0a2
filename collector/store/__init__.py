"""Relational run metadata: runs, hyperparameters, metrics, clients, rounds, server
evaluations and artifacts, in SQLite by default or any SQLAlchemy database.

The public surface::

    from collector.store import Store, session_scope

    store = Store.from_settings(settings)          # schema upgraded on first use
    run_id = store.create_run("baseline", hyperparams={"lr": 1e-3})
    store.persist_epoch_metrics(run_id, [{"epoch": 0, "train_loss": 0.7, "val_cm_tp": 40, ...}])
    store.complete_run(run_id)                      # also stores final confusion-matrix stats

Metric values that are not finite real numbers are never stored as numbers and never raise:
see ``collector.store.values`` for the rule (``<name>_nonfinite`` = 1.0 for NaN/Inf).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from collector._lazy import lazy_attributes as _lazy_attributes

if TYPE_CHECKING:
    from collector.store._store import RunExistsError, Store
    from collector.store.engine import DatabaseUnavailableError
    from collector.store.records import (
        ArtifactRecord,
        MetricRecord,
        RoundRecord,
        RunSummary,
        ServerEvaluationRecord,
    )
    from collector.store.session import session_scope
    from collector.store.values import NONFINITE_SUFFIX

# Imported when first used: SQLAlchemy costs half a second, and ``runs list`` on a SQLite
# file reads it with sqlite3 alone (``collector.store.sqlite_listing``).
_LAZY = {
    "NONFINITE_SUFFIX": "collector.store.values",
    "ArtifactRecord": "collector.store.records",
    "DatabaseUnavailableError": "collector.store.engine",
    "MetricRecord": "collector.store.records",
    "RoundRecord": "collector.store.records",
    "RunExistsError": "collector.store._store",
    "RunSummary": "collector.store.records",
    "ServerEvaluationRecord": "collector.store.records",
    "Store": "collector.store._store",
    "session_scope": "collector.store.session",
}

__all__ = [
    "NONFINITE_SUFFIX",
    "ArtifactRecord",
    "DatabaseUnavailableError",
    "MetricRecord",
    "RoundRecord",
    "RunExistsError",
    "RunSummary",
    "ServerEvaluationRecord",
    "Store",
    "session_scope",
]


__getattr__ = _lazy_attributes(__name__, _LAZY)
