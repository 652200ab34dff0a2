"""A real, tiny torch training that diverges, exporting its gauges like a runwatch trainer.

Started as a process by test_alerting_e2e.py: ``python diverging_trainer.py RUN_ID PORT
TRIGGER``. Linear regression with SGD trains normally until the file TRIGGER exists, then the
learning rate jumps far beyond stability: the loss overflows to inf and then NaN, as a real
divergence does. Points reach the exporter as the recorder hands them over (docs/design.md: a
non-finite value becomes ``<field>_nonfinite=1.0``). Runs until killed.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional

from collector.prometheus import PrometheusExporter

DIVERGENT_LR = 1e6
DEADLINE_S = 300.0


def main(run_id: str, port: int, trigger: Path) -> int:
    exporter = PrometheusExporter(run_id, experiment="alert-e2e")
    if not exporter.start_http_server("127.0.0.1", port):
        return 1
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    features = torch.randn(256, 8)
    targets = features.sum(dim=1, keepdim=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    started = time.monotonic()
    step = 0
    while time.monotonic() - started < DEADLINE_S:
        if trigger.exists():
            for group in optimizer.param_groups:
                group["lr"] = DIVERGENT_LR
        optimizer.zero_grad()
        loss = functional.mse_loss(model(features), targets)
        loss.backward()
        optimizer.step()
        step += 1
        value = loss.item()
        fields = {"loss": value} if math.isfinite(value) else {"loss_nonfinite": 1.0}
        exporter.observe("batch", {**fields, "step": float(step)}, {})
        exporter.step_completed(step, samples=features.shape[0])
        time.sleep(0.05)
    exporter.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])))
