"""A ClientApp whose partition 1 raises while training in round 2 (copied into a test app)."""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from trainer.federated import client_app as base

FAILING_PARTITION = 1
FAILING_ROUND = 2

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    partition_id, _ = base.partition_of(context)
    if partition_id == FAILING_PARTITION and base.server_round(msg) == FAILING_ROUND:
        raise RuntimeError("injected client failure in round 2")
    return base.train(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return base.evaluate_global(msg, context)
