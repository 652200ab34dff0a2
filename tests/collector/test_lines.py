"""The compiled flush (``collector._lines``): the bytes, point count and observations of the
Python flush (``Recorder._lines``) for each run of entries it takes, up to the first it does
not; and the flush of a whole queue (``Recorder._queued_bytes``, the compiled runs and the
Python path's entries between them) writes what the Python flush writes."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from collector import Recorder, RecorderTuning, new_run_id
from collector import recorder as recorder_module
from collector.points import PointBuilder
from tests.collector.test_recorder import EXPERIMENT, make_settings, spool_lines

OBSERVED = frozenset({"batch", "gradient", "client_round"})


class Collecting:
    """An observer of the measurements a training loop's gauges show."""

    observed_measurements = OBSERVED

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, float], dict[str, str]]] = []

    def observe(
        self, measurement: str, fields: Mapping[str, float], tags: Mapping[str, str]
    ) -> None:
        self.seen.append((measurement, dict(fields), dict(tags)))


@pytest.fixture(autouse=True)
def compiled() -> None:
    """Skips where the module is not built (no C compiler); under CI=true it must be."""
    if recorder_module._queued_lines is None:
        if os.environ.get("CI") == "true":
            pytest.fail("collector._lines is not built (pip install -e . compiles it)")
        pytest.skip("collector._lines is not built (no C compiler at install)")


def quiet_recorder(home: Path, observer: Collecting | None = None) -> Recorder:
    """A recorder that flushes only when told (its flusher never wakes)."""
    return Recorder(
        new_run_id(),
        experiment=EXPERIMENT,
        settings=make_settings(home),
        observers=[observer] if observer else [],
        tuning=RecorderTuning(flush_lines=10**6, queue_limit=10**6, flush_interval_s=3600),
    )


def compiled_lines(rec: Recorder, start: int = 0) -> tuple[bytes, int, list[Any], int] | None:
    """The compiled run of the queue from ``start``: bytes, points, observations and where it
    stopped."""
    queued = list(rec._queue.entries)
    assert recorder_module._queued_lines is not None
    return recorder_module._queued_lines(queued, start, *rec._line_caches, rec._observed)


def python_lines(rec: Recorder, stop: int | None = None) -> tuple[bytes, int, list[Any]]:
    observations: list[Any] = []
    texts, points = rec._lines(list(rec._queue.entries)[:stop], observations)
    return "".join(texts).encode("utf-8", "replace"), points, observations


def flushed_lines(rec: Recorder) -> tuple[bytes, int, list[Any]]:
    """What a flush of the queue writes and observers see (compiled runs, Python between)."""
    observations: list[Any] = []
    data, points = rec._queued_bytes(list(rec._queue.entries), observations)
    return data, points, observations


