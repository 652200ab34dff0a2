"""Every Flux query in the dashboards and alert rules passes InfluxData's Flux checker, with
Grafana's macros declared and its dashboard variables substituted as Grafana would."""

from __future__ import annotations

import pytest

from tests.flux.checker import GRAFANA_PRELUDE, FluxChecker, substitute_grafana_variables
from tests.grafana._grafana import (
    SAMPLE_VARIABLES,
    alert_flux_queries,
    alerting_documents,
    dashboard_queries,
    dashboards,
)


def shipped_flux() -> dict[str, str]:
    queries = {
        f"{name}: {where}": substitute_grafana_variables(flux, SAMPLE_VARIABLES)
        for name, dashboard in dashboards().items()
        for where, flux in dashboard_queries(dashboard, "influxdb").items()
    }
    for where, flux in alert_flux_queries(alerting_documents()).items():
        queries[where] = substitute_grafana_variables(flux, SAMPLE_VARIABLES)
    return queries


def test_every_dashboard_and_rule_has_flux() -> None:
    queries = shipped_flux()
    per_source = {name.split(":")[0].split()[0] for name in queries}
    assert per_source == {
        "training-overview",
        "batches-gradients",
        "federated",
        "run-comparison",
        "live",  # its run_id variable
        "rule",
    }
    assert sum(name.startswith("rule ") for name in queries) == 4


@pytest.mark.integration
def test_every_flux_query_passes_the_checker(flux_checker: FluxChecker) -> None:
    flux_checker.assert_valid(shipped_flux(), prelude=GRAFANA_PRELUDE)


@pytest.mark.integration
def test_the_checker_rejects_broken_copies(flux_checker: FluxChecker) -> None:
    """The same check on deliberately broken copies of real queries fails."""
    queries = shipped_flux()
    heatmap = next(q for name, q in queries.items() if "Per-layer gradient norm" in name)
    variable = next(q for name, q in queries.items() if "variable run_id" in name)
    rule = queries["rule runwatch-val-loss-rising A"]
    broken = {
        "misspelt function": heatmap.replace("aggregateWindow(", "aggregateWindw("),
        "wrong argument": variable.replace("start: v.timeRangeStart", "begin: v.timeRangeStart"),
        "wrong type": rule.replace("tail(n: 4)", 'tail(n: "4")'),
    }
    assert all(
        broken[name] != original
        for name, original in zip(broken, (heatmap, variable, rule), strict=True)
    )
    errors = flux_checker.errors(broken, prelude=GRAFANA_PRELUDE)
    assert set(errors) == set(broken)
    with pytest.raises(AssertionError, match="misspelt function"):
        flux_checker.assert_valid(broken, prelude=GRAFANA_PRELUDE)
