"""The ClientApp: local Lightning training and evaluation on this client's IID share.

A client learns its share from its node config (``partition-id`` / ``num-partitions``:
the simulation engine sets them, a SuperNode gets them with ``--node-config``). When the
server runs runwatch, training carries the runwatch callbacks tagged with this client and
round (points go to this machine's spool and InfluxDB), and the reply carries the epoch
history for the server to persist. The client never opens the relational database.
"""

from __future__ import annotations

from flwr.app import Context, Message, MetricRecord, MetricRecordValues, RecordDict
from flwr.clientapp import ClientApp

from collector.flower import ClientTelemetry
from trainer.federated.config import FederatedConfig
from trainer.federated.data import ClientData, client_data
from trainer.federated.task import (
    build_model,
    evaluate,
    load_arrays,
    model_arrays,
    quiet_lightning,
    train_locally,
)

app = ClientApp()

NUM_EXAMPLES_KEY = "num-examples"  # FedAvg's default weighting key
# The last epoch's training metrics a train reply carries (FedAvg averages them).
TRAIN_REPLY_METRICS = ("train_loss", "train_acc", "train_recall", "train_f1")


def partition_of(context: Context) -> tuple[int, int]:
    config = context.node_config
    return int(str(config.get("partition-id", 0))), int(str(config.get("num-partitions", 1)))


def local_data(context: Context, config: FederatedConfig) -> ClientData:
    partition_id, num_partitions = partition_of(context)
    return client_data(partition_id, num_partitions, config.seed)


def server_round(msg: Message) -> int:
    config = msg.content.config_records.get("config")
    return int(str(config.get("server-round", 0))) if config is not None else 0


@app.train()
def train(msg: Message, context: Context) -> Message:
    quiet_lightning()
    config = FederatedConfig.from_run_config(context.run_config)
    data = local_data(context, config)
    model = build_model(data.num_features, config)
    load_arrays(model, msg.content.array_records["arrays"])
    partition_id, _ = partition_of(context)
    seed = config.seed + 1000 * server_round(msg) + partition_id
    telemetry = ClientTelemetry.for_message(msg, context) if config.telemetry else None
    if telemetry is None:
        metrics = train_locally(model, data, config, seed=seed)
    else:
        with telemetry:
            metrics = train_locally(
                model,
                data,
                config,
                seed=seed,
                logger=telemetry.logger,
                callbacks=telemetry.callbacks,
            )
    reply: dict[str, MetricRecordValues] = {
        k: metrics[k] for k in TRAIN_REPLY_METRICS if k in metrics
    }
    reply[NUM_EXAMPLES_KEY] = len(data.train)
    content = RecordDict({"arrays": model_arrays(model), "metrics": MetricRecord(reply)})
    if telemetry is not None:
        telemetry.attach_report(content)
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_global(msg: Message, context: Context) -> Message:
    """The global model on this client's validation share (``val_*`` and confusion counts)."""
    quiet_lightning()
    config = FederatedConfig.from_run_config(context.run_config)
    data = local_data(context, config)
    model = build_model(data.num_features, config)
    load_arrays(model, msg.content.array_records["arrays"])
    metrics: dict[str, MetricRecordValues] = dict(
        evaluate(model, data.val_loader(config.batch_size))
    )
    metrics[NUM_EXAMPLES_KEY] = len(data.val)
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
