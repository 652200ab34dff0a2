"""Grafana-managed alert rules on Flux, their contact point and notification policy, as
Grafana's file-provisioning documents (``grafana/provisioning/alerting/*.yml``).

Rules are built with grafana-foundation-sdk's alerting and expression builders (typed
reduce/threshold/math models), then written in the provisioning-file layout, which differs
from the HTTP API's the SDK serialises: groups with ``orgId``/``folder``/``interval`` and rules
without ``folderUID``/``ruleGroup``/``orgID``.

Grafana expands ``$VAR`` in provisioning files: the contact point's URL comes from
``GRAFANA_ALERT_WEBHOOK_URL`` that way. Rule labels are expanded too (so they hold no ``$``);
query models and annotations are not (``$B`` in a math expression and ``{{ $labels.x }}`` in
an annotation stay as written).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from grafana_foundation_sdk.builders import alerting, expr
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.alerting import RelativeTimeRange

from collector import schema
from grafana import datasources
from grafana.flux import FluxTarget, any_of, columns, equals, literal, query, select

ORG_ID = 1
GROUP = "runwatch-training"
EVALUATION_INTERVAL = "1m"
CONTACT_POINT = "runwatch-webhook"
WEBHOOK_URL_VARIABLE = "GRAFANA_ALERT_WEBHOOK_URL"

VAL_LOSS_RISING_EPOCHS = 3
"""K: val_loss rose at each of the last K epoch ends."""
VAL_RECALL_DROP = 0.05
"""X: the last val_recall is more than X below the run's best."""

ONE_HOUR_S = 3600
SIX_HOURS_S = 6 * ONE_HOUR_S

Reducer = Literal["sum", "mean", "min", "max", "count", "last", "median"]

RUN_LABELS = (schema.RUN_ID, schema.EXPERIMENT)
FAILURE_LABELS = (*RUN_LABELS, schema.ROUND, schema.CLIENT_ID)
RUN_CURVE = f"not exists r.{schema.CLIENT_ID}"


@dataclass(frozen=True)
class RuleSpec:
    uid: str
    title: str
    summary: str
    description: str
    severity: str
    for_duration: str
    lookback_s: int
    queries: Sequence[alerting.Query]
    condition: str


def _flux(ref_id: str, flux_query: str, lookback_s: int) -> alerting.Query:
    return (
        alerting.Query(ref_id)
        .datasource_uid(datasources.INFLUXDB_UID)
        .relative_time_range(_relative(lookback_s))
        .model(FluxTarget(flux_query, ref_id).for_alerting())
    )


def _relative(lookback_s: int) -> RelativeTimeRange:
    """Seconds back from the evaluation time (Grafana reads these durations in seconds)."""
    return RelativeTimeRange(from_val=lookback_s, to=0)


def _reduce(ref_id: str, source: str, reducer: Reducer) -> alerting.Query:
    model = (
        expr.TypeReduce()
        .ref_id(ref_id)
        .datasource(datasources.expression())
        .expression(source)
        .reducer(reducer)
        .settings(expr.ExprTypeReduceSettings().mode("dropNN"))
    )
    return alerting.Query(ref_id).datasource_uid(datasources.EXPRESSION_UID).model(model)


def _math(ref_id: str, expression: str) -> alerting.Query:
    model = (
        expr.TypeMath().ref_id(ref_id).datasource(datasources.expression()).expression(expression)
    )
    return alerting.Query(ref_id).datasource_uid(datasources.EXPRESSION_UID).model(model)


def _above(ref_id: str, source: str, threshold: float) -> alerting.Query:
    condition = expr.ExprTypeThresholdConditions().evaluator(
        expr.ExprTypeThresholdConditionsEvaluator().type("gt").params([threshold])
    )
    model = (
        expr.TypeThreshold()
        .ref_id(ref_id)
        .datasource(datasources.expression())
        .expression(source)
        .conditions([condition])
    )
    return alerting.Query(ref_id).datasource_uid(datasources.EXPRESSION_UID).model(model)


# --- the Flux of each rule ---------------------------------------------------------------


