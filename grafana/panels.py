"""Panel and variable factories shared by the dashboards (grafana-foundation-sdk builders)."""

from __future__ import annotations

from collections.abc import Sequence

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import heatmap, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders import trend as trend_builders
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import common, dashboard
from grafana_foundation_sdk.models import heatmap as heatmap_models

from grafana import datasources, flux_panels
from grafana.flux import RUN_ID_VARIABLE, FluxTarget

FULL = 24
HALF = 12
THIRD = 8
QUARTER = 6
HEIGHT = 8

Target = cogbuilder.Builder[cogvariants.Dataquery]

LEGEND_CALCS = ["lastNotNull", "min", "max"]


def run_id_variable(*measurements: str) -> dashboard_builders.QueryVariable:
    """The multi-select ``run_id`` variable, its values from Flux (runs with points of
    ``measurements`` in the dashboard's time range; any measurement when none is named)."""
    return (
        dashboard_builders.QueryVariable(RUN_ID_VARIABLE)
        .label("Run")
        .description("Runs with points in the time range (newest first).")
        .datasource(datasources.influxdb())
        .query(flux_panels.run_ids_variable(*measurements))
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(dashboard.VariableOption(selected=True, text=["All"], value=["$__all"]))
        .refresh(dashboard.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard.VariableSort.ALPHABETICAL_DESC)
    )


def flux(query: str, ref_id: str = "A") -> FluxTarget:
    return FluxTarget(query, ref_id)


def promql(expr: str, legend: str, ref_id: str = "A") -> prometheus.Dataquery:
    return (
        prometheus.Dataquery()
        .expr(expr)
        .legend_format(legend)
        .range()
        .ref_id(ref_id)
        .datasource(datasources.prometheus())
    )


def row(title: str) -> dashboard_builders.Row:
    return dashboard_builders.Row(title)


def _legend() -> common_builders.VizLegendOptions:
    return (
        common_builders.VizLegendOptions()
        .display_mode(common.LegendDisplayMode.TABLE)
        .placement(common.LegendPlacement.BOTTOM)
        .show_legend(True)
        .calcs(LEGEND_CALCS)
    )


def _multi_tooltip() -> common_builders.VizTooltipOptions:
    return common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI)


def _log_scale() -> common_builders.ScaleDistributionConfig:
    return common_builders.ScaleDistributionConfig().type(common.ScaleDistribution.LOG).log(10)


def _thresholds(
    steps: Sequence[tuple[float | None, str]],
) -> dashboard_builders.ThresholdsConfig:
    return (
        dashboard_builders.ThresholdsConfig()
        .mode(dashboard.ThresholdsMode.ABSOLUTE)
        .steps([dashboard.Threshold(value=value, color=color) for value, color in steps])
    )


def time_series(
    title: str,
    description: str,
    targets: Sequence[Target],
    *,
    datasource: dashboard.DataSourceRef | None = None,
    unit: str | None = None,
    log_scale: bool = False,
    width: int = HALF,
    height: int = HEIGHT,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(datasource or datasources.influxdb())
        .targets(list(targets))
        .span(width)
        .height(height)
        .legend(_legend())
        .tooltip(_multi_tooltip())
        .show_points(common.VisibilityMode.AUTO)
        .span_nulls(True)
    )
    if unit is not None:
        panel = panel.unit(unit)
    if log_scale:
        panel = panel.scale_distribution(_log_scale())
    return panel


def trend(
    title: str,
    description: str,
    target: Target,
    *,
    x_field: str,
    unit: str | None = None,
    bars: bool = False,
    width: int = HALF,
    height: int = HEIGHT,
) -> trend_builders.Panel:
    """Series against a numeric x (epoch, round) instead of time: one frame, a column per
    series; ``bars`` draws counts as bars."""
    panel = (
        trend_builders.Panel()
        .title(title)
        .description(description)
        .datasource(datasources.influxdb())
        .with_target(target)
        .x_field(x_field)
        .span(width)
        .height(height)
        .legend(_legend())
        .tooltip(_multi_tooltip())
        .show_points(common.VisibilityMode.ALWAYS)
        .point_size(5)
        .span_nulls(True)
    )
    if bars:
        panel = panel.draw_style(common.GraphDrawStyle.BARS).fill_opacity(60)
    if unit is not None:
        panel = panel.unit(unit)
    return panel


def data_table(
    title: str,
    description: str,
    target: Target,
    *,
    width: int = FULL,
    height: int = HEIGHT,
    decimals: int | None = None,
) -> table.Panel:
    panel = (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(datasources.influxdb())
        .with_target(target)
        .span(width)
        .height(height)
        .filterable(True)
    )
    if decimals is not None:
        panel = panel.decimals(decimals)
    return panel


def layer_heatmap(title: str, description: str, target: Target) -> heatmap.Panel:
    """Rows are layers (the frame's columns), cells their gradient norm; repeated per run."""
    return (
        heatmap.Panel()
        .title(title)
        .description(description)
        .datasource(datasources.influxdb())
        .with_target(target)
        .calculate(False)
        .color(
            heatmap.HeatmapColorOptions()
            .mode(heatmap_models.HeatmapColorMode.SCHEME)
            .scheme("Oranges")
            .scale(heatmap_models.HeatmapColorScale.EXPONENTIAL)
            .exponent(0.5)
            .steps(64)
        )
        .repeat(RUN_ID_VARIABLE)
        .repeat_direction("v")
        .span(FULL)
        .height(10)
    )


def live_stat(
    title: str,
    description: str,
    targets: Sequence[Target],
    *,
    unit: str,
    thresholds: Sequence[tuple[float | None, str]] = ((None, "green"),),
    show_name: bool = False,
    width: int = QUARTER,
    height: int = 6,
) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(datasources.prometheus())
        .targets(list(targets))
        .unit(unit)
        .thresholds(_thresholds(thresholds))
        .color_scheme(dashboard_builders.FieldColor().mode(dashboard.FieldColorModeId.THRESHOLDS))
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.NONE)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .text_mode(common.BigValueTextMode.NAME if show_name else common.BigValueTextMode.AUTO)
        .span(width)
        .height(height)
    )
