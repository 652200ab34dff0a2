"""The five runwatch dashboards. Names come from collector.schema (InfluxDB) and
collector.prometheus (Prometheus); queries from grafana.flux_panels."""

from __future__ import annotations

from collections.abc import Callable

from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.models import dashboard

from collector import prometheus as metrics
from collector import schema
from grafana import datasources, flux_panels
from grafana.flux import FluxAnnotation, equals
from grafana.panels import (
    HALF,
    QUARTER,
    THIRD,
    data_table,
    flux,
    layer_heatmap,
    live_stat,
    promql,
    row,
    run_id_variable,
    time_series,
    trend,
)

TAG = "runwatch"
RATIO = "percentunit"
SECONDS = "s"

LOSSES = (schema.TRAIN_LOSS, schema.VAL_LOSS)
VALIDATION_SCORES = (
    schema.VAL_ACC,
    schema.VAL_PRECISION,
    schema.VAL_RECALL,
    schema.VAL_F1,
    schema.VAL_AUROC,
)


def _dashboard(uid: str, title: str, description: str) -> dashboard_builders.Dashboard:
    return (
        dashboard_builders.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags([TAG])
        .readonly()
        .timezone("browser")
        .tooltip(dashboard.DashboardCursorSync.CROSSHAIR)
        .time("now-24h", "now")
        .refresh("1m")
    )


def _events_annotation() -> dashboard_builders.AnnotationQuery:
    return (
        dashboard_builders.AnnotationQuery()
        .name("Events")
        .datasource(datasources.influxdb())
        .enable(True)
        .icon_color("purple")
        .target(FluxAnnotation(flux_panels.event_annotations()))
    )


# --- 1. Training overview ----------------------------------------------------------------


def training_overview() -> dashboard_builders.Dashboard:
    curve = "Epoch-end values of the selected runs (federated clients' local epochs too)."
    return (
        _dashboard(
            "runwatch-training-overview",
            "runwatch / Training overview",
            "Epoch curves, learning rate, best values and events of the selected runs.",
        )
        .with_variable(run_id_variable(schema.M_EPOCH))
        .annotation(_events_annotation())
        .with_row(row("Epoch curves"))
        .with_panel(time_series("Loss", curve, [flux(flux_panels.series(schema.M_EPOCH, LOSSES))]))
        .with_panel(
            time_series(
                "Accuracy",
                curve,
                [flux(flux_panels.series(schema.M_EPOCH, (schema.VAL_ACC,)))],
                unit=RATIO,
            )
        )
        .with_panel(
            time_series(
                "Precision and recall",
                curve,
                [
                    flux(
                        flux_panels.series(
                            schema.M_EPOCH, (schema.VAL_PRECISION, schema.VAL_RECALL)
                        )
                    )
                ],
                unit=RATIO,
            )
        )
        .with_panel(
            time_series(
                "F1 and AUROC",
                curve,
                [flux(flux_panels.series(schema.M_EPOCH, (schema.VAL_F1, schema.VAL_AUROC)))],
                unit=RATIO,
            )
        )
        .with_panel(
            time_series(
                "Learning rate",
                "Learning rate at each epoch end (log scale).",
                [flux(flux_panels.series(schema.M_EPOCH, (schema.LR,)))],
                log_scale=True,
            )
        )
        .with_panel(
            data_table(
                "Best values",
                "Per run: the lowest loss and the highest validation score reached at an "
                "epoch end (the run's own epochs, not federated clients').",
                flux(flux_panels.best_values(LOSSES, VALIDATION_SCORES)),
                width=HALF,
                decimals=4,
            )
        )
        .with_row(row("Events"))
        .with_panel(
            data_table(
                "Events",
                "Training start and end, early stopping, checkpoints, rounds, client "
                "failures and alerts, newest first (also shown as annotations).",
                flux(flux_panels.events_table()),
            )
        )
    )


# --- 2. Batches and gradients ------------------------------------------------------------


