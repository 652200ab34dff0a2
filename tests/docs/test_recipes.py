"""docs/recipes.md: every ```flux block is valid Flux as pasted (Explore and `influx query`
recipes declare their own variables; dashboard-panel recipes get Grafana's macros and
variables), one recipe per question, only schema names, and every recipe, run on the real
InfluxDB 2 over real runs, answers its question as the run store and the spool say."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from collector import schema
from collector.store import Store
from tests.collector.influx_wire import spool_points
from tests.flux.checker import GRAFANA_PRELUDE, FluxChecker, substitute_grafana_variables
from tests.servers.influx_runs import LoadedRuns

RECIPES = Path(__file__).resolve().parents[2] / "docs" / "recipes.md"
FLUX_BLOCK = re.compile(r"^```flux\n(.*?)^```$", re.MULTILINE | re.DOTALL)
GRAFANA_SAMPLES = {"run_id": '["20240101T000000Z-aaaa", "20240101T000000Z-bbbb"]'}


def sections() -> dict[str, list[str]]:
    """Flux blocks under each ``## question`` heading."""
    found: dict[str, list[str]] = {}
    for part in re.split(r"^## ", RECIPES.read_text(encoding="utf-8"), flags=re.MULTILINE)[1:]:
        heading = part.splitlines()[0].strip()
        found[heading] = FLUX_BLOCK.findall(part)
    return found


def blocks() -> dict[str, str]:
    return {heading: flux[0] for heading, flux in sections().items() if flux}


def is_dashboard_panel(flux: str) -> bool:
    return "v." in flux or "${" in flux


def test_one_flux_recipe_per_question() -> None:
    found = sections()
    assert len(found) >= 10
    for heading, flux in found.items():
        assert len(flux) == 1, heading
    questions = " ".join(found).lower()
    for topic in ("best recall", "diverge", "drags the federated model down", "gradients"):
        assert topic in questions


@pytest.mark.integration
def test_paste_ready_recipes_are_valid_flux_without_any_prelude(
    flux_checker: FluxChecker,
) -> None:
    standalone = {h: f for h, f in blocks().items() if not is_dashboard_panel(f)}
    assert len(standalone) >= 10
    flux_checker.assert_valid(standalone)


@pytest.mark.integration
def test_dashboard_panel_recipes_are_valid_flux_with_grafana_macros(
    flux_checker: FluxChecker,
) -> None:
    panels = {
        h: substitute_grafana_variables(f, GRAFANA_SAMPLES)
        for h, f in blocks().items()
        if is_dashboard_panel(f)
    }
    assert panels
    flux_checker.assert_valid(panels, prelude=GRAFANA_PRELUDE)


@pytest.mark.integration
def test_the_checker_would_catch_a_broken_recipe(flux_checker: FluxChecker) -> None:
    heading, flux = next(iter(blocks().items()))
    broken = flux.replace("|> group(", "|> groop(", 1)
    assert broken != flux
    assert flux_checker.errors({heading: broken})


def test_recipes_name_only_schema_measurements_fields_tags_and_events() -> None:
    known_fields = {f for m in schema.MEASUREMENTS.values() for f in m.fields}
    known_tags = {*schema.BASE_TAGS, *schema.FEDERATED_TAGS} | {
        t for m in schema.MEASUREMENTS.values() for t in m.tags
    }
    for heading, flux in blocks().items():
        for measurement in re.findall(r'r\._measurement == "(\w+)"', flux):
            assert measurement in schema.MEASUREMENTS, heading
        for field in re.findall(r'r\._field == "(\w+)"', flux):
            assert field.removesuffix(schema.NONFINITE_SUFFIX) in known_fields, (heading, field)
        for tag in re.findall(r'\br\.(\w+) == "', flux):  # compared with text: a tag
            assert tag.startswith("_") or tag in known_tags, (heading, tag)
        for event in re.findall(r'r\.event == "(\w+)"', flux):
            assert event in schema.EVENT_NAMES, heading


# -- every recipe run on the real InfluxDB 2, over real runs --------------------------------
#
# Each recipe's declared variables (its first lines) are replaced with the ``influx_runs``
# bucket, time range and run ids, as a user edits them; its answer is checked against the run
# store or, for what the store does not keep, the runs' spool files.

Rows = list[dict[str, Any]]
Check = Callable[[Rows, LoadedRuns, Store], None]


