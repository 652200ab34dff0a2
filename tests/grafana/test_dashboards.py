"""The dashboards reference only provisioned datasources, names the schema defines and
metrics the exporter serves; each has the multi-select run_id variable."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from collector.prometheus import PrometheusExporter
from tests.deploy._deploy import exposed_series_names, metric_names_in
from tests.grafana._grafana import (
    all_panels,
    dashboard_queries,
    dashboards,
    datasource_problems,
    provisioned_datasources,
    schema_name_problems,
)

DASHBOARDS = dashboards()
GRID_WIDTH = 24


@pytest.fixture(scope="module")
def exported_metrics() -> set[str]:
    """Every series name a scrape of a fresh exporter can produce (incl. histogram parts)."""
    exporter = PrometheusExporter("run-1", experiment="demo", mode="federated")
    return exposed_series_names(exporter.render().decode())


def flux_queries() -> dict[str, str]:
    return {
        f"{name}: {where}": flux
        for name, dashboard in DASHBOARDS.items()
        for where, flux in dashboard_queries(dashboard, "influxdb").items()
    }


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_only_provisioned_datasources(name: str) -> None:
    assert datasource_problems(DASHBOARDS[name], provisioned_datasources()) == []


def test_datasource_check_catches_an_unknown_uid_and_a_wrong_type() -> None:
    broken = copy.deepcopy(DASHBOARDS["training-overview"])
    panel = broken["panels"][1]
    panel["datasource"] = {"type": "influxdb", "uid": "my-influx"}
    broken["panels"][2]["datasource"] = {"type": "prometheus", "uid": "runwatch-influxdb"}
    problems = datasource_problems(broken, provisioned_datasources())
    assert any("'my-influx' is not provisioned" in p for p in problems), problems
    assert any("target runwatch-influxdb != panel datasource" in p for p in problems), problems
    assert any("has type 'influxdb', not 'prometheus'" in p for p in problems), problems


@pytest.mark.parametrize("where", sorted(flux_queries()))
def test_flux_names_exist_in_the_schema(where: str) -> None:
    assert schema_name_problems(flux_queries()[where]) == []


@pytest.mark.parametrize(
    ("original", "typo", "problem"),
    [
        ('r._measurement == "epoch"', 'r._measurement == "epochs"', "unknown measurement 'epochs'"),
        ('r._field == "val_loss"', 'r._field == "val_los"', "unknown field 'val_los'"),
        ("r.run_id =~", "r.runid =~", "unknown column 'runid'"),
        ('"client_id"]', '"client"]', "unknown column 'client'"),
    ],
)
def test_schema_check_catches_typos(original: str, typo: str, problem: str) -> None:
    query = next(q for w, q in flux_queries().items() if "Loss" in w and "overview" in w)
    assert original in query
    assert problem in schema_name_problems(query.replace(original, typo))


def test_a_field_of_another_measurement_is_caught() -> None:
    query = next(q for w, q in flux_queries().items() if "Batch loss" in w)
    assert schema_name_problems(query.replace('"loss"', '"train_loss"')) == [
        "unknown field 'train_loss'"
    ]


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_prometheus_names_are_exported(name: str, exported_metrics: set[str]) -> None:
    for where, expr in dashboard_queries(DASHBOARDS[name], "prometheus").items():
        used = metric_names_in(expr)
        assert used, f"{where}: no runwatch metric in {expr}"
        assert used <= exported_metrics, f"{where}: not exported: {used - exported_metrics}"
        assert 'run_id=~"$run_id"' in expr, f"{where}: ignores the run_id variable"


def test_metric_check_catches_an_unknown_name(exported_metrics: set[str]) -> None:
    assert metric_names_in("rate(training_optimizer_step_total[5m])") - exported_metrics == {
        "training_optimizer_step_total"
    }


def test_the_live_dashboard_reads_prometheus_only() -> None:
    live = DASHBOARDS["live"]
    panels = [p for p in all_panels(live["panels"]) if p["type"] != "row"]
    assert panels and all(p["datasource"]["type"] == "prometheus" for p in panels)
    titles = {p["title"] for p in panels}
    assert {"Step rate", "Loss", "Gradient norm", "Since the last step", "Round progress"} <= titles


def run_id_variable(dashboard: dict[str, Any]) -> dict[str, Any]:
    [variable] = [v for v in dashboard["templating"]["list"] if v["name"] == "run_id"]
    return variable


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_run_id_variable_is_multi_select_from_flux_with_an_explicit_start(name: str) -> None:
    variable = run_id_variable(DASHBOARDS[name])
    assert variable["type"] == "query"
    assert variable["multi"] is True
    assert variable["includeAll"] is True
    assert variable["datasource"]["type"] == "influxdb"
    assert "schema.tagValues(" in variable["query"]
    assert 'tag: "run_id"' in variable["query"]
    # Without an explicit start, schema.tagValues looks back 30 days only.
    assert "start: v.timeRangeStart" in variable["query"]
    assert variable["refresh"] == 2  # on time range change, since the range bounds the values


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_influx_panel_filters_by_the_selected_runs(name: str) -> None:
    for where, flux in dashboard_queries(DASHBOARDS[name], "influxdb").items():
        if not where.startswith("variable"):
            assert "r.run_id =~ /^${run_id:regex}$/" in flux, where


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_layout(name: str) -> None:
    dashboard = DASHBOARDS[name]
    panels = list(all_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert ids == list(range(1, len(panels) + 1))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= GRID_WIDTH, panel["title"]
        assert grid["h"] > 0
    assert dashboard["editable"] is False
    assert "runwatch" in dashboard["tags"]


def test_dashboard_uids_are_unique_and_valid() -> None:
    uids = [d["uid"] for d in DASHBOARDS.values()]
    assert len(set(uids)) == len(uids) == 5
    assert all(0 < len(uid) <= 40 for uid in uids)


def test_events_are_annotations_on_the_influx_dashboards() -> None:
    for name in ("training-overview", "batches-gradients", "federated"):
        [annotation] = DASHBOARDS[name]["annotations"]["list"]
        assert annotation["datasource"]["uid"] == "runwatch-influxdb"
        assert 'r._measurement == "event"' in annotation["target"]["query"]
