"""Hostile names and values cost at most themselves, never their neighbours' rows.

Property tests against SQLite and a real PostgreSQL server: whatever a training loop hands
over as metric names (lone surrogates, NUL, control characters, very long text, non-strings),
as values or as steps, every other metric of the same call is stored.
"""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.store import Store
from collector.store.metric_rows import POSITION_KEYS
from collector.store.values import NAME_MAX_CHARS, NONFINITE_SUFFIX, metric_name, storable_name

NEIGHBOUR = "train_loss"
HOSTILE_NAMES = [
    "lone\ud800x",
    "\udc00",
    "\ud83d\ude00 pair written as two surrogates",
    "nul\x00inside",
    "\x1b[31mred\x1b[0m",
    "new\nline\r\t",
    "x" * (NAME_MAX_CHARS + 45),
    "\ud800" * 300,
    "😀" * 300,
    "",
    " ",
    "train/loss",
    "'; DROP TABLE run_metrics; --",
]

# Any code point, lone surrogates included (hypothesis leaves them out unless asked).
any_char = st.characters(exclude_categories=())
surrogate = st.characters(codec=None, categories=["Cs"])
hostile_name = st.one_of(
    st.sampled_from(HOSTILE_NAMES),
    st.text(st.one_of(any_char, surrogate, st.just("\x00")), max_size=300),
    st.integers(),
).filter(lambda name: name not in POSITION_KEYS and name != NEIGHBOUR)
finite = st.floats(allow_nan=False, allow_infinity=False)
hostile_value = st.one_of(
    st.floats(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.text(max_size=5),
    st.none(),
    st.binary(max_size=5),
    st.complex_numbers(),
    st.decimals(),
    st.just(Decimal("sNaN")),
    st.booleans(),
)
hostile_step = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30), st.floats(), st.text(max_size=3), st.none()
)
PROPERTY = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_one_hostile_name_keeps_its_neighbours(store: Store, name: str) -> None:
    run_id = store.create_run("hostile")
    written = store.persist_epoch_metrics(run_id, [{"epoch": 0, NEIGHBOUR: 0.25, name: 1.5}])

    stored = {(m.name, m.value, m.step) for m in store.all_metrics(run_id)}
    # metric rows hold the canonical name (as InfluxDB does); a name with no letter or digit
    # left is dropped, and one whose canonical name is the neighbour's replaces it
    canonical = metric_name(name)
    expected = {(NEIGHBOUR, 0.25, 0)}
    if canonical == NEIGHBOUR:
        expected = {(NEIGHBOUR, 1.5, 0)}
    elif canonical is not None:
        expected.add((canonical, 1.5, 0))
    assert written == len(expected)
    assert stored == expected


@PROPERTY
@given(metrics=st.dictionaries(hostile_name, finite, max_size=8))
def test_every_name_is_stored_and_neighbours_are_never_lost(
    store: Store, metrics: dict[object, float]
) -> None:
    run_id = store.create_run("hostile")
    epoch = {"epoch": 3, **metrics, NEIGHBOUR: 0.5}
    store.persist_epoch_metrics(run_id, [epoch])

    stored = sorted((m.name, m.value) for m in store.all_metrics(run_id))
    canonical: dict[str, float] = {}
    for key, value in epoch.items():
        name = metric_name(key)
        if key not in POSITION_KEYS and name is not None:
            canonical[name] = value  # the last of names with one canonical name wins
    assert stored == sorted(canonical.items())
    assert all(len(name) <= NAME_MAX_CHARS for name, _ in stored)


@PROPERTY
@given(values=st.lists(hostile_value, max_size=6), step=hostile_step)
def test_hostile_values_and_steps_cost_only_themselves(
    store: Store, values: list[object], step: object
) -> None:
    run_id = store.create_run("hostile")
    epoch: dict[str, object] = {"epoch": step, NEIGHBOUR: 0.5}
    epoch.update({f"m{i}": value for i, value in enumerate(values)})
    store.persist_epoch_metrics(run_id, [epoch])

    stored = {m.name: (m.value, m.step) for m in store.all_metrics(run_id)}
    assert stored[NEIGHBOUR][0] == 0.5
    for i, value in enumerate(values):
        number = _number(value)
        if number is not None and math.isfinite(number):
            assert stored[f"m{i}"][0] == number
        elif number is not None:
            assert stored[f"m{i}{NONFINITE_SUFFIX}"][0] == 1.0


@PROPERTY
@given(
    experiment=hostile_name,
    client=hostile_name,
    keys=st.lists(hostile_name, max_size=4),
    round_metrics=st.dictionaries(hostile_name, finite, max_size=4),
)
def test_hostile_names_everywhere_else_are_stored(
    store: Store,
    experiment: object,
    client: object,
    keys: list[object],
    round_metrics: dict[object, float],
) -> None:
    run_id = store.create_run(
        str(experiment), source_path=f"/data/{experiment}", host=str(client), hyperparams={"lr": 1}
    )
    store.save_hyperparams(run_id, {f"k{key}": "v" for key in keys})
    store.persist_epoch_metrics(run_id, [{NEIGHBOUR: 0.5}], client_id=str(client), round_number=1)
    store.record_round(run_id, 1, aggregated_metrics={**round_metrics, "loss": 0.5})
    store.add_server_evaluation(run_id, 1, {**round_metrics, "loss": 0.25})
    store.add_artifact(run_id, f"/ckpt/{experiment}", metric_name=str(client), metric_value=1.0)
    store.complete_run(run_id)

    run = store.get_run(run_id, with_metrics=True)
    assert run.experiment == storable_name(str(experiment))
    assert run.clients == (storable_name(str(client)),)
    assert run.hyperparams["lr"] == 1
    assert {storable_name(f"k{key}") for key in keys} <= set(run.hyperparams)
    assert (NEIGHBOUR, 0.5) in {(m.name, m.value) for m in run.metrics}
    names = {m.name for m in run.metrics}
    assert all(metric_name(name) == name for name in names), names
    assert store.server_evaluations(run_id)[0].loss == 0.25
    assert len(run.artifacts) == 1


def _number(value: object) -> float | None:
    """What the one value rule makes of ``value`` (see collector.values): an int no float
    can hold is dropped, as InfluxDB's points drop it (it was stored as non-finite here)."""
    if value is None or isinstance(value, str | bytes | complex):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (OverflowError, TypeError, ValueError):
        return None