def count_python_builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on, the number of entries of each call of the Python path, in order."""
    calls: list[int] = []
    python_path = Recorder._lines

    def counting(rec: Recorder, queued: list[Any], observations: list[Any]) -> Any:
        calls.append(len(queued))
        return python_path(rec, queued, observations)

    monkeypatch.setattr(Recorder, "_lines", counting)
    return calls


def training_steps(rec: Recorder, steps: range) -> None:
    """What the Lightning adapter records at every step: the batch point, the gradient
    summary and a norm per layer; an event now and then."""
    layers = ["net.0.weight", "net.0.bias", "net.2.weight", "层.bias"]
    for step in steps:
        rec.record(
            "batch",
            {"loss": 1 / (step + 1), "train_acc": 0.5, "batch_idx": step, "step": float(step)},
        )
        norms = [0.1 * (layer + 1) + step for layer in range(len(layers))]
        rec.record("gradient", {"total_norm": sum(norms), "max_norm": max(norms), "step": step})
        rec.record_series("gradient_layer", "norm", norms, "layer", layers, {"step": float(step)})
        if step % 7 == 0:
            rec.event("checkpoint", text=f"step={step}")


def test_a_training_loops_flushes_take_the_compiled_path_after_each_shapes_first_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the first flush the Python path builds the first entry of each shape (the batch
    point, then the gradient summary and the layers' series, which the compiled builder
    declines in a row), which resolves their fields and tags; every other entry, and every
    later flush, is compiled. The spool holds each point's line as ``build`` writes it
    alone."""
    built_by_python = count_python_builds(monkeypatch)
    observer = Collecting()
    per_flush: list[list[int]] = []
    with quiet_recorder(tmp_path, observer) as rec:
        for first in range(0, 30, 10):
            training_steps(rec, range(first, first + 10))
            rec.flush()
            per_flush.append(built_by_python[:])
            built_by_python.clear()
        lines = spool_lines(rec)
        spooled = rec.stats.points_spooled
    assert per_flush == [[1, 2], [], []]
    assert spooled == len(lines) == 30 * 6 + 5
    builder = PointBuilder(rec.base_tags)
    batch = [line for line in lines if line.startswith("batch,")]
    assert len(batch) == 30
    for step, line in enumerate(batch):
        time_ns = int(line.rsplit(" ", 1)[1])
        fields = {"loss": 1 / (step + 1), "train_acc": 0.5, "batch_idx": step, "step": step}
        assert line + "\n" == builder.build("batch", fields, None, time_ns)[0]
    layer_lines = [line for line in lines if line.startswith("gradient_layer,")]
    assert len(layer_lines) == 120 and ",layer=层.bias," in layer_lines[-1]
    assert [seen[1]["step"] for seen in observer.seen if seen[0] == "batch"] == list(range(30))
    assert all(seen[2] == rec.base_tags for seen in observer.seen)


def test_the_compiled_and_python_flush_agree_on_a_training_queue(tmp_path: Path) -> None:
    observer = Collecting()
    with quiet_recorder(tmp_path, observer) as rec:
        training_steps(rec, range(3))
        rec.flush()
        training_steps(rec, range(3, 40))
        made = compiled_lines(rec)
        assert made is not None
        assert made[3] == len(rec._queue.entries)
        assert made[:3] == python_lines(rec)
        assert made[1] == 37 * 6 + 5
        assert made[2] and all(seen[0] in OBSERVED | {"event"} for seen in made[2])


def warmed(tmp_path: Path) -> Recorder:
    """A recorder whose builder has resolved a training loop's fields and layer tags."""
    rec = quiet_recorder(tmp_path, Collecting())
    training_steps(rec, range(2))
    rec.flush()
    return rec


@pytest.mark.parametrize(
    "record",
    [
        pytest.param(lambda rec: rec.record("batch", {"loss": math.nan, "step": 1}), id="nan"),
        pytest.param(lambda rec: rec.record("batch", {"loss": 2**1100}), id="int-past-float"),
        pytest.param(lambda rec: rec.record("batch", {"Loss Value": 1.0}), id="new-field"),
        pytest.param(lambda rec: rec.record("batch", {"nope": 1.0}), id="unknown-field"),
        pytest.param(lambda rec: rec.record("batch", {}), id="no-fields"),
        pytest.param(
            lambda rec: rec.record("batch", {"loss": 1.0}, {"phase": "warmup"}), id="observed-tag"
        ),
        pytest.param(
            lambda rec: rec.record("gradient_layer", {"norm": 1.0}, {"layer": "new"}),
            id="new-tag-value",
        ),
        pytest.param(
            lambda rec: rec.record("gradient_layer", {"norm": 1.0}, {"layer": 3}), id="int-tag"
        ),
        pytest.param(
            lambda rec: rec.record("system", {"cpu_percent": 1.0}, {"a": "x", "b": "y"}),
            id="two-tags",
        ),
        pytest.param(
            lambda rec: rec.record_series(
                "gradient_layer", "norm", [math.inf], "layer", ["net.0.bias"]
            ),
            id="series-inf",
        ),
        pytest.param(
            lambda rec: rec.record_later(lambda: [("batch", {"loss": 1.0}, None)], 1),
            id="later",
        ),
    ],
)
def test_an_entry_it_does_not_take_goes_to_python_and_the_entries_after_it_do_not(
    tmp_path: Path, record: Any
) -> None:
    with warmed(tmp_path) as rec:
        training_steps(rec, range(2, 4))
        spoiler = len(rec._queue.entries)
        record(rec)
        training_steps(rec, range(4, 5))
        made = compiled_lines(rec)
        assert made is not None and made[3] == spoiler  # the run stops before it
        assert made[:3] == python_lines(rec, stop=spoiler)
        after = compiled_lines(rec, spoiler + 1)
        assert after is not None and after[3] == len(rec._queue.entries)
        flushed = flushed_lines(rec)
        assert flushed == python_lines(rec)
        rec.flush()  # the Python path resolved what it could of the spoiler
        record(rec)
        again = compiled_lines(rec)
        assert again is not None and again[:3] == python_lines(rec, stop=again[3])
    assert flushed[1] >= 14