def batches_and_gradients() -> dashboard_builders.Dashboard:
    sampled = "Sampled training batches, averaged per display interval."
    return (
        _dashboard(
            "runwatch-batches-gradients",
            "runwatch / Batches and gradients",
            "Sampled batch metrics, throughput, global and per-layer gradient norms.",
        )
        .with_variable(run_id_variable(schema.M_BATCH, schema.M_GRADIENT))
        .annotation(_events_annotation())
        .with_row(row("Batches"))
        .with_panel(
            time_series(
                "Batch loss",
                sampled,
                [flux(flux_panels.series(schema.M_BATCH, (schema.LOSS,), window="mean"))],
            )
        )
        .with_panel(
            time_series(
                "Batch accuracy",
                sampled,
                [flux(flux_panels.series(schema.M_BATCH, (schema.ACC,), window="mean"))],
                unit=RATIO,
            )
        )
        .with_panel(
            time_series(
                "Batch recall and F1",
                sampled,
                [
                    flux(
                        flux_panels.series(
                            schema.M_BATCH, (schema.RECALL, schema.F1), window="mean"
                        )
                    )
                ],
                unit=RATIO,
            )
        )
        .with_panel(
            time_series(
                "Throughput",
                "Training samples per second, averaged per display interval.",
                [flux(flux_panels.series(schema.M_BATCH, (schema.SAMPLES_PER_S,), window="mean"))],
                unit="suffix: samples/s",
            )
        )
        .with_row(row("Gradients"))
        .with_panel(
            time_series(
                "Gradient norms",
                "Total L2 norm and the largest and smallest per-parameter norm (log scale); "
                "the largest and smallest value per display interval.",
                [
                    flux(
                        flux_panels.series(
                            schema.M_GRADIENT, (schema.TOTAL_NORM, schema.MAX_NORM), window="max"
                        ),
                        "A",
                    ),
                    flux(
                        flux_panels.series(schema.M_GRADIENT, (schema.MIN_NORM,), window="min"), "B"
                    ),
                ],
                log_scale=True,
            )
        )
        .with_panel(
            data_table(
                f"Top {flux_panels.TOP_LAYERS} layers by gradient norm",
                "Per run, the layers whose gradient norm was largest in the time range.",
                flux(flux_panels.top_layers()),
                width=HALF,
                decimals=4,
            )
        )
        .with_row(row("Per-layer gradient norms"))
        .with_panel(
            layer_heatmap(
                "Per-layer gradient norm: ${run_id}",
                "One row per recorded layer; the largest norm per display interval.",
                flux(flux_panels.layer_norm_heatmap()),
            )
        )
    )


# --- 3. Federated ------------------------------------------------------------------------

_ROUND_METRICS = (
    (schema.LOSS, "Loss", None),
    (schema.ACCURACY, "Accuracy", RATIO),
    (schema.RECALL, "Recall", RATIO),
    (schema.AUROC, "AUROC", RATIO),
)


def federated() -> dashboard_builders.Dashboard:
    board = (
        _dashboard(
            "runwatch-federated",
            "runwatch / Federated",
            "Federated runs round by round: server evaluation against the client aggregate, "
            "each client, participation and failures, confusion matrices.",
        )
        .with_variable(run_id_variable(schema.M_ROUND))
        .annotation(_events_annotation())
        .with_row(row("Server evaluation vs client aggregate"))
    )
    for field, title, unit in _ROUND_METRICS:
        board = board.with_panel(
            trend(
                f"{title} per round",
                "Server-side evaluation of the global model (source server) and the "
                "weighted aggregate of the clients' evaluations (source aggregated).",
                flux(flux_panels.by_round(schema.M_ROUND, field, (schema.RUN_ID, schema.SOURCE))),
                x_field=schema.ROUND,
                unit=unit,
            )
        )
    board = board.with_panel(
        trend(
            "Aggregated train loss per round",
            "The weighted aggregate of the clients' training loss (train_loss, or loss in a "
            "train reply) in each round: what the strategy aggregated.",
            flux(
                flux_panels.by_round(
                    schema.M_ROUND,
                    schema.TRAIN_LOSS,
                    (schema.RUN_ID,),
                    equals(schema.SOURCE, schema.SOURCE_AGGREGATED),
                )
            ),
            x_field=schema.ROUND,
        )
    )
    return _federated_clients(board.with_row(row("Clients")))


