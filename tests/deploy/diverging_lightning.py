"""A Lightning training with runwatch's telemetry whose loss turns NaN (or that ends) on demand.

Started as a process by test_alerting_e2e.py: ``python diverging_lightning.py RUN_ID PORT
TRIGGER [nan|finish]``. It trains a linear regression through ``runwatch_telemetry`` (the real
logger, callbacks, recorder and exporter, configured from the environment like any run, with
the exporter on 127.0.0.1:PORT). Once the file TRIGGER exists, the loss is NaN, as in a run
whose weights have blown up (``nan``, the default), or the training stops normally and the
run finishes as completed (``finish``). Runs until killed (or a deadline).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.nn import functional
from torch.utils.data import DataLoader, TensorDataset

from collector.config import load_settings
from collector.lightning import runwatch_telemetry

DEADLINE = "00:00:05:00"  # Lightning's max_time: DD:HH:MM:SS


class DivergingRegression(pl.LightningModule):
    def __init__(self, trigger: Path, action: str) -> None:
        super().__init__()
        self.trigger = trigger
        self.action = action
        self.layer = torch.nn.Linear(8, 1)

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        features, targets = batch
        time.sleep(0.02)  # a few dozen steps a second is plenty, and leaves the CPU to the servers
        loss = functional.mse_loss(self.layer(features), targets)
        if self.trigger.exists():
            if self.action == "finish":
                self.trainer.should_stop = True
            else:
                loss = loss * float("nan")
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def main(run_id: str, port: int, trigger: Path, action: str) -> int:
    environ = dict(os.environ) | {
        "RUNWATCH_PROMETHEUS_ADDR": "127.0.0.1",
        "RUNWATCH_PROMETHEUS_PORT": str(port),
    }
    settings = load_settings(environ, dotenv=None)
    torch.manual_seed(0)
    features = torch.randn(512, 8)
    data = DataLoader(TensorDataset(features, features.sum(dim=1, keepdim=True)), batch_size=32)
    telemetry = runwatch_telemetry(
        "alert-e2e", settings=settings, run_id=run_id, batch_every_n=1, export_files=False
    )
    trainer = pl.Trainer(
        max_epochs=-1,
        max_time=DEADLINE,
        logger=telemetry.logger,
        callbacks=telemetry.callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
        accelerator="cpu",
    )
    try:
        trainer.fit(DivergingRegression(trigger, action), train_dataloaders=data)
    finally:
        telemetry.session.finish("completed")
    time.sleep(60)  # the process outlives its run: what Prometheus sees is the exporter's doing
    return 0


if __name__ == "__main__":
    action = sys.argv[4] if len(sys.argv) > 4 else "nan"
    sys.exit(main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), action))
