"""The ServerApp: FedAvg over the clients, central evaluation on the held-out test split.

With telemetry on (the default) the strategy is wrapped by runwatch's ``RunwatchStrategy``
and this process owns the run's relational record and Prometheus gauges; with
``telemetry = false`` the same training runs with the bare strategy (benchmark baseline).
"""

from __future__ import annotations

import logging

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, Strategy

from collector.config import Settings
from collector.flower import FederatedRun
from collector.flower.server import EvaluateFn
from trainer.federated.config import FederatedConfig
from trainer.federated.data import central_test_loader, dataset_splits
from trainer.federated.task import build_model, evaluate, load_arrays, model_arrays, quiet_lightning

log = logging.getLogger("trainer.federated")

app = ServerApp()

# Prefix of the server's central-evaluation metrics in the MetricRecord it returns.
CENTRAL_PREFIX = "test_"


def make_strategy(config: FederatedConfig) -> FedAvg:
    """Every client trains and evaluates in every round."""
    return FedAvg(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=config.num_clients,
        min_evaluate_nodes=config.num_clients,
        min_available_nodes=config.num_clients,
    )


def central_evaluation(config: FederatedConfig) -> EvaluateFn:
    """``evaluate_fn`` for ``Strategy.start``: the global model on the test split."""
    loader = central_test_loader(config.batch_size, config.seed)
    model = build_model(dataset_splits(config.seed).num_features, config)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        load_arrays(model, arrays)
        metrics = evaluate(model, loader, stage="test")
        return MetricRecord({k: v for k, v in metrics.items() if k.startswith(CENTRAL_PREFIX)})

    return evaluate_fn


def serve_federated(
    grid: Grid,
    config: FederatedConfig,
    strategy: Strategy | None = None,
    *,
    settings: Settings | None = None,
    context: Context | None = None,
) -> None:
    """Run the rounds; ``strategy`` replaces FedAvg (it is wrapped the same way).
    Settings: ``settings``, else the environment with ``context``'s run config keys."""
    quiet_lightning()
    initial = model_arrays(build_model(dataset_splits(config.seed).num_features, config))
    if strategy is None:
        strategy = make_strategy(config)
    evaluate_fn = central_evaluation(config)
    if not config.telemetry:
        strategy.start(
            grid,
            initial,
            num_rounds=config.num_rounds,
            timeout=config.round_timeout_s,
            evaluate_fn=evaluate_fn,
        )
        return
    run = FederatedRun(
        config.experiment,
        settings=settings,
        context=context,
        run_id=config.run_id or None,
        num_rounds=config.num_rounds,
        hyperparams=config.hyperparams(),
        source_path="sklearn:breast_cancer",
    )
    with run:
        log.info("runwatch: federated run %s", run.run_id)
        run.wrap(strategy).start(
            grid,
            initial,
            num_rounds=config.num_rounds,
            timeout=config.round_timeout_s,
            evaluate_fn=evaluate_fn,
        )


@app.main()
def main(grid: Grid, context: Context) -> None:
    serve_federated(grid, FederatedConfig.from_run_config(context.run_config), context=context)