def _federated_clients(board: dashboard_builders.Dashboard) -> dashboard_builders.Dashboard:
    per_client = (schema.RUN_ID, schema.CLIENT_ID)
    board = (
        board.with_panel(
            trend(
                "Client train loss per round",
                "Each client's training loss as reported in its reply.",
                flux(flux_panels.by_round(schema.M_CLIENT_ROUND, schema.TRAIN_LOSS, per_client)),
                x_field=schema.ROUND,
            )
        )
        .with_panel(
            trend(
                "Client validation accuracy per round",
                "Each client's evaluation of the global model on its validation share "
                "(val_acc; Flower's eval_acc and accuracy are stored under this name).",
                flux(flux_panels.by_round(schema.M_CLIENT_ROUND, schema.VAL_ACC, per_client)),
                x_field=schema.ROUND,
                unit=RATIO,
            )
        )
        .with_panel(
            trend(
                "Spread between clients: train loss",
                "Highest minus lowest client train loss in each round.",
                flux(_spread(schema.TRAIN_LOSS)),
                x_field=schema.ROUND,
            )
        )
        .with_panel(
            trend(
                "Spread between clients: validation accuracy",
                "Highest minus lowest client validation accuracy in each round.",
                flux(_spread(schema.VAL_ACC)),
                x_field=schema.ROUND,
                unit=RATIO,
            )
        )
    )
    return _federated_participation(board.with_row(row("Participation and failures")))


def _spread(field: str) -> str:
    return flux_panels.by_round(schema.M_CLIENT_ROUND, field, (schema.RUN_ID,), reducer="spread()")


def _federated_participation(board: dashboard_builders.Dashboard) -> dashboard_builders.Dashboard:
    failures = equals(schema.EVENT, schema.EVENT_CLIENT_FAILURE)
    return (
        board.with_panel(
            trend(
                "Clients aggregated per round",
                "Clients whose training reply went into the round's aggregate.",
                flux(
                    flux_panels.by_round(
                        schema.M_ROUND,
                        schema.NUM_CLIENTS,
                        (schema.RUN_ID,),
                        equals(schema.SOURCE, schema.SOURCE_AGGREGATED),
                    )
                ),
                x_field=schema.ROUND,
                bars=True,
                width=THIRD,
            )
        )
        .with_panel(
            trend(
                "Client failures per round",
                "Instructions a client answered with an error or not before the timeout.",
                flux(
                    flux_panels.by_round(
                        schema.M_EVENT, schema.VALUE, (schema.RUN_ID,), failures, reducer="sum()"
                    )
                ),
                x_field=schema.ROUND,
                bars=True,
                width=THIRD,
            )
        )
        .with_panel(
            data_table(
                "Participation by round",
                "Clients aggregated and client failures in each round.",
                flux(flux_panels.participation_by_round()),
                width=THIRD,
            )
        )
        .with_panel(
            data_table(
                "Client failures",
                "Each failure: round, client and reason.",
                flux(flux_panels.events_table(schema.EVENT_CLIENT_FAILURE)),
            )
        )
        .with_row(row("Confusion matrix"))
        .with_panel(
            data_table(
                "Confusion matrix by round",
                "Server evaluation (source server) and the clients' summed counts "
                "(source aggregated), round by round.",
                flux(flux_panels.confusion_matrix_by_round()),
                height=10,
            )
        )
    )


# --- 4. Run comparison -------------------------------------------------------------------

_COMPARED = (
    (schema.VAL_LOSS, "Validation loss", None),
    (schema.TRAIN_LOSS, "Train loss", None),
    (schema.VAL_ACC, "Validation accuracy", RATIO),
    (schema.VAL_RECALL, "Validation recall", RATIO),
    (schema.VAL_F1, "Validation F1", RATIO),
    (schema.VAL_AUROC, "Validation AUROC", RATIO),
)