def _as_series(labels: Sequence[str]) -> str:
    """The last stage of a rule's query: only ``_time``, ``_value`` and the ``labels`` columns
    (the group key). Grafana turns such a table into one plain series labelled by ``labels``;
    any other column (``_start``/``_stop``, ``_field``, tags) would become a label of the alert
    instance too, and ``_start``/``_stop`` change at every evaluation."""
    return f"keep(columns: {columns(('_time', '_value', *labels))})"


def nonfinite_loss_query() -> str:
    """Per run: ``*_nonfinite`` flags of train or validation losses, summed per minute."""
    nonfinite = schema.nonfinite_field
    sources = " or ".join(
        f"(r._measurement == {literal(measurement)} and {any_of('_field', map(nonfinite, fields))})"
        for measurement, fields in (
            (schema.M_EPOCH, (schema.TRAIN_LOSS, schema.VAL_LOSS)),
            (schema.M_BATCH, (schema.LOSS,)),
            (schema.M_CLIENT_ROUND, (schema.TRAIN_LOSS, schema.VAL_LOSS)),
            (schema.M_ROUND, (schema.LOSS,)),
        )
    )
    return query(
        "from(bucket: v.defaultBucket)",
        "range(start: v.timeRangeStart, stop: v.timeRangeStop)",
        f"filter(fn: (r) => {sources})",
        f"group(columns: {columns(RUN_LABELS)})",
        "aggregateWindow(every: 1m, fn: sum, createEmpty: false)",
        _as_series(RUN_LABELS),
    )


def val_loss_rising_query(epochs: int = VAL_LOSS_RISING_EPOCHS) -> str:
    """Per run: 1.0 for each of the last ``epochs`` epoch ends whose val_loss rose, else 0.0."""
    return query(
        *select(schema.M_EPOCH, (schema.VAL_LOSS,), RUN_CURVE, selected_runs=False),
        f"group(columns: {columns(RUN_LABELS)})",
        'sort(columns: ["_time"])',
        f"tail(n: {epochs + 1})",
        "difference()",
        "map(fn: (r) => ({r with _value: if r._value > 0.0 then 1.0 else 0.0}))",
        _as_series(RUN_LABELS),
    )


def val_recall_query() -> str:
    """Per run: val_recall at each epoch end."""
    return query(
        *select(schema.M_EPOCH, (schema.VAL_RECALL,), RUN_CURVE, selected_runs=False),
        f"group(columns: {columns(RUN_LABELS)})",
        'sort(columns: ["_time"])',
        _as_series(RUN_LABELS),
    )


def client_failures_query() -> str:
    """Per run, round and client: the client's failures (error or no reply) in the round."""
    return query(
        *select(
            schema.M_EVENT,
            (schema.VALUE,),
            equals(schema.EVENT, schema.EVENT_CLIENT_FAILURE),
            selected_runs=False,
        ),
        f"group(columns: {columns(FAILURE_LABELS)})",
        "aggregateWindow(every: 1m, fn: sum, createEmpty: false)",
        _as_series(FAILURE_LABELS),
    )


# --- rules -------------------------------------------------------------------------------


