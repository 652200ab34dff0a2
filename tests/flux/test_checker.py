"""The Flux checker itself: it must reject bad Flux and accept the Flux runwatch writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.flux.checker import (
    GRAFANA_PRELUDE,
    Diagnostic,
    FluxChecker,
    FluxCheckerUnavailable,
    check_flux,
    checker_unavailable_reason,
    flux_literal,
    format_errors,
    params_prelude,
    substitute_grafana_variables,
)

TYPICAL_DASHBOARD_QUERY = """\
import "influxdata/influxdb/schema"

from(bucket: v.defaultBucket)
    |> range(start: v.timeRangeStart, stop: v.timeRangeStop)
    |> filter(fn: (r) => r._measurement == "epoch" and r.run_id =~ /^(run-a|run-b)$/)
    |> filter(fn: (r) => r._field == "train_loss" or r._field == "val_loss")
    |> aggregateWindow(every: v.windowPeriod, fn: mean, createEmpty: false)
    |> schema.fieldsAsCols()
    |> yield(name: "epoch_losses")
"""

CLIENT_PARAMS_QUERY = """\
from(bucket: bucket)
    |> range(start: start)
    |> filter(fn: (r) => r._measurement == "epoch" and r.run_id == run_id)
    |> filter(fn: (r) => r._field == metric)
    |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")
    |> limit(n: max_rows)
    |> yield(name: "curve")
