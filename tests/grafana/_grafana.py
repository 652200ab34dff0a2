"""Readers and checks of the committed Grafana files, shared by the tests in this folder.

Each check returns a list of problems (empty: fine), so a test can also run it on a broken
copy and see it fail.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from collector import schema

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "grafana"
DASHBOARDS_DIR = GRAFANA / "dashboards"
ALERTING_DIR = GRAFANA / "provisioning" / "alerting"
DATASOURCES_DIR = GRAFANA / "provisioning" / "datasources"
EXPRESSION_UID = "__expr__"

# What Grafana substitutes for the dashboard variables before a query runs (a multi-value
# `${run_id:regex}` becomes an escaped alternation).
SAMPLE_VARIABLES = {"run_id": r"(20240101T000000\-abc|20240102T000000\-def)"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def dashboards() -> dict[str, dict[str, Any]]:
    return {
        path.stem: json.loads(path.read_text()) for path in sorted(DASHBOARDS_DIR.glob("*.json"))
    }


def provisioned_datasources() -> dict[str, str]:
    """uid -> type of every provisioned datasource."""
    return {
        ds["uid"]: ds["type"]
        for path in sorted(DATASOURCES_DIR.glob("*.yml"))
        for ds in load_yaml(path)["datasources"]
    }


def alerting_documents() -> dict[str, dict[str, Any]]:
    return {path.stem: load_yaml(path) for path in sorted(ALERTING_DIR.glob("*.yml"))}


def alert_rules(documents: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        rule
        for document in documents.values()
        for group in document.get("groups", [])
        for rule in group["rules"]
    ]


# --- walking dashboards ------------------------------------------------------------------


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def _uid(datasource: Any) -> str | None:
    return datasource.get("uid") if isinstance(datasource, dict) else None


def dashboard_queries(dashboard: dict[str, Any], datasource_type: str) -> dict[str, str]:
    """Query text of every target, variable and annotation of ``datasource_type``, named by
    where it sits (``panel 3 "Loss" A``)."""
    found: dict[str, str] = {}
    key = "expr" if datasource_type == "prometheus" else "query"
    for variable in dashboard.get("templating", {}).get("list", []):
        if (variable.get("datasource") or {}).get("type") == datasource_type:
            found[f"variable {variable['name']}"] = variable["query"]
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if (annotation.get("datasource") or {}).get("type") == datasource_type:
            found[f"annotation {annotation['name']}"] = annotation["target"][key]
    for panel in all_panels(dashboard.get("panels", [])):
        panel_type = (panel.get("datasource") or {}).get("type")
        for target in panel.get("targets", []):
            target_type = (target.get("datasource") or {}).get("type", panel_type)
            if target_type == datasource_type:
                found[f'panel {panel["id"]} "{panel["title"]}" {target["refId"]}'] = target[key]
    return found


def alert_flux_queries(documents: dict[str, dict[str, Any]]) -> dict[str, str]:
    datasources = provisioned_datasources()
    return {
        f"rule {rule['uid']} {query['refId']}": query["model"]["query"]
        for rule in alert_rules(documents)
        for query in rule["data"]
        if datasources.get(query["datasourceUid"]) == "influxdb"
    }


def datasource_refs(node: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every ``datasource`` object in a dashboard, with where it sits."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource" and isinstance(value, dict):
                yield where, value
            else:
                yield from datasource_refs(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from datasource_refs(item, f"{where}/{index}")


def datasource_problems(dashboard: dict[str, Any], provisioned: dict[str, str]) -> list[str]:
    problems = []
    for where, ref in datasource_refs(dashboard):
        uid, kind = ref.get("uid"), ref.get("type")
        if uid not in provisioned:
            problems.append(f"{where}: datasource uid {uid!r} is not provisioned")
        elif kind != provisioned[uid]:
            problems.append(
                f"{where}: datasource {uid!r} has type {provisioned[uid]!r}, not {kind!r}"
            )
    for panel in all_panels(dashboard.get("panels", [])):
        if panel.get("type") == "row":
            continue
        if _uid(panel.get("datasource")) is None:
            problems.append(f"panel {panel.get('id')}: no datasource")
        for target in panel.get("targets", []):
            target_uid = _uid(target.get("datasource"))
            if target_uid not in (None, _uid(panel.get("datasource"))):
                problems.append(f"panel {panel.get('id')}: target {target_uid} != panel datasource")
    return problems


# --- names in Flux -----------------------------------------------------------------------

_MEASUREMENT = re.compile(r'r\._measurement == "([^"]*)"')
_FIELD = re.compile(r'r\._field == "([^"]*)"')
_ROW_COLUMN = re.compile(r"(?<![\w.])r\.(\w+)")
_NAME_ARRAY = re.compile(r"\b(?:columns|rowKey|columnKey): \[([^\]]*)\]")
_NAME_ARGUMENT = re.compile(r'\b(?:valueColumn|tag|column): "([^"]*)"')
_MAP_RECORD = re.compile(r"map\(fn: \(r\) => \(\{(.*?)\}\)\)")
_RECORD_LABEL = re.compile(r"(?:^|with |, )(\w+):")
_RENAMED_TO = re.compile(r'rename\(columns: \{[^}]*?: "(\w+)"')
_QUOTED = re.compile(r'"([^"]*)"')

FLUX_COLUMNS = frozenset({"_time", "_value", "_field", "_measurement", "_start", "_stop"})


def _all_tags() -> set[str]:
    tags = {*schema.BASE_TAGS, *schema.FEDERATED_TAGS}
    for measurement in schema.MEASUREMENTS.values():
        tags.update(measurement.tags)
    return tags


def _known_fields(measurements: set[str]) -> set[str]:
    fields: set[str] = set()
    for name in measurements:
        declared = schema.MEASUREMENTS[name].fields
        fields.update(declared)
        fields.update(schema.nonfinite_field(field) for field in declared)
    return fields


def _created_columns(query: str) -> set[str]:
    created = set(_RENAMED_TO.findall(query))
    for record in _MAP_RECORD.findall(query):
        created.update(_RECORD_LABEL.findall(record))
    return created


def schema_name_problems(query: str) -> list[str]:
    """Measurement, field, tag and column names in ``query`` that the schema does not define.

    Fields must be declared fields (or their ``_nonfinite`` flags) of a measurement the
    query reads; columns (``r.x``, ``columns: [...]``, ``valueColumn``...) must be tags,
    such fields, Flux's own columns, or columns the query creates (``map``, ``rename``).
    """
    measurements = set(_MEASUREMENT.findall(query))
    problems = [
        f"unknown measurement {m!r}" for m in sorted(measurements - set(schema.MEASUREMENTS))
    ]
    measurements &= set(schema.MEASUREMENTS)
    fields = _known_fields(measurements)
    if "schema.tagValues" not in query and not measurements:
        problems.append("reads no measurement")
    problems += [f"unknown field {f!r}" for f in _FIELD.findall(query) if f not in fields]
    allowed = FLUX_COLUMNS | _all_tags() | fields | _created_columns(query)
    named = set(_ROW_COLUMN.findall(query)) | set(_NAME_ARGUMENT.findall(query))
    for names in _NAME_ARRAY.findall(query):
        named.update(_QUOTED.findall(names))
    problems += [f"unknown column {c!r}" for c in sorted(named - allowed)]
    return problems


# --- alert provisioning ------------------------------------------------------------------

# Prometheus' duration syntax (Grafana parses rule durations with prometheus/common/model).
_DURATION = re.compile(
    r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$"
)
_DURATION_SECONDS = (365 * 86400, 7 * 86400, 86400, 3600, 60, 1, 0.001)
NO_DATA_STATES = frozenset({"Alerting", "NoData", "OK", "KeepLast"})
EXEC_ERR_STATES = frozenset({"Alerting", "Error", "OK", "KeepLast"})
EXPRESSION_TYPES = frozenset({"math", "reduce", "resample", "classic_conditions", "threshold"})
REDUCERS = frozenset({"sum", "mean", "min", "max", "count", "last", "median"})
REDUCE_MODES = frozenset({"dropNN", "replaceNN"})
THRESHOLD_ARITY = {"gt": 1, "lt": 1, "within_range": 2, "outside_range": 2}
_MATH_REFERENCE = re.compile(r"\$\{?(\w+)\}?")
_UID = re.compile(r"^[a-zA-Z0-9_-]{1,40}$")
# The interval a rule group is evaluated at must be a multiple of Grafana's base interval.
BASE_INTERVAL_S = 10
RULE_KEYS = ("uid", "title", "condition", "data", "for", "noDataState", "execErrState")


def duration_seconds(text: Any) -> float | None:
    """Seconds of a Prometheus-style duration, None when it does not parse."""
    if not isinstance(text, str) or text in ("",):
        return None
    if text == "0":
        return 0.0
    match = _DURATION.fullmatch(text)
    if match is None:
        return None
    return sum(int(n) * unit for n, unit in zip(match.groups(), _DURATION_SECONDS) if n)


def rules_problems(document: dict[str, Any], provisioned: dict[str, str]) -> list[str]:
    problems: list[str] = []
    if document.get("apiVersion") != 1:
        problems.append("apiVersion is not 1")
    groups = document.get("groups") or []
    if not groups:
        problems.append("no rule groups")
    uids: set[str] = set()
    for group in groups:
        name = group.get("name")
        for key in ("orgId", "name", "folder", "interval", "rules"):
            if not group.get(key):
                problems.append(f"group {name}: no {key}")
        interval = duration_seconds(group.get("interval"))
        if interval is None or interval <= 0 or interval % BASE_INTERVAL_S:
            problems.append(
                f"group {name}: interval {group.get('interval')!r} is not a multiple of 10s"
            )
        titles: set[str] = set()
        for rule in group.get("rules") or []:
            problems += [f"rule {rule.get('uid')}: {p}" for p in rule_problems(rule, provisioned)]
            if rule.get("uid") in uids:
                problems.append(f"rule uid {rule.get('uid')} is not unique")
            if rule.get("title") in titles:
                problems.append(f"rule title {rule.get('title')} is not unique in its group")
            uids.add(rule.get("uid"))
            titles.add(rule.get("title"))
    return problems


def rule_problems(rule: dict[str, Any], provisioned: dict[str, str]) -> list[str]:
    problems = [f"no {key}" for key in RULE_KEYS if key not in rule or rule[key] in (None, "")]
    if not _UID.fullmatch(str(rule.get("uid", ""))):
        problems.append("uid must be 1-40 letters, digits, - or _")
    if duration_seconds(rule.get("for")) is None:
        problems.append(f"for {rule.get('for')!r} is not a duration")
    if rule.get("noDataState") not in NO_DATA_STATES:
        problems.append(
            f"noDataState {rule.get('noDataState')!r} is not one of {sorted(NO_DATA_STATES)}"
        )
    if rule.get("execErrState") not in EXEC_ERR_STATES:
        problems.append(
            f"execErrState {rule.get('execErrState')!r} is not one of {sorted(EXEC_ERR_STATES)}"
        )
    for key, values in (
        ("labels", rule.get("labels") or {}),
        ("annotations", rule.get("annotations") or {}),
    ):
        for label, value in values.items():
            if not isinstance(value, str):
                problems.append(f"{key}.{label} is not a string")
            elif key == "labels" and "$" in value:
                problems.append(
                    f"labels.{label}: Grafana would expand {value!r} from its environment"
                )
            elif key == "annotations" and "${" in value:
                problems.append(f"annotations.{label}: Grafana may expand ${{...}} in {value!r}")
    if not (rule.get("annotations") or {}).get("summary"):
        problems.append("no summary annotation")
    data = rule.get("data") or []
    ref_ids = [query.get("refId") for query in data]
    if len(set(ref_ids)) != len(ref_ids):
        problems.append(f"refIds are not unique: {ref_ids}")
    if rule.get("condition") not in ref_ids:
        problems.append(f"condition {rule.get('condition')!r} names no query ({ref_ids})")
    for query in data:
        problems += [
            f"{query.get('refId')}: {p}" for p in query_problems(query, set(ref_ids), provisioned)
        ]
    return problems


def query_problems(
    query: dict[str, Any], ref_ids: set[str], provisioned: dict[str, str]
) -> list[str]:
    ref_id, uid, model = query.get("refId"), query.get("datasourceUid"), query.get("model")
    if not isinstance(model, dict):
        return ["no model"]
    problems = []
    if model.get("refId") != ref_id:
        problems.append(f"model.refId {model.get('refId')!r} differs")
    if uid == EXPRESSION_UID:
        return problems + expression_problems(model, ref_ids - {ref_id})
    if uid not in provisioned:
        return [*problems, f"datasource uid {uid!r} is not provisioned"]
    window = query.get("relativeTimeRange") or {}
    start, stop = window.get("from"), window.get("to")
    if not (isinstance(start, int) and isinstance(stop, int) and start > stop >= 0):
        problems.append(f"relativeTimeRange {window} is not a look-back in seconds")
    if provisioned[uid] == "influxdb" and not str(model.get("query", "")).strip():
        problems.append("no Flux query")
    return problems


def expression_problems(model: dict[str, Any], others: set[str]) -> list[str]:
    """A reduce, threshold or math model that Grafana's expression engine accepts."""
    kind = model.get("type")
    if kind not in EXPRESSION_TYPES:
        return [f"expression type {kind!r} is not one of {sorted(EXPRESSION_TYPES)}"]
    if (model.get("datasource") or {}).get("uid") not in (None, EXPRESSION_UID):
        return ["an expression's datasource must be __expr__"]
    expression = str(model.get("expression") or "")
    if kind == "math":
        references = set(_MATH_REFERENCE.findall(expression))
        if not references:
            return [f"math expression {expression!r} references no query"]
        return [
            f"math expression references unknown ${name}" for name in sorted(references - others)
        ]
    if kind in ("reduce", "threshold", "resample") and expression not in others:
        return [f"{kind} input {expression!r} is not another query"]
    if kind == "reduce":
        problems = []
        if model.get("reducer") not in REDUCERS:
            problems.append(f"reducer {model.get('reducer')!r} is not one of {sorted(REDUCERS)}")
        mode = (model.get("settings") or {}).get("mode")
        if mode not in (None, *REDUCE_MODES):
            problems.append(f"reduce mode {mode!r} is not one of {sorted(REDUCE_MODES)}")
        return problems
    if kind == "threshold":
        return _threshold_problems(model.get("conditions"))
    return []


