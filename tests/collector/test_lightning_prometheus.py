"""A real Prometheus scrapes a training process: epoch, steps and loss advance in its API."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest

from collector.config import load_settings
from collector.lightning import runwatch_telemetry
from tests.servers.prometheus import PrometheusServer
from trainer.data import BreastCancerDataModule
from trainer.model import MLPClassifier

EPOCHS = 16
STEP_SLEEP_S = 0.04  # ~11 steps an epoch: about 7 s of training, several 1 s scrapes


class SlowSteps(pl.Callback):
    """Stretches training so that a 1 s scrape interval sees it move."""

    def __init__(self) -> None:
        self.metrics_text: bytes = b""

    def on_train_batch_end(self, *args: Any) -> None:
        time.sleep(STEP_SLEEP_S)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 2:
            port = load_settings(dotenv=None).prometheus_port
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
                self.metrics_text = resp.read()


def series_values(server: PrometheusServer, query: str, start: float, end: float) -> list[float]:
    result = server.query_range(query, start, end, step="1s")
    assert len(result) == 1, result
    return [float(v) for _, v in result[0]["values"]]


@pytest.mark.integration
@pytest.mark.slow
def test_prometheus_scrapes_a_training_run(
    prometheus_scraper: PrometheusServer,
    runwatch_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    promtool: str,
) -> None:
    assert prometheus_scraper.exporter_port is not None
    monkeypatch.setenv("RUNWATCH_PROMETHEUS_PORT", str(prometheus_scraper.exporter_port))
    telemetry = runwatch_telemetry("scraped", settings=load_settings(dotenv=None))
    slow = SlowSteps()
    pl.seed_everything(11, verbose=False)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=EPOCHS,
        logger=telemetry.logger,
        callbacks=[*telemetry.callbacks, slow],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    data = BreastCancerDataModule()
    started = time.time()
    trainer.fit(MLPClassifier(num_features=30), datamodule=data)
    ended = time.time()
    run = f'run_id="{telemetry.run_id}"'

    # every sample of every epoch counted once, the last batch of each (a short one) too
    train_samples = len(data.train_dataloader().dataset)
    assert train_samples % data.batch_size  # the epoch's last batch is short
    exporter = telemetry.session.exporter
    assert exporter is not None
    list(exporter.steps.collect())  # a scrape folds the steps that ended since the last one
    assert exporter.steps.samples == EPOCHS * train_samples

    # the live /metrics page passes promtool's lint
    assert slow.metrics_text
    check = subprocess.run(
        [promtool, "check", "metrics"], input=slow.metrics_text, capture_output=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr

    # Prometheus has stored the series while training ran
    epochs = series_values(prometheus_scraper, f"training_epoch{{{run}}}", started, ended)
    steps = series_values(
        prometheus_scraper, f"training_optimizer_steps_total{{{run}}}", started, ended
    )
    losses = series_values(prometheus_scraper, f"training_train_loss{{{run}}}", started, ended)
    assert epochs == sorted(epochs) and epochs[-1] - epochs[0] >= 2, epochs
    assert steps == sorted(steps) and len(set(steps)) >= 3, steps
    assert steps[-1] - steps[0] >= 22, steps
    assert len(set(losses)) >= 3, losses
    assert min(losses[-3:]) < losses[0], losses

    # (evaluated at the end of training: the exporter stops with the run, its series go stale)
    info = prometheus_scraper.query(
        f'last_over_time(training_run_info{{{run},experiment="scraped"}}[1m])', ended
    )
    assert info and info[0]["metric"]["mode"] == "centralized"
    rate = prometheus_scraper.query(
        f"rate(training_step_duration_seconds_count{{{run}}}[1m])", ended
    )
    assert rate and float(rate[0]["value"][1]) > 0
    stamps = series_values(
        prometheus_scraper, f"training_last_step_timestamp_seconds{{{run}}}", started, ended
    )
    assert stamps[-1] > stamps[0] >= started - 1
