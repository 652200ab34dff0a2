"""The Grafana emulation of tests/grafana/_grafana_runtime.py reproduces Grafana's own test
cases (inputs and expected outputs taken from Grafana's sources)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.grafana import _grafana_runtime as grafana


def test_macros_as_in_grafanas_test_interpolate() -> None:
    """pkg/tsdb/influxdb/flux/macros_test.go TestInterpolate (its nanosecond times cut to
    microseconds, the precision of a Python datetime)."""
    before = (
        "v.timeRangeStart, something.timeRangeStop, XYZ.bucket, uuUUu.defaultBucket, "
        "aBcDefG.organization, window.windowPeriod, a91{}.bucket, $__interval, $__interval_ms"
    )
    after = (
        '2021-09-22T10:12:51.310985Z, 2021-09-22T11:12:51.310985Z, "grafana2", "grafana3", '
        '"grafana1", 1m1.258s, a91{}.bucket, 1m, 61258'
    )
    start = datetime(2021, 9, 22, 10, 12, 51, 310985, tzinfo=UTC)
    options = grafana.DatasourceOptions("grafana1", "grafana3", bucket="grafana2")
    assert (
        grafana.interpolate_macros(
            before,
            start=start,
            stop=start + timedelta(hours=1),
            interval_ms=61258,
            options=options,
        )
        == after
    )


def test_go_duration_strings() -> None:
    """time.Duration.String() of whole milliseconds, as v.windowPeriod receives it."""
    assert [grafana.go_duration(ms) for ms in (1, 200, 1000, 60000, 90500, 3600000, 86400000)] == [
        "1ms",
        "200ms",
        "1s",
        "1m0s",
        "1m30.5s",
        "1h0m0s",
        "24h0m0s",
    ]
    assert grafana.rfc3339_nano(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2024-01-02T03:04:05Z"


def test_panel_interval_is_the_rounded_range_per_point() -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    assert grafana.panel_interval_ms(start, start + timedelta(hours=24), 1000) == 60000
    assert grafana.panel_interval_ms(start, start + timedelta(minutes=7), 1000) == 500
    assert grafana.panel_interval_ms(start, start + timedelta(hours=1), 1000) == 5000


def test_variables_as_in_grafanas_format_registry() -> None:
    """grafana/scenes formatRegistry.test.ts / sceneInterpolator.test.ts cases for the formats
    Flux queries use."""
    multi = grafana.Variable(["test.", "test2"])
    assert grafana.interpolate_variables("${v:regex}", {"v": multi}) == r"(test\.|test2)"
    assert grafana.interpolate_variables("${v:regex}", {"v": grafana.Variable(["a.b"])}) == r"a\.b"
    assert grafana.interpolate_variables("${v:regex}", {"v": grafana.Variable("a/b")}) == r"a\/b"
    assert grafana.interpolate_variables("${v}", {"v": multi}) == "{test.,test2}"  # glob
    assert grafana.interpolate_variables("$v [[v]]", {"v": grafana.Variable("x")}) == "x x"
    everything = grafana.Variable([grafana.ALL], options=["a", "b"], all_value=".*")
    assert grafana.interpolate_variables("/^${v:regex}$/", {"v": everything}) == "/^.*$/"
    no_custom = grafana.Variable([grafana.ALL], options=["a.", "b"])
    assert grafana.interpolate_variables("${v:regex}", {"v": no_custom}) == r"(a\.|b)"
    assert grafana.interpolate_variables("${other:regex} $w", {}) == "${other:regex} $w"
    # a run id: '-' is no regex special character for Grafana
    run = "20240101T000000Z-abcdefghjk"
    assert grafana.interpolate_variables("${v:regex}", {"v": grafana.Variable([run])}) == run


def test_threshold_and_reduce_as_grafanas_expressions() -> None:
    frame = grafana.Frame(
        "", {"run_id": "a"}, {"Time": [1, 2, 3], "Value": [1.0, float("nan"), 2.0]}
    )
    labels = (("run_id", "a"),)
    assert grafana.reduce([frame], "sum") == {labels: 3.0}
    assert grafana.reduce([frame], "last") == {labels: 2.0}
    empty = grafana.Frame("", {"run_id": "a"}, {"Time": [], "Value": []})
    assert grafana.reduce([empty], "last") == {labels: None}
    assert grafana.above({labels: None}, 0.0) == {labels: False}
    assert grafana.above({labels: 0.5}, 0.0) == {labels: True}
