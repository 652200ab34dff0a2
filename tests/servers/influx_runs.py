"""Real runs in a real InfluxDB 2, made by runwatch itself, for the tests of every Flux query.

One bucket of the session's ``influxdb2`` receives, through the product's own trainers and
shipper (write-only token), and beside them one SQLite store:

- ``healthy``: the reference MLP, every step logged, gradient norms, test metrics;
- ``nonfinite``: its training loss turns NaN from the second epoch;
- ``diverging``: its val_loss rises at every epoch end;
- ``federated``: a Flower simulation, 2 clients x 3 rounds, one client failing in round 2.

Fixture ``influx_runs`` (session): the :class:`LoadedRuns`. Building it trains four runs
(about a minute, most of it Flower's simulation start-up).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from collector.backlog import ship_backlog
from collector.config import Settings
from collector.store import Store
from tests.servers.influxdb2 import InfluxDB2
from tests.trainer.flower_apps import app_dir_with

BUCKET = "loaded-runs"
EPOCHS_HEALTHY = 4
EPOCHS_NONFINITE = 3
EPOCHS_DIVERGING = 5
ROUNDS = 3
CLIENTS = 2
FAILING_ROUND = 2


@dataclass(frozen=True)
class LoadedRuns:
    influxdb2: InfluxDB2
    bucket: str
    settings: Settings
    """Writer settings: the bucket with the write-only token, the runs' SQLite store."""
    healthy: str
    nonfinite: str
    diverging: str
    federated: str
    start: datetime
    """Before the first point of any run (a dashboard's time range starts here)."""
    stop: datetime

    @property
    def reader(self) -> Settings:
        """The same settings with the read-only token (what ``compare`` runs with)."""
        return self.influxdb2.reader_settings(self.settings)

    @property
    def centralized(self) -> tuple[str, str, str]:
        return (self.healthy, self.nonfinite, self.diverging)

    @property
    def all(self) -> tuple[str, ...]:
        return (*self.centralized, self.federated)

    def store(self) -> Store:
        return Store.from_settings(self.settings)


def _train_centralized(settings: Settings, experiment: str, **config: object) -> str:
    from trainer.centralized import CentralizedConfig, run_centralized

    result = run_centralized(
        CentralizedConfig(
            experiment=experiment,
            log_every_n_steps=1,
            batch_every_n=1,
            gradient_every_n=2,
            accelerator="cpu",
            **config,  # type: ignore[arg-type]
        ),
        settings,
    )
    assert result.status == "completed", result
    return result.run_id


def _train_federated(settings: Settings, workdir: Path) -> str:
    workdir.mkdir(parents=True)
    from trainer.federated.config import FederatedConfig
    from trainer.federated.runner import run_federated

    result = run_federated(
        FederatedConfig(num_rounds=ROUNDS, num_clients=CLIENTS, experiment="influx-federated"),
        settings,
        workdir=workdir / "flower",
        app_dir=app_dir_with(workdir, "faulty_client", "clientapp"),
        timeout_s=500,
    )
    assert result.ok, result
    return result.run_id


@pytest.fixture(scope="session")
def influx_runs(
    influxdb2: InfluxDB2, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LoadedRuns]:
    home = tmp_path_factory.mktemp("influx-runs")
    influxdb2.create_bucket(BUCKET)
    settings = influxdb2.settings(home, BUCKET)
    start = datetime.now(UTC) - timedelta(minutes=5)
    healthy = _train_centralized(settings, "influx-healthy", epochs=EPOCHS_HEALTHY)
    nonfinite = _train_centralized(
        settings,
        "influx-nonfinite",
        epochs=EPOCHS_NONFINITE,
        model="tests.servers.run_models:NonFiniteLossMLP",
    )
    diverging = _train_centralized(
        settings,
        "influx-diverging",
        epochs=EPOCHS_DIVERGING,
        model="tests.servers.run_models:DivergingValLossMLP",
    )
    federated = _train_federated(settings, home / "federated-work")
    # Whatever a run's own shipper left (it normally leaves nothing) goes now.
    backlog = ship_backlog(settings, timeout_s=120)
    assert backlog.error is None and backlog.remaining_bytes == 0, backlog
    yield LoadedRuns(
        influxdb2=influxdb2,
        bucket=BUCKET,
        settings=settings,
        healthy=healthy,
        nonfinite=nonfinite,
        diverging=diverging,
        federated=federated,
        start=start,
        stop=datetime.now(UTC) + timedelta(minutes=1),
    )