@pytest.mark.parametrize("nan_every", [1, 2])
def test_a_queue_dense_with_entries_it_declines_goes_to_python_in_few_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nan_every: int
) -> None:
    """A NaN loss at every step (or every other): the Python path takes doubling runs of the
    queue, not one call per entry, and the flush is the Python flush's."""
    with warmed(tmp_path) as rec:
        for step in range(1000):
            loss = math.nan if step % nan_every == 0 else 0.5
            rec.record("batch", {"loss": loss, "step": float(step)})
        expected = python_lines(rec)
        calls = count_python_builds(monkeypatch)
        assert flushed_lines(rec) == expected
    assert len(calls) <= 2 * math.log2(1000) + 2
    assert sum(calls) >= 1000 // nan_every


def test_times_before_1970_and_far_ahead_are_written_as_python_writes_them(
    tmp_path: Path,
) -> None:
    with warmed(tmp_path) as rec:
        for time in (2**62, datetime(1960, 1, 1, tzinfo=UTC), 2**63 - 1):
            rec.record("batch", {"loss": 0.5, "step": 1.0}, time=time)
        made = compiled_lines(rec)
        assert made is not None and made[:3] == python_lines(rec)
        stamps = [line.rsplit(b" ", 1)[1] for line in made[0].splitlines()]
        assert stamps == [b"4611686018427387904", b"-315619200000000000", b"9223372036854775807"]
        rec.record("batch", {"loss": 0.5}, time=2**64)  # past 64 bits: the Python path
        made = compiled_lines(rec)
        assert made is not None and made[3] == 3
        assert flushed_lines(rec) == python_lines(rec)


def test_a_tag_value_whose_hash_clears_the_cache_leaves_the_flush_whole(tmp_path: Path) -> None:
    """Hashing a user's tag value runs Python code, which may change the builder's caches
    mid-flush: the compiled run stops there, holding what it had looked up, and the Python
    path writes that entry and those whose cached tags went with it."""
    with warmed(tmp_path) as rec:

        class Clearing:
            def __hash__(self) -> int:
                rec._line_caches.tag_prefixes.clear()
                return 1

            def __str__(self) -> str:
                return "clearing"

        training_steps(rec, range(2, 4))
        rec.record("system", {"cpu_percent": 1.0}, {"host": Clearing(), "rank": "0"})
        training_steps(rec, range(4, 5))
        made = compiled_lines(rec)
        assert made is not None and made[3] == 6  # two steps of three entries before it
        rec.flush()
        lines = spool_lines(rec)
    assert len(lines) == 5 * 6 + 1 + 1  # two warm-up steps, an event at step 0, the system point
    assert sum(",host=clearing," in line for line in lines) == 1


