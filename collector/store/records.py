"""Frozen snapshots the store returns: plain values, detached from any session."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _iso(v) if isinstance(v, datetime) else v for k, v in data.items()}


@dataclass(frozen=True)
class MetricRecord:
    name: str
    value: float
    step: int
    dataset_type: str
    context: str
    client_id: str | None
    round_number: int | None
    recorded_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class RoundRecord:
    round_number: int
    status: str
    started_at: datetime | None
    ended_at: datetime | None
    num_clients: int | None
    server_metrics: dict[str, Any] | None
    aggregated_client_metrics: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class ServerEvaluationRecord:
    round_number: int
    loss: float | None
    accuracy: float | None
    precision: float | None
    recall: float | None
    f1: float | None
    auroc: float | None
    cm_tp: float | None
    cm_tn: float | None
    cm_fp: float | None
    cm_fn: float | None
    metrics: dict[str, Any] | None
    recorded_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class ArtifactRecord:
    kind: str
    path: str
    step: int | None
    epoch: int | None
    metric_name: str | None
    metric_value: float | None
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class RunListing:
    """One run as ``runs list`` shows it: its columns, hyperparameters and final stats."""

    run_id: str
    experiment: str
    mode: str
    status: str
    start_time: datetime
    end_time: datetime | None
    heartbeat_at: datetime
    host: str | None
    source_path: str | None
    hyperparams: dict[str, Any] = field(default_factory=dict)
    final_stats: dict[str, float] = field(default_factory=dict)

    @property
    def duration_s(self) -> float | None:
        if self.end_time is None:
            return None
        return (self.end_time - self.start_time).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.own_columns(),
            "hyperparams": dict(self.hyperparams),
            "final_stats": dict(self.final_stats),
        }

    def own_columns(self) -> dict[str, Any]:
        """``to_dict()`` without the details (hyperparameters, final stats), which follow."""
        return listing_columns(
            self.run_id,
            self.experiment,
            self.mode,
            self.status,
            _iso(self.start_time),
            _iso(self.end_time),
            _iso(self.heartbeat_at),
            self.duration_s,
            self.host,
            self.source_path,
        )


def listing_columns(
    run_id: str,
    experiment: str,
    mode: str,
    status: str,
    start_time: str | None,
    end_time: str | None,
    heartbeat_at: str | None,
    duration_s: float | None,
    host: str | None,
    source_path: str | None,
) -> dict[str, Any]:
    """A listed run's own columns as JSON values (moments as ISO text), in the order
    ``runs list --json`` prints them."""
    return {
        "run_id": run_id,
        "experiment": experiment,
        "mode": mode,
        "status": status,
        "start_time": start_time,
        "end_time": end_time,
        "heartbeat_at": heartbeat_at,
        "duration_s": duration_s,
        "host": host,
        "source_path": source_path,
    }


@dataclass(frozen=True)
class RunSummary(RunListing):
    """One run as it was when read. ``metrics`` is empty unless asked for."""

    clients: tuple[str, ...] = ()
    rounds: tuple[RoundRecord, ...] = ()
    artifacts: tuple[ArtifactRecord, ...] = ()
    metrics: tuple[MetricRecord, ...] = ()
    client_partitions: dict[str, str] = field(default_factory=dict)
    """Federated: client id -> its node config ``partition-id``, for clients that sent one."""

    def to_dict(self, *, with_metrics: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            **super().to_dict(),
            "clients": list(self.clients),
            "client_partitions": dict(self.client_partitions),
            "rounds": [r.to_dict() for r in self.rounds],
            "artifacts": [a.to_dict() for a in self.artifacts],
        }
        if with_metrics:
            data["metrics"] = [m.to_dict() for m in self.metrics]
        return data