def run_comparison() -> dashboard_builders.Dashboard:
    board = (
        _dashboard(
            "runwatch-run-comparison",
            "runwatch / Run comparison",
            "The selected runs side by side: best and last metrics, curves overlaid by epoch.",
        )
        .time("now-30d", "now")
        .refresh("")
        .with_variable(run_id_variable(schema.M_EPOCH, schema.M_ROUND))
        .with_row(row("Runs"))
        .with_panel(
            data_table(
                "Best and last metrics",
                "Per run: best_* is the lowest loss or highest score at an epoch end, "
                "last_* the value at the last epoch.",
                flux(
                    flux_panels.best_and_last_values(
                        LOSSES, VALIDATION_SCORES, (*LOSSES, *VALIDATION_SCORES, schema.EPOCH)
                    )
                ),
                height=10,
                decimals=4,
            )
        )
        .with_row(row("Curves by epoch"))
    )
    for field, title, unit in _COMPARED:
        board = board.with_panel(
            trend(
                title,
                "One series per run, by epoch.",
                flux(flux_panels.by_epoch(field)),
                x_field=schema.EPOCH,
                unit=unit,
            )
        )
    board = board.with_row(row("Federated runs by round"))
    for field, title, unit in _ROUND_METRICS[:2]:
        board = board.with_panel(
            trend(
                f"Server evaluation {title.lower()}",
                "One series per federated run: the server's evaluation of the global model.",
                flux(
                    flux_panels.by_round(
                        schema.M_ROUND,
                        field,
                        (schema.RUN_ID,),
                        equals(schema.SOURCE, schema.SOURCE_SERVER),
                    )
                ),
                x_field=schema.ROUND,
                unit=unit,
            )
        )
    return board


# --- 5. Live (Prometheus) ----------------------------------------------------------------

SELECTED = '{run_id=~"$run_id"}'
STALL_WARNING_S = 60.0
STALL_CRITICAL_S = 300.0  # deploy/prometheus/rules: TrainingStalled


def _per_run(metric: str) -> str:
    return f"max by (run_id) ({metric}{SELECTED})"


def live() -> dashboard_builders.Dashboard:
    board = (
        _dashboard(
            "runwatch-live",
            "runwatch / Live",
            "Live gauges of running trainings, scraped by Prometheus from the training "
            "process (the federated server process in federated runs).",
        )
        .time("now-1h", "now")
        .refresh("10s")
        .with_variable(run_id_variable())
        .with_row(row("Status"))
        .with_panel(
            live_stat(
                "Run status",
                "The status each run's exporter reports.",
                [
                    promql(
                        f"max by (run_id, status) ({metrics.RUN_STATUS}{SELECTED}) == 1",
                        "{{run_id}}: {{status}}",
                    )
                ],
                unit="none",
                show_name=True,
            )
        )
        .with_panel(
            live_stat(
                "Since the last step",
                f"Seconds since the last optimizer step; the TrainingStalled alert fires "
                f"after {int(STALL_CRITICAL_S)} s.",
                [promql(f"time() - {_per_run(metrics.LAST_STEP_TIMESTAMP)}", "{{run_id}}")],
                unit=SECONDS,
                thresholds=(
                    (None, "green"),
                    (STALL_WARNING_S, "orange"),
                    (STALL_CRITICAL_S, "red"),
                ),
            )
        )
        .with_panel(
            live_stat(
                "Epoch",
                "Current epoch (0-based).",
                [promql(_per_run(metrics.EPOCH), "{{run_id}}")],
                unit="none",
            )
        )
        .with_panel(
            live_stat(
                "Non-finite values",
                "NaN or infinite values recorded (losses, metrics, gradient norms).",
                [promql(f"max by (run_id) ({metrics.NONFINITE_VALUES}{SELECTED})", "{{run_id}}")],
                unit="none",
                thresholds=((None, "green"), (1.0, "red")),
            )
        )
        .with_row(row("Training"))
    )
    return _live_federated(_live_training(board).with_row(row("Federated")))


