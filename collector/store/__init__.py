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
