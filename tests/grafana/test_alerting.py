"""Alert provisioning files: structure Grafana's file provisioner requires, expression models
its expression engine accepts, names from the schema, and the webhook URL from compose's
environment."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from collector import schema
from grafana import alerts
from tests.deploy._deploy import COMPOSE_FILE, load_yaml
from tests.deploy.test_compose import env_example
from tests.grafana._grafana import (
    alert_flux_queries,
    alert_rules,
    alerting_documents,
    contact_point_problems,
    duration_seconds,
    policy_problems,
    provisioned_datasources,
    rules_problems,
    schema_name_problems,
)

DOCUMENTS = alerting_documents()
RULES = DOCUMENTS["rules"]


def contact_point_names(document: dict[str, Any]) -> set[str]:
    return {point["name"] for point in document["contactPoints"]}


def test_rules_are_well_formed() -> None:
    assert rules_problems(RULES, provisioned_datasources()) == []


def test_the_four_rules() -> None:
    titles = {rule["title"] for rule in alert_rules(DOCUMENTS)}
    assert titles == {
        "Non-finite loss",
        "Validation loss rising",
        "Validation recall below the run's best",
        "Federated client missing from a round",
    }


def test_contact_point_and_policy() -> None:
    assert contact_point_problems(DOCUMENTS["contact-points"]) == []
    names = contact_point_names(DOCUMENTS["contact-points"])
    assert policy_problems(DOCUMENTS["policies"], names) == []


def _rule(document: dict[str, Any], uid: str) -> dict[str, Any]:
    return next(r for r in document["groups"][0]["rules"] if r["uid"] == uid)


def _query(rule: dict[str, Any], ref_id: str) -> dict[str, Any]:
    return next(q for q in rule["data"] if q["refId"] == ref_id)


RECALL = "runwatch-val-recall-below-best"
NONFINITE = "runwatch-nonfinite-loss"

Breakage = Callable[[dict[str, Any]], None]
BREAKAGES: dict[str, tuple[Breakage, str]] = {
    "condition names no query": (
        lambda d: _rule(d, NONFINITE).update(condition="Z"),
        "condition 'Z' names no query",
    ),
    "duplicate refId": (
        lambda d: _query(_rule(d, RECALL), "C").update(refId="B"),
        "refIds are not unique",
    ),
    "missing key": (lambda d: _rule(d, NONFINITE).pop("execErrState"), "no execErrState"),
    "bad for": (lambda d: _rule(d, NONFINITE).update({"for": "5 minutes"}), "is not a duration"),
    "bad interval": (lambda d: d["groups"][0].update(interval="15s"), "not a multiple of 10s"),
    "bad noDataState": (
        lambda d: _rule(d, NONFINITE).update(noDataState="Ok"),
        "noDataState 'Ok' is not one of",
    ),
    "bad execErrState": (
        lambda d: _rule(d, NONFINITE).update(execErrState="Alert"),
        "execErrState 'Alert' is not one of",
    ),
    "unknown reducer": (
        lambda d: _query(_rule(d, RECALL), "B")["model"].update(reducer="maximum"),
        "reducer 'maximum' is not one of",
    ),
    "reduce of a missing query": (
        lambda d: _query(_rule(d, RECALL), "C")["model"].update(expression="Q"),
        "reduce input 'Q' is not another query",
    ),
    "math of a missing query": (
        lambda d: _query(_rule(d, RECALL), "D")["model"].update(expression="$B - $X"),
        "math expression references unknown $X",
    ),
    "threshold without params": (
        lambda d: _query(_rule(d, RECALL), "E")["model"]["conditions"][0]["evaluator"].update(
            params=[]
        ),
        "threshold gt needs 1 number(s)",
    ),
    "unknown expression type": (
        lambda d: _query(_rule(d, RECALL), "E")["model"].update(type="thresholds"),
        "expression type 'thresholds' is not one of",
    ),
    "unprovisioned datasource": (
        lambda d: _query(_rule(d, RECALL), "A").update(datasourceUid="influx"),
        "datasource uid 'influx' is not provisioned",
    ),
    "no look-back": (
        lambda d: _query(_rule(d, RECALL), "A").update(relativeTimeRange={"from": 0, "to": 0}),
        "is not a look-back in seconds",
    ),
    "env variable in a label": (
        lambda d: _rule(d, RECALL)["labels"].update(team="$TEAM"),
        "Grafana would expand",
    ),
    "duplicate uid": (
        lambda d: _rule(d, RECALL).update(uid=NONFINITE),
        "is not unique",
    ),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_the_structure_check_catches(breakage: str) -> None:
    broken = copy.deepcopy(RULES)
    mutate, expected = BREAKAGES[breakage]
    mutate(broken)
    problems = rules_problems(broken, provisioned_datasources())
    assert any(expected in problem for problem in problems), problems


def test_policy_check_catches_an_unknown_receiver_and_a_bad_duration() -> None:
    broken = copy.deepcopy(DOCUMENTS["policies"])
    broken["policies"][0].update(receiver="email", group_wait="half a minute")
    problems = policy_problems(broken, contact_point_names(DOCUMENTS["contact-points"]))
    assert problems == [
        "receiver 'email' is no provisioned contact point",
        "group_wait 'half a minute' is not a duration",
    ]


def test_contact_point_check_catches_a_webhook_without_url() -> None:
    broken = copy.deepcopy(DOCUMENTS["contact-points"])
    broken["contactPoints"][0]["receivers"][0]["settings"].pop("url")
    assert contact_point_problems(broken) == ["receiver runwatch-webhook: webhook without url"]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0s", 0), ("0", 0), ("1m", 60), ("1h30m", 5400), ("90s", 90), ("1m", 60), ("", None),
     ("5 minutes", None), ("1.5h", None), ("m", None)],
)  # fmt: skip
def test_duration_parser(text: str, seconds: float | None) -> None:
    assert duration_seconds(text) == seconds


@pytest.mark.parametrize("where", sorted(alert_flux_queries(DOCUMENTS)))
def test_rule_flux_names_exist_in_the_schema(where: str) -> None:
    assert schema_name_problems(alert_flux_queries(DOCUMENTS)[where]) == []


def test_non_finite_rule_reads_the_nonfinite_flags() -> None:
    flux = alert_flux_queries(DOCUMENTS)[f"rule {NONFINITE} A"]
    for field in (schema.TRAIN_LOSS, schema.VAL_LOSS, schema.LOSS):
        assert f'"{schema.nonfinite_field(field)}"' in flux


def test_thresholds_follow_the_generator_constants() -> None:
    recall = _query(_rule(RULES, RECALL), "E")["model"]["conditions"][0]["evaluator"]
    assert recall == {"type": "gt", "params": [alerts.VAL_RECALL_DROP]}
    rising = _rule(RULES, "runwatch-val-loss-rising")
    assert f"tail(n: {alerts.VAL_LOSS_RISING_EPOCHS + 1})" in _query(rising, "A")["model"]["query"]


def test_webhook_url_comes_from_the_environment_compose_gives_grafana() -> None:
    [receiver] = DOCUMENTS["contact-points"]["contactPoints"][0]["receivers"]
    assert receiver["type"] == "webhook"
    variable = alerts.WEBHOOK_URL_VARIABLE
    assert receiver["settings"]["url"] == f"${{{variable}}}"
    environment = load_yaml(COMPOSE_FILE)["services"]["grafana"]["environment"]
    assert environment[variable] == f"${{{variable}:?set {variable} in .env (see .env.example)}}"
    assert env_example()[variable].startswith("http")


def test_rules_live_in_the_dashboards_folder() -> None:
    provider = load_yaml(COMPOSE_FILE.parent / "grafana/provisioning/dashboards/runwatch.yml")
    assert {g["folder"] for g in RULES["groups"]} == {provider["providers"][0]["folder"]}