def _live_training(board: dashboard_builders.Dashboard) -> dashboard_builders.Dashboard:
    prometheus = datasources.prometheus()
    steps = f"rate({metrics.OPTIMIZER_STEPS}{SELECTED}[$__rate_interval])"
    durations = f"rate({metrics.STEP_DURATION}_bucket{SELECTED}[$__rate_interval])"
    return (
        board.with_panel(
            time_series(
                "Step rate",
                "Optimizer steps per second.",
                [promql(f"sum by (run_id) ({steps})", "{{run_id}}")],
                datasource=prometheus,
                unit="suffix: steps/s",
                width=THIRD,
            )
        )
        .with_panel(
            time_series(
                "Throughput",
                "Training samples per second.",
                [promql(_per_run(metrics.SAMPLES_PER_SECOND), "{{run_id}}")],
                datasource=prometheus,
                unit="suffix: samples/s",
                width=THIRD,
            )
        )
        .with_panel(
            time_series(
                "Step duration",
                "Median and 95th percentile of the training step's wall time.",
                [
                    promql(
                        f"histogram_quantile(0.5, sum by (run_id, le) ({durations}))",
                        "{{run_id}} p50",
                        "A",
                    ),
                    promql(
                        f"histogram_quantile(0.95, sum by (run_id, le) ({durations}))",
                        "{{run_id}} p95",
                        "B",
                    ),
                ],
                datasource=prometheus,
                unit=SECONDS,
                width=THIRD,
            )
        )
        .with_panel(
            time_series(
                "Loss",
                "Latest training loss (batch or epoch) and validation loss.",
                [
                    promql(_per_run(metrics.TRAIN_LOSS), "{{run_id}} train", "A"),
                    promql(_per_run(metrics.VAL_LOSS), "{{run_id}} val", "B"),
                ],
                datasource=prometheus,
                width=THIRD,
            )
        )
        .with_panel(
            time_series(
                "Gradient norm",
                "Latest total L2 gradient norm (log scale).",
                [promql(_per_run(metrics.GRADIENT_NORM), "{{run_id}}")],
                datasource=prometheus,
                log_scale=True,
                width=THIRD,
            )
        )
        .with_panel(
            time_series(
                "Validation metrics",
                "Latest validation accuracy, recall and F1.",
                [
                    promql(_per_run(metrics.VAL_ACCURACY), "{{run_id}} accuracy", "A"),
                    promql(_per_run(metrics.VAL_RECALL), "{{run_id}} recall", "B"),
                    promql(_per_run(metrics.VAL_F1), "{{run_id}} f1", "C"),
                ],
                datasource=prometheus,
                unit=RATIO,
                width=THIRD,
            )
        )
    )


def _live_federated(board: dashboard_builders.Dashboard) -> dashboard_builders.Dashboard:
    prometheus = datasources.prometheus()
    progress = f"{_per_run(metrics.FEDERATED_ROUND)} / {_per_run(metrics.FEDERATED_ROUNDS_PLANNED)}"
    return (
        board.with_panel(
            live_stat(
                "Round progress",
                "Current round of the rounds planned.",
                [promql(progress, "{{run_id}}")],
                unit=RATIO,
                width=QUARTER,
            )
        )
        .with_panel(
            live_stat(
                "Current round",
                "Current federated round (1-based).",
                [promql(_per_run(metrics.FEDERATED_ROUND), "{{run_id}}")],
                unit="none",
                width=QUARTER,
            )
        )
        .with_panel(
            time_series(
                "Client replies and failures",
                "Client replies received and client failures, cumulative.",
                [
                    promql(
                        _per_run(metrics.FEDERATED_CLIENTS_RESPONDED), "{{run_id}} replied", "A"
                    ),
                    promql(_per_run(metrics.FEDERATED_CLIENTS_FAILED), "{{run_id}} failed", "B"),
                ],
                datasource=prometheus,
                width=HALF,
            )
        )
        .with_panel(
            time_series(
                "Server evaluation",
                "Loss and accuracy of the global model on the server's evaluation data.",
                [
                    promql(_per_run(metrics.FEDERATED_SERVER_EVAL_LOSS), "{{run_id}} loss", "A"),
                    promql(
                        _per_run(metrics.FEDERATED_SERVER_EVAL_ACCURACY), "{{run_id}} accuracy", "B"
                    ),
                ],
                datasource=prometheus,
                width=THIRD,
            )
        )
        .with_panel(
            time_series(
                "Round duration",
                "Wall time of the last completed round.",
                [promql(_per_run(metrics.FEDERATED_ROUND_DURATION), "{{run_id}}")],
                datasource=prometheus,
                unit=SECONDS,
                width=THIRD,
            )
        )
        .with_panel(
            time_series(
                "Client train loss",
                "Last training loss each client reported.",
                [
                    promql(
                        f"max by (run_id, client_id) ({metrics.FEDERATED_CLIENT_TRAIN_LOSS}{SELECTED})",
                        "{{run_id}} client {{client_id}}",
                    )
                ],
                datasource=prometheus,
                width=THIRD,
            )
        )
    )


DASHBOARDS: dict[str, Callable[[], dashboard_builders.Dashboard]] = {
    "training-overview": training_overview,
    "batches-gradients": batches_and_gradients,
    "federated": federated,
    "run-comparison": run_comparison,
    "live": live,
}
"""File name (without ``.json``) -> dashboard builder."""