def flux_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def with_variables(flux: str, values: dict[str, str]) -> str:
    """``flux`` with each variable its first lines declare set to ``values[name]`` (every
    declared variable must be given one)."""
    lines = flux.splitlines()
    index = 0
    while index < len(lines) and (lines[index].startswith("import ") or not lines[index]):
        index += 1
    declared = []
    while index < len(lines) and (match := re.fullmatch(r"(\w+) = .+", lines[index])):
        declared.append(match[1])
        lines[index] = f"{match[1]} = {values[match[1]]}"
        index += 1
    assert sorted(declared) == sorted(values), (declared, sorted(values))
    return "\n".join(lines) + "\n"


def store_epochs(store: Store, run_id: str, metric: str) -> dict[int, float]:
    return {
        r.step: r.value
        for r in store.metrics_by_context(run_id, "epoch_end")
        if r.name == metric and r.client_id is None
    }


def results(rows: Rows, name: str) -> Rows:
    return [r for r in rows if r["result"] == name]


def approx(value: float) -> Any:
    return pytest.approx(value, rel=1e-9)


def check_recent_runs(rows: Rows, loaded: LoadedRuns, store: Store) -> None:
    assert sorted(r["run_id"] for r in rows) == sorted(loaded.all)
    for row in rows:
        run = store.get_run(row["run_id"])
        assert (row["experiment"], row["mode"]) == (run.experiment, run.mode)
    assert [r["first_seen"] for r in rows] == sorted((r["first_seen"] for r in rows), reverse=True)


def check_best_recall(rows: Rows, loaded: LoadedRuns, store: Store) -> None:
    assert sorted(r["run_id"] for r in rows) == sorted(loaded.centralized)
    for row in rows:
        values = store_epochs(store, row["run_id"], "val_recall")
        assert row["best"] == approx(max(values.values()))
        assert values[row["epoch"]] == approx(row["best"])
    assert [r["best"] for r in rows] == sorted((r["best"] for r in rows), reverse=True)


def check_curves(rows: Rows, loaded: LoadedRuns, store: Store) -> None:
    expected = {r: store_epochs(store, r, "val_loss") for r in loaded.centralized}
    assert [r["epoch"] for r in rows] == sorted({e for v in expected.values() for e in v})
    for row in rows:
        for run_id, values in expected.items():
            assert row[run_id] == (approx(values[row["epoch"]]) if row["epoch"] in values else None)


def check_divergence(rows: Rows, loaded: LoadedRuns, store: Store) -> None:
    expected = {}
    for run_id in loaded.centralized:
        val = store_epochs(store, run_id, "val_loss")
        train = store_epochs(store, run_id, "train_loss")
        epochs = sorted(set(val) & set(train))
        for previous, epoch in itertools.pairwise(epochs):
            if val[epoch] > val[previous] and train[epoch] < train[previous]:
                expected[run_id] = (epoch, val[epoch] - train[epoch], val[epoch] - val[previous])
                break
    assert loaded.diverging in expected  # its val_loss rises at every epoch
    assert loaded.healthy not in expected
    found = {r["run_id"]: (int(r["epoch"]), r["gap"], r["val_change"]) for r in rows}
    assert found.keys() == expected.keys()
    for run_id, (epoch, gap, change) in expected.items():
        assert found[run_id] == (epoch, approx(gap), approx(change))