"""


def messages(diagnostics: list[Diagnostic]) -> list[str]:
    return [d.message for d in diagnostics if d.is_error]


@pytest.mark.integration
class TestRejectsBadFlux:
    def test_syntax_error(self, flux_checker: FluxChecker) -> None:
        errors = flux_checker.errors({"unclosed": 'from(bucket: "x") |> range(start: -1h'})
        assert "expected RPAREN, got EOF" in messages(errors["unclosed"])

    def test_unknown_function(self, flux_checker: FluxChecker) -> None:
        errors = flux_checker.errors({"typo": 'from(bucket:"x") |> rangee(start:-1h)'})
        [error] = errors["typo"]
        assert error.message == "undefined identifier rangee"
        assert (error.file, error.line, error.column) == ("query", 1, 21)

    def test_unknown_package_member(self, flux_checker: FluxChecker) -> None:
        query = 'import "influxdata/influxdb/schema"\nschema.tagValuez(bucket: "b", tag: "run_id")'
        errors = flux_checker.errors({"member": query})
        assert any("tagValuez" in m for m in messages(errors["member"]))

    def test_wrong_argument_name(self, flux_checker: FluxChecker) -> None:
        errors = flux_checker.errors({"arg": 'from(bucket: "x") |> range(begin: -1h)'})
        found = messages(errors["arg"])
        assert any("unexpected argument begin" in m for m in found)
        assert "missing required argument start" in found

    def test_wrong_argument_type(self, flux_checker: FluxChecker) -> None:
        errors = flux_checker.errors({"type": "from(bucket: 42) |> range(start: -1h)"})
        assert "expected string but found int (argument bucket)" in messages(errors["type"])

    def test_grafana_macro_without_prelude_is_undefined(self, flux_checker: FluxChecker) -> None:
        errors = flux_checker.errors({"macro": TYPICAL_DASHBOARD_QUERY})
        assert "undefined identifier v" in messages(errors["macro"])

    def test_field_missing_from_prelude_record(self, flux_checker: FluxChecker) -> None:
        query = 'from(bucket: "b") |> range(start: v.timeRangeBegin)'
        errors = flux_checker.errors({"label": query}, prelude=GRAFANA_PRELUDE)
        assert "record is missing label timeRangeBegin" in messages(errors["label"])

    def test_undeclared_client_parameter(self, flux_checker: FluxChecker) -> None:
        prelude = params_prelude({"bucket": "training", "start": timedelta(days=-30)})
        errors = flux_checker.errors({"curve": CLIENT_PARAMS_QUERY}, prelude=prelude)
        assert {"undefined identifier run_id", "undefined identifier metric"} <= set(
            messages(errors["curve"])
        )

    def test_parameter_of_the_wrong_type(self, flux_checker: FluxChecker) -> None:
        prelude = params_prelude({"n": "ten"})
        errors = flux_checker.errors({"limit": 'from(bucket: "b") |> limit(n: n)'}, prelude=prelude)
        assert any("expected int but found string" in m for m in messages(errors["limit"]))

    def test_broken_prelude_is_reported(self, flux_checker: FluxChecker) -> None:
        errors = flux_checker.errors({"q": "v.timeRangeStart"}, prelude="v = {timeRangeStart: ")
        assert errors["q"] and {d.file for d in errors["q"]} == {"prelude"}

    def test_assert_valid_names_the_query_and_line(self, flux_checker: FluxChecker) -> None:
        queries = {"good": 'from(bucket: "b") |> range(start: -1h)', "bad": "x = 1\ny = rangee"}
        with pytest.raises(AssertionError) as raised:
            flux_checker.assert_valid(queries)
        report = str(raised.value)
        assert "'bad'" in report and "'good'" not in report
        assert "query:2:5: error: undefined identifier rangee" in report
        assert "| y = rangee" in report


@pytest.mark.integration
class TestAcceptsGoodFlux:
    def test_grafana_dashboard_query(self, flux_checker: FluxChecker) -> None:
        flux_checker.assert_valid({"dashboard": TYPICAL_DASHBOARD_QUERY}, prelude=GRAFANA_PRELUDE)

    def test_grafana_dashboard_variables(self, flux_checker: FluxChecker) -> None:
        query = substitute_grafana_variables(
            'import "influxdata/influxdb/schema"\n'
            'schema.tagValues(bucket: v.defaultBucket, tag: "run_id", start: -5y)\n'
            '    |> filter(fn: (r) => r._value =~ /^${run_id:regex}$/ or r._value == "$experiment")',
            {"run_id": "run-a|run-b", "experiment": "pneumonia"},
        )
        flux_checker.assert_valid({"variables": query}, prelude=GRAFANA_PRELUDE)

    def test_client_parameters_declared_as_the_client_sends_them(
        self, flux_checker: FluxChecker
    ) -> None:
        prelude = params_prelude(
            {
                "bucket": "training",
                "start": datetime(2024, 1, 1, tzinfo=UTC),
                "run_id": 'run") |> drop()',
                "metric": "val_loss",
                "max_rows": 500,
            }
        )
        flux_checker.assert_valid({"curve": CLIENT_PARAMS_QUERY}, prelude=prelude)

    def test_http_api_params_record(self, flux_checker: FluxChecker) -> None:
        query = (
            "from(bucket: params.bucket)\n"
            "    |> range(start: params.start)\n"
            "    |> filter(fn: (r) => r.run_id == params.run_id)\n"
        )
        prelude = 'params = {bucket: "training", start: -30d, run_id: "run-a"}\n'
        flux_checker.assert_valid({"record": query}, prelude=prelude)

    def test_queries_do_not_share_declarations(self, flux_checker: FluxChecker) -> None:
        queries = {"first": "x = 1\nx", "second": 'x = "again"\nx'}
        assert flux_checker.errors(queries) == {}

    def test_many_queries_in_one_call(self, flux_checker: FluxChecker) -> None:
        queries = {f"q{i}": f'from(bucket: "b") |> range(start: -{i + 1}h)' for i in range(40)}
        queries["q17"] = 'from(bucket: "b") |> rang(start: -1h)'
        assert list(flux_checker.errors(queries)) == ["q17"]


class TestLiterals:
    def test_scalar_literals_match_influxdb_client_types(self) -> None:
        assert flux_literal(True) == "true"
        assert flux_literal(7) == "7"
        assert flux_literal(1e-7) == "0.0000001"
        assert flux_literal(3.0) == "3.0"
        assert flux_literal(timedelta(minutes=-5)) == "-300000000us"
        assert flux_literal(datetime(2024, 5, 1, 12, 0, 0, 5)) == "2024-05-01T12:00:00.000005000Z"
        assert flux_literal(["a", 1]) == '["a", 1]'

    def test_strings_are_escaped(self) -> None:
        assert flux_literal('a"b\\c${d}') == '"a\\"b\\\\c\\${d}"'

    def test_non_finite_float_has_no_literal(self) -> None:
        with pytest.raises(ValueError):
            flux_literal(float("nan"))

    def test_none_parameters_are_dropped_like_the_client_does(self) -> None:
        assert params_prelude({"a": None, "b": 1}) == "option b = 1\n"

    def test_unknown_grafana_variable_is_an_error(self) -> None:
        with pytest.raises(KeyError, match="run_idd"):
            substitute_grafana_variables('r.run_id == "${run_idd}"', {"run_id": "x"})

    def test_format_errors_shows_prelude_lines(self) -> None:
        diagnostic = Diagnostic("boom", 1, 2, 1, "prelude")
        report = format_errors({"q": [diagnostic]}, {"q": "x"}, prelude="a = 1\nb = (")
        assert "prelude:2:1: error: boom" in report and "| b = (" in report


class TestUnavailable:
    def test_missing_node_is_reported_not_crashed(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PATH", "/nonexistent")
        assert "node not found" in (checker_unavailable_reason() or "")
        with pytest.raises(FluxCheckerUnavailable, match="node not found"):
            check_flux({"q": "1"})
