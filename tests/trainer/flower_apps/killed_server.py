"""A ServerApp that is SIGKILLed as round 3 begins, after rounds 1 and 2 have finished."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from typing import Any

from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from trainer.federated.config import FederatedConfig
from trainer.federated.server_app import serve_federated

KILLED_IN_ROUND = 3

app = ServerApp()


class KilledInRound3(FedAvg):
    def configure_train(self, server_round: int, *args: Any) -> Iterable[Message]:
        if server_round == KILLED_IN_ROUND:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().configure_train(server_round, *args)


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = FederatedConfig.from_run_config(context.run_config)
    strategy = KilledInRound3(
        min_train_nodes=config.num_clients,
        min_evaluate_nodes=config.num_clients,
        min_available_nodes=config.num_clients,
    )
    serve_federated(grid, config, strategy=strategy)