_FINITE = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**70), 2**70)
_SPECIAL = st.sampled_from([math.nan, -math.inf, 2**1100, True, "text"])
_TAG_VALUES = st.sampled_from(["net.0.weight", "a,b=c d", "ends\\", "层", "", "x\ny"])
_FIELDS = {  # known fields of each measurement, and a name that is not (or normalises)
    "batch": ["loss", "Train/Acc", "step", "batch_idx"],
    "gradient": ["total_norm", "max_norm", "step", "nope"],
    "gradient_layer": ["norm", "step", "Norm"],
    "system": ["cpu_percent", "rss_bytes", "time"],
}
_TAGS = (
    st.none()
    | st.just({})
    | st.fixed_dictionaries({"layer": _TAG_VALUES})
    | st.fixed_dictionaries({"host": _TAG_VALUES, "rank": st.sampled_from(["0", 1, [2]])})
)
_POINT = st.sampled_from(sorted(_FIELDS)).flatmap(
    lambda measurement: st.tuples(
        st.just("point"),
        st.just(measurement),
        st.dictionaries(st.sampled_from(_FIELDS[measurement]), _FINITE),
        _TAGS,
    )
)
_SERIES = st.tuples(
    st.just("series"),
    st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=4),
    st.lists(_TAG_VALUES, min_size=1, max_size=4),
    st.none() | st.fixed_dictionaries({"step": _FINITE}),
)
_EVENT = st.tuples(st.just("event"), st.text(max_size=8))
_SPOILERS = st.tuples(
    st.just("point"), st.just("batch"), st.fixed_dictionaries({"loss": _SPECIAL}), _TAGS
) | st.tuples(st.just("series"), st.just([math.nan]), st.just(["net.0.weight"]), st.just(None))


@given(
    operations=st.lists(_POINT | _SERIES | _EVENT, min_size=1, max_size=30),
    spoiler=st.none() | st.tuples(st.integers(min_value=0, max_value=99), _SPOILERS),
)
@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_whatever_it_writes_is_what_the_python_flush_writes(
    tmp_path_factory: pytest.TempPathFactory,
    operations: list[tuple[Any, ...]],
    spoiler: tuple[int, tuple[Any, ...]] | None,
) -> None:
    """The same operations twice. Of each queue, the compiled run from its start writes the
    Python flush's bytes, count and observations of the entries up to where it stops, and a
    flush of the whole queue (compiled runs, the Python path between them) writes the Python
    flush's. Plain operations, now and then with one the compiled flush declines."""
    if spoiler is not None:
        operations.insert(spoiler[0] % (len(operations) + 1), spoiler[1])
    with quiet_recorder(tmp_path_factory.mktemp("lines"), Collecting()) as rec:
        for round_index in range(2):
            for operation in operations:
                apply(rec, operation)
            made = compiled_lines(rec)
            assert made is not None
            queued = len(rec._queue.entries)
            if round_index:
                event("compiled" if made[3] == queued else "stopped")
            assert made[:3] == python_lines(rec, stop=made[3])
            assert flushed_lines(rec) == python_lines(rec)
            rec.flush()


def apply(rec: Recorder, operation: tuple[Any, ...]) -> None:
    kind = operation[0]
    if kind == "point":
        rec.record(operation[1], operation[2], operation[3])
    elif kind == "series":
        rec.record_series(
            "gradient_layer", "norm", operation[1], "layer", operation[2], operation[3]
        )
    else:
        rec.event("note", text=operation[1])


def test_every_plain_flush_of_the_hypothesis_shapes_is_compiled(tmp_path: Path) -> None:
    """The hypothesis test's shapes do reach the compiled path: a queue of them, all
    resolved and finite, is compiled."""
    with quiet_recorder(tmp_path, Collecting()) as rec:
        recorded: list[tuple[Any, ...]] = [
            ("point", "batch", {"loss": 0.5, "Train/Acc": 1, "step": 2**70}, None),
            ("point", "gradient_layer", {"step": -0.0}, {"layer": "a,b=c d"}),
            ("point", "epoch", {"loss": 1e-300}, {}),
            ("series", [1e300, 0.1 + 0.2], ["层", "x\ny"], {"step": 3}),
            ("event", '"quoted"\n'),
        ]
        for _ in range(2):
            for operation in recorded:
                apply(rec, operation)
            made = compiled_lines(rec)
            rec.flush()
        assert made is not None and made[1] == 6 and made[3] == len(recorded)