def _threshold_problems(conditions: Any) -> list[str]:
    if not isinstance(conditions, list) or not conditions:
        return ["threshold has no conditions"]
    problems = []
    for condition in conditions:
        evaluator = (condition or {}).get("evaluator") or {}
        arity = THRESHOLD_ARITY.get(evaluator.get("type"))
        params = evaluator.get("params")
        if arity is None:
            problems.append(
                f"threshold type {evaluator.get('type')!r} is not one of {sorted(THRESHOLD_ARITY)}"
            )
        elif not (
            isinstance(params, list)
            and len(params) == arity
            and all(isinstance(p, int | float) and not isinstance(p, bool) for p in params)
        ):
            problems.append(
                f"threshold {evaluator.get('type')} needs {arity} number(s), got {params!r}"
            )
    return problems


def contact_point_problems(document: dict[str, Any]) -> list[str]:
    problems = [] if document.get("apiVersion") == 1 else ["apiVersion is not 1"]
    points = document.get("contactPoints") or []
    if not points:
        problems.append("no contact points")
    for point in points:
        receivers = point.get("receivers") or []
        if not point.get("name") or not receivers:
            problems.append(f"contact point {point.get('name')!r}: needs a name and receivers")
        for receiver in receivers:
            if not _UID.fullmatch(str(receiver.get("uid", ""))):
                problems.append(
                    f"receiver {receiver.get('uid')!r}: uid must be 1-40 letters, digits, - or _"
                )
            if receiver.get("type") == "webhook" and not (receiver.get("settings") or {}).get(
                "url"
            ):
                problems.append(f"receiver {receiver.get('uid')}: webhook without url")
    return problems


def policy_problems(document: dict[str, Any], contact_points: set[str]) -> list[str]:
    problems = [] if document.get("apiVersion") == 1 else ["apiVersion is not 1"]
    policies = document.get("policies") or []
    if not policies:
        problems.append("no policies")
    for policy in policies:
        if policy.get("receiver") not in contact_points:
            problems.append(f"receiver {policy.get('receiver')!r} is no provisioned contact point")
        for key in ("group_wait", "group_interval", "repeat_interval"):
            if key in policy and duration_seconds(policy[key]) is None:
                problems.append(f"{key} {policy[key]!r} is not a duration")
    return problems