def check_nonfinite(rows: Rows, loaded: LoadedRuns, store: Store) -> None:
    first = {}
    for run_id in loaded.all:
        flagged = [
            (p.time_ns, p.measurement, name)
            for measurement in ("batch", "epoch", "gradient")
            for p in spool_points(loaded.settings.home, run_id, measurement)
            for name in p.fields
            if name.endswith("_nonfinite")
        ]
        if flagged:
            first[run_id] = min(flagged)
    assert set(first) == {loaded.nonfinite}
    assert store_epochs(store, loaded.nonfinite, "val_loss_nonfinite")  # the store agrees
    assert [r["run_id"] for r in rows] == [loaded.nonfinite]
    time_ns, measurement, name = first[loaded.nonfinite]
    row = rows[0]
    assert row["_time"] == datetime.fromtimestamp(time_ns // 1000 / 1e6, UTC)
    assert (row["_measurement"], row["_field"]) == (measurement, name)


def client_replies(loaded: LoadedRuns, field: str) -> dict[int, dict[str, float]]:
    replies: dict[int, dict[str, float]] = {}
    for point in spool_points(loaded.settings.home, loaded.federated, "client_round"):
        if field in point.fields:
            replies.setdefault(int(point.tags["round"]), {})[point.tags["client_id"]] = float(
                point.fields[field]
            )
    return replies


def check_dragging_client(rows: Rows, loaded: LoadedRuns, store: Store) -> None:
    replies = client_replies(loaded, "val_loss")
    assert set(store.get_run(loaded.federated).clients) == {c for r in replies.values() for c in r}
    by_client: dict[str, list[float]] = {}
    worst: dict[str, int] = {}
    for values in replies.values():
        for client, value in values.items():
            by_client.setdefault(client, []).append(value)
        loser = max(values, key=lambda c: values[c])
        worst[loser] = worst.get(loser, 0) + 1
    means = results(rows, "mean_val_loss_by_client")
    assert {r["client_id"]: r["mean_val_loss"] for r in means} == {
        c: approx(sum(v) / len(v)) for c, v in by_client.items()
    }
    assert [r["mean_val_loss"] for r in means] == sorted(
        (r["mean_val_loss"] for r in means), reverse=True
    )
    counted = results(rows, "rounds_as_worst")
    assert {r["client_id"]: r["rounds_as_worst"] for r in counted} == worst


def check_server_vs_aggregate(rows: Rows, loaded: LoadedRuns, store: Store) -> None:
    server = {e.round_number: e.loss for e in store.server_evaluations(loaded.federated)}
    aggregated = {
        r.round_number: r.value
        for r in store.aggregated_metrics(loaded.federated)
        if r.name == "val_loss"
    }
    assert server and set(server) == set(aggregated)
    by_round = {r["round"]: r for r in rows}
    assert set(server) <= set(by_round)
    for number, row in by_round.items():
        if number not in server:
            assert number == 0 and row["aggregated"] is None  # initial evaluation only
            continue
        assert (row["server"], row["aggregated"]) == (
            approx(cast(float, server[number])),
            approx(aggregated[number]),
        )
        assert row["gap"] == pytest.approx(row["server"] - row["aggregated"], abs=1e-12)


def check_client_spread(rows: Rows, loaded: LoadedRuns, store: Store) -> None:
    replies = client_replies(loaded, "val_acc")
    aggregated = {
        r.round_number: r.value
        for r in store.aggregated_metrics(loaded.federated)
        if r.name == "val_acc"
    }
    assert [r["round"] for r in rows] == sorted(replies)
    for row in rows:
        values = replies[row["round"]]
        assert (row["lowest"], row["highest"]) == (
            approx(min(values.values())),
            approx(max(values.values())),
        )
        assert values[row["lowest_client"]] == approx(row["lowest"])
        assert values[row["highest_client"]] == approx(row["highest"])
        assert row["lowest"] <= aggregated[row["round"]] <= row["highest"]


EXPLODE_ABOVE, VANISH_BELOW = 0.5, 0.3


def check_gradients(rows: Rows, loaded: LoadedRuns, store: Store) -> None:
    assert [r["run_id"] for r in rows] == sorted(loaded.all)
    for row in rows:
        points = spool_points(loaded.settings.home, row["run_id"], "gradient")
        norms = [float(p.fields["total_norm"]) for p in points if "total_norm" in p.fields]
        assert row["samples"] == len(norms) > 0
        assert row["nonfinite"] == sum("total_norm_nonfinite" in p.fields for p in points)
        assert row["exploding"] == sum(n > EXPLODE_ABOVE for n in norms)
        assert row["vanishing"] == sum(n < VANISH_BELOW for n in norms)
        assert (row["lowest"], row["highest"]) == (approx(min(norms)), approx(max(norms)))
        assert row["mean"] == approx(sum(norms) / len(norms))
    assert {r["run_id"]: r["nonfinite"] for r in rows}[loaded.nonfinite] > 0


def check_layers(rows: Rows, loaded: LoadedRuns, store: Store) -> None:
    norms: dict[str, list[float]] = {}
    for point in spool_points(loaded.settings.home, loaded.healthy, "gradient_layer"):
        if "norm" in point.fields:
            norms.setdefault(point.tags["layer"], []).append(float(point.fields["norm"]))
    assert norms
    assert {r["layer"]: r["mean_norm"] for r in rows} == {
        layer: approx(sum(v) / len(v)) for layer, v in norms.items()
    }
    assert [r["mean_norm"] for r in rows] == sorted((r["mean_norm"] for r in rows), reverse=True)


def check_throughput(rows: Rows, loaded: LoadedRuns, store: Store) -> None:
    expected = {}
    for run_id in loaded.all:
        speeds = [
            float(p.fields["samples_per_s"])
            for p in spool_points(loaded.settings.home, run_id, "batch")
            if "samples_per_s" in p.fields
        ]
        expected[run_id] = approx(sum(speeds) / len(speeds))
    assert {r["run_id"]: r["samples_per_s"] for r in rows} == expected
    assert [r["samples_per_s"] for r in rows] == sorted(
        (r["samples_per_s"] for r in rows), reverse=True
    )


def check_events(rows: Rows, loaded: LoadedRuns, store: Store) -> None:
    wanted = ("early_stopping", "client_failure", "alert")
    expected = sorted(
        (
            (p.time_ns, p.tags["run_id"], p.tags["event"], p.tags.get("client_id"))
            for run_id in loaded.all
            for p in spool_points(loaded.settings.home, run_id, "event")
            if p.tags["event"] in wanted
        ),
        reverse=True,
    )
    assert expected  # the federated run's failing client
    assert [(r["run_id"], r["event"], r["client_id"]) for r in rows] == [e[1:] for e in expected]
    failed = [r for r in rows if r["event"] == "client_failure"]
    assert failed and all(r["client_id"] in store.get_run(loaded.federated).clients for r in failed)


def check_panel(rows: Rows, loaded: LoadedRuns, store: Store) -> None:
    for run_id in loaded.centralized:
        values = store_epochs(store, run_id, "val_loss")
        found = [r["_value"] for r in rows if r["run_id"] == run_id]
        assert found == [approx(values[e]) for e in sorted(values)]
    assert {r["run_id"] for r in rows} == set(loaded.centralized)


RECIPE_CHECKS: dict[str, tuple[Callable[[LoadedRuns], dict[str, str]], Check]] = {
    "Which runs ran recently, in which experiment and mode?": (lambda _: {}, check_recent_runs),
    "Which run had the best recall?": (lambda _: {"metric": '"val_recall"'}, check_best_recall),
    "How do the validation-loss curves of a few runs compare, epoch by epoch?": (
        lambda loaded: {"runs": json.dumps(list(loaded.centralized))},
        check_curves,
    ),
    "Where did the loss diverge?": (
        lambda loaded: {"runs": json.dumps(list(loaded.centralized))},
        check_divergence,
    ),
    "When did the loss become NaN or infinite?": (lambda _: {}, check_nonfinite),
    "Which client drags the federated model down?": (
        lambda loaded: {"run": json.dumps(loaded.federated)},
        check_dragging_client,
    ),
    "Does the server's evaluation agree with the clients' aggregate?": (
        lambda loaded: {"run": json.dumps(loaded.federated), "metric": '"loss"'},
        check_server_vs_aggregate,
    ),
    "How far apart are the clients, round by round?": (
        lambda loaded: {"run": json.dumps(loaded.federated)},
        check_client_spread,
    ),
    "Are the gradients healthy?": (
        lambda _: {"explodeAbove": repr(EXPLODE_ABOVE), "vanishBelow": repr(VANISH_BELOW)},
        check_gradients,
    ),
    "Which layers have the largest gradients?": (
        lambda loaded: {"run": json.dumps(loaded.healthy)},
        check_layers,
    ),
    "Which runs trained fastest?": (lambda _: {}, check_throughput),
    "Which runs stopped early, failed a client or raised an alert?": (lambda _: {}, check_events),
    "A dashboard panel: validation loss of the runs picked in a variable": (
        lambda _: {},
        check_panel,
    ),
}


def test_every_recipe_has_a_check_on_real_data() -> None:
    assert set(RECIPE_CHECKS) == set(blocks())


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("heading", list(RECIPE_CHECKS))
def test_recipe_answers_its_question_on_real_runs(influx_runs: LoadedRuns, heading: str) -> None:
    flux = blocks()[heading]
    variables, check = RECIPE_CHECKS[heading]
    if is_dashboard_panel(flux):
        text = (
            f"v = {{timeRangeStart: {flux_time(influx_runs.start)}, "
            f"timeRangeStop: {flux_time(influx_runs.stop)}, "
            f"defaultBucket: {json.dumps(influx_runs.bucket)}}}\n"
            + substitute_grafana_variables(
                flux, {"run_id": json.dumps(list(influx_runs.centralized))}
            )
        )
    else:
        text = with_variables(
            flux,
            {
                "bucket": json.dumps(influx_runs.bucket),
                "start": flux_time(influx_runs.start),
                **variables(influx_runs),
            },
        )
    rows = influx_runs.influxdb2.query(text)
    assert rows, heading
    store = influx_runs.store()
    try:
        check(rows, influx_runs, store)
    finally:
        store.dispose()
