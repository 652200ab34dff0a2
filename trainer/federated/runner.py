"""One federated training run from start to finish: runtime up, ``flwr run``, runtime down.

The ServerApp and ClientApps run in Flower's processes, so the settings reach them through
their environment (explicitly, from the ``Settings`` given here, not from this process's
environment or ``.env``). The run id is chosen here and passed in the run config, so the
caller can look the run up afterwards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from collector.config import Settings
from collector.ids import new_run_id
from trainer.federated.config import DEFAULT_TIMEOUT_S, FederatedConfig, write_run_config
from trainer.federated.engines import APP_DIR, FlowerRunResult, FlowerRuntime

log = logging.getLogger("trainer.federated")


@dataclass(frozen=True)
class FederatedResult:
    run_id: str
    engine: str
    status: str
    """The run's status in the store (``completed``, ``failed``, ``crashed`` if the server
    died, ``unknown`` when the store cannot be read)."""
    flower: FlowerRunResult
    rounds_completed: int
    server_metrics: dict[str, float]
    """The server's evaluation of the final global model (``test_*``)."""
    workdir: Path

    @property
    def ok(self) -> bool:
        return self.flower.ok and self.status == "completed"


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives Flower's processes these settings (secrets included: the
    environment is how they travel; they are never logged)."""
    env = {
        "RUNWATCH_HOME": str(settings.home),
        "RUNWATCH_DB_URL": settings.db_url,
        "INFLUXDB_V2_BUCKET": settings.influx_bucket,
        "RUNWATCH_PROMETHEUS_ADDR": settings.prometheus_addr,
        "RUNWATCH_PROMETHEUS_PORT": str(settings.prometheus_port),
        "INFLUXDB_V2_URL": settings.influx_url or "",
        "INFLUXDB_V2_ORG": settings.influx_org or "",
        "INFLUXDB_V2_TOKEN": settings.influx_token or "",
    }
    return env


def run_federated(
    config: FederatedConfig,
    settings: Settings,
    *,
    engine: str = "simulation",
    workdir: Path | None = None,
    app_dir: Path = APP_DIR,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> FederatedResult:
    """Train ``config`` with ``engine``; every Flower process is stopped before returning."""
    if not config.run_id:
        config = replace(config, run_id=new_run_id())
    workdir = workdir or settings.home / "federated" / config.run_id
    workdir.mkdir(parents=True, exist_ok=True)
    run_config = write_run_config(config, workdir / "run-config.toml")
    runtime = FlowerRuntime(
        workdir, engine=engine, num_clients=config.num_clients, env=settings_env(settings)
    )
    with runtime:
        flower = runtime.run_app(run_config, app_dir=app_dir, timeout_s=timeout_s)
    return _result(config, settings, engine, flower, workdir)


def _result(
    config: FederatedConfig,
    settings: Settings,
    engine: str,
    flower: FlowerRunResult,
    workdir: Path,
) -> FederatedResult:
    status, rounds, server_metrics = "unknown", 0, {}
    if not config.telemetry:  # nothing was recorded
        return FederatedResult(config.run_id, engine, status, flower, 0, {}, workdir)
    try:
        from collector.store import Store

        store = Store.from_settings(settings)
        try:
            # Every Flower process is gone now: a run still in progress lost its ServerApp.
            store.mark_crashed(config.run_id)
            summary = store.get_run(config.run_id)
            status = summary.status
            finished = [r for r in summary.rounds if r.status == "completed"]
            rounds = len(finished)
            if finished and finished[-1].server_metrics:
                server_metrics = {
                    k: float(v)
                    for k, v in finished[-1].server_metrics.items()
                    if isinstance(v, int | float)
                }
        finally:
            store.dispose()
    except Exception as exc:  # the run happened; only the summary is missing
        log.warning("runwatch: cannot read run %s from the store: %s", config.run_id, exc)
    return FederatedResult(
        run_id=config.run_id,
        engine=engine,
        status=status,
        flower=flower,
        rounds_completed=rounds,
        server_metrics=server_metrics,
        workdir=workdir,
    )
