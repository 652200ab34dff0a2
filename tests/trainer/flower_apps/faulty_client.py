"""A ClientApp whose partition 1 raises while training in round 2 (copied into a test app).

It names its evaluation metrics as Flower's own examples do (``eval_loss``, ``eval_acc``,
``eval_cm_tp``...), not as runwatch's trainer does (``val_*``): runwatch stores both under
the same federated names, so every query of this run reads ``val_*`` (client_round points,
aggregated rows) and ``loss``/``accuracy`` (round points).
"""

from __future__ import annotations

from flwr.app import Context, Message, MetricRecord, RecordDict
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
    reply = base.evaluate_global(msg, context)
    metrics = reply.content.metric_records["metrics"]
    flower_named = MetricRecord(
        {
            (f"eval_{name.removeprefix('val_')}" if name.startswith("val_") else name): value
            for name, value in metrics.items()
        }
    )
    return Message(content=RecordDict({"metrics": flower_named}), reply_to=msg)
