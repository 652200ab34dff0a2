"""Flower adapter: a strategy wrapper for the ServerApp, telemetry helpers for ClientApps.

Server side (owns the relational store and the ``federated_*`` Prometheus gauges)::

    from collector.flower import FederatedRun

    with FederatedRun("fedavg", num_rounds=3) as run:
        run.wrap(FedAvg(...)).start(grid, initial_arrays, num_rounds=3, evaluate_fn=...)

Client side (Lightning training with runwatch's callbacks, tagged client_id and round)::

    from collector.flower import ClientTelemetry

    telemetry = ClientTelemetry.for_message(msg, context)

This module imports flwr; ``ClientTelemetry`` also imports lightning (loaded on first use).
The collector core imports neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from collector.flower.protocol import (
    RECORD_NAME,
    ClientReport,
    RunNote,
    attach_client_report,
    read_client_report,
    read_run_note,
)
from collector.flower.server import FederatedRun, round_fields
from collector.flower.wrapping import RunwatchStrategy
from collector.schema import evaluation_field

if TYPE_CHECKING:
    from collector.flower.client import ClientTelemetry

__all__ = [
    "RECORD_NAME",
    "ClientReport",
    "ClientTelemetry",
    "FederatedRun",
    "RunNote",
    "RunwatchStrategy",
    "attach_client_report",
    "evaluation_field",
    "read_client_report",
    "read_run_note",
    "round_fields",
]


def __getattr__(name: str) -> Any:
    if name == "ClientTelemetry":
        from collector.flower import client

        return getattr(client, name)
    raise AttributeError(f"module 'collector.flower' has no attribute {name!r}")