def rule_specs() -> list[RuleSpec]:
    rising = VAL_LOSS_RISING_EPOCHS
    return [
        RuleSpec(
            uid="runwatch-nonfinite-loss",
            title="Non-finite loss",
            summary="Run {{ $labels.run_id }}: a train or validation loss is NaN or infinite",
            description=(
                "Run {{ $labels.run_id }} (experiment {{ $labels.experiment }}) recorded a "
                "non-finite train or validation loss in the last hour (a *_nonfinite field): "
                "training has diverged."
            ),
            severity="critical",
            for_duration="0s",
            lookback_s=ONE_HOUR_S,
            queries=[
                _flux("A", nonfinite_loss_query(), ONE_HOUR_S),
                _reduce("B", "A", "sum"),
                _above("C", "B", 0.0),
            ],
            condition="C",
        ),
        RuleSpec(
            uid="runwatch-val-loss-rising",
            title="Validation loss rising",
            summary=f"Run {{{{ $labels.run_id }}}}: val_loss rose {rising} epochs in a row",
            description=(
                "The validation loss of run {{ $labels.run_id }} rose at each of its last "
                f"{rising} epoch ends: the model may be overfitting (consider early stopping)."
            ),
            severity="warning",
            for_duration="0s",
            lookback_s=SIX_HOURS_S,
            queries=[
                _flux("A", val_loss_rising_query(), SIX_HOURS_S),
                _reduce("B", "A", "sum"),
                _above("C", "B", rising - 0.5),
            ],
            condition="C",
        ),
        RuleSpec(
            uid="runwatch-val-recall-below-best",
            title="Validation recall below the run's best",
            summary=(
                "Run {{ $labels.run_id }}: val_recall {{ humanize $values.D.Value }} below its best"
            ),
            description=(
                "The last validation recall of run {{ $labels.run_id }} is more than "
                f"{VAL_RECALL_DROP} below the best it reached (in the last 6 hours)."
            ),
            severity="warning",
            for_duration="0s",
            lookback_s=SIX_HOURS_S,
            queries=[
                _flux("A", val_recall_query(), SIX_HOURS_S),
                _reduce("B", "A", "max"),
                _reduce("C", "A", "last"),
                _math("D", "$B - $C"),
                _above("E", "D", VAL_RECALL_DROP),
            ],
            condition="E",
        ),
        RuleSpec(
            uid="runwatch-client-missing",
            title="Federated client missing from a round",
            summary=(
                "Run {{ $labels.run_id }}: client {{ $labels.client_id }} missing from "
                "round {{ $labels.round }}"
            ),
            description=(
                "The server sent client {{ $labels.client_id }} an instruction in round "
                "{{ $labels.round }} of run {{ $labels.run_id }} and got an error or no reply "
                "before the timeout (event client_failure)."
            ),
            severity="warning",
            for_duration="0s",
            lookback_s=ONE_HOUR_S,
            queries=[
                _flux("A", client_failures_query(), ONE_HOUR_S),
                _reduce("B", "A", "sum"),
                _above("C", "B", 0.0),
            ],
            condition="C",
        ),
    ]


def _rule(spec: RuleSpec) -> dict[str, Any]:
    built = (
        alerting.Rule(spec.title)
        .uid(spec.uid)
        .queries(list(spec.queries))
        .condition(spec.condition)
        .for_val(spec.for_duration)
        # No points = nothing went wrong (no run, no non-finite flag, no failure).
        .no_data_state("OK")
        .exec_err_state("Error")
        .labels({"severity": spec.severity, "source": "runwatch"})
        .annotations({"summary": spec.summary, "description": spec.description})
        .is_paused(False)
    )
    api_form = _plain(built.build())
    # Provisioning files carry these per group, not per rule.
    for key in ("folderUID", "orgID", "ruleGroup"):
        api_form.pop(key, None)
    return api_form


def rules_document() -> dict[str, Any]:
    return {
        "apiVersion": 1,
        "groups": [
            {
                "orgId": ORG_ID,
                "name": GROUP,
                "folder": datasources.FOLDER,
                "interval": EVALUATION_INTERVAL,
                "rules": [_rule(spec) for spec in rule_specs()],
            }
        ],
    }


def contact_points_document() -> dict[str, Any]:
    return {
        "apiVersion": 1,
        "contactPoints": [
            {
                "orgId": ORG_ID,
                "name": CONTACT_POINT,
                "receivers": [
                    {
                        "uid": CONTACT_POINT,
                        "type": "webhook",
                        "disableResolveMessage": False,
                        "settings": {
                            "url": f"${{{WEBHOOK_URL_VARIABLE}}}",
                            "httpMethod": "POST",
                        },
                    }
                ],
            }
        ],
    }


def policies_document() -> dict[str, Any]:
    policy = (
        alerting.NotificationPolicy()
        .receiver(CONTACT_POINT)
        .group_by(["grafana_folder", "alertname", schema.RUN_ID])
        .group_wait("30s")
        .group_interval("5m")
        .repeat_interval("4h")
    )
    return {"apiVersion": 1, "policies": [{"orgId": ORG_ID, **_plain(policy.build())}]}


def _plain(model: object) -> dict[str, Any]:
    """The SDK object as plain JSON data."""
    data: dict[str, Any] = json.loads(json.dumps(model, cls=JSONEncoder))
    return data


DOCUMENTS = {
    "rules": rules_document,
    "contact-points": contact_points_document,
    "policies": policies_document,
}
"""File name (without ``.yml``) under grafana/provisioning/alerting -> document."""
