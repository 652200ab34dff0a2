"""The recorder's queue (``collector.pending``): the compiled type queues exactly what the
Python path would, refuses everything else untouched, and a recorder writes the same spool
with either type."""

from __future__ import annotations

import math
import os
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from collector import Recorder, RecorderTuning, new_run_id
from collector import recorder as recorder_module
from collector.pending import PendingPoints, _PythonPendingPoints, compiled
from tests.collector.test_recorder import EXPERIMENT, make_settings, spool_lines

MEASUREMENTS = frozenset({"batch", "gradient", "gradient_layer", "epoch"})


class Series(NamedTuple):
    shape: Any
    values: Any
    tag_values: Any
    common: Any
    time_ns: int


@pytest.fixture
def built() -> None:
    """Skips where the module is not built (no C compiler); under CI=true it must be."""
    if not compiled:
        if os.environ.get("CI") == "true":
            pytest.fail("collector._pending is not built (pip install -e . compiles it)")
        pytest.skip("collector._pending is not built (no C compiler at install)")


class Queue(NamedTuple):
    pending: PendingPoints
    wakes: list[int]


def new_queue(flush_lines: int = 1000, observed: frozenset[str] = frozenset()) -> Queue:
    wakes: list[int] = []
    pending = PendingPoints(
        deque(), MEASUREMENTS, observed, flush_lines, lambda: wakes.append(1), Series
    )
    return Queue(pending, wakes)


def state(pending: PendingPoints) -> tuple[Any, ...]:
    return list(pending.entries), pending.last_ns, pending.recorded, pending.extra


@pytest.mark.usefixtures("built")
def test_put_queues_a_plain_point_as_a_copy_stamped_after_the_last() -> None:
    queue = new_queue()
    pending = queue.pending
    pending.last_ns = 2**62  # a timestamp from the future: the next one still goes up
    fields = {"loss": 0.5, "step": 3}
    tags = {"client": "a"}
    assert pending.put("batch", fields, tags) is True
    assert pending.put("batch", fields, {}) is True
    fields["loss"] = 9.0
    tags["client"] = "b"
    first, second = pending.entries
    assert first == ("batch", {"loss": 0.5, "step": 3}, {"client": "a"}, 2**62 + 1)
    assert second == ("batch", {"loss": 0.5, "step": 3}, None, 2**62 + 2)
    assert (pending.recorded, pending.extra, pending.last_ns) == (2, 0, 2**62 + 2)


@pytest.mark.usefixtures("built")
@pytest.mark.parametrize(
    ("measurement", "fields", "tags"),
    [
        ("batch", {"loss": True}, None),  # a bool is not a plain number
        ("batch", {"loss": "0.5"}, None),
        ("batch", {"loss": 2**70 * 1.0, "x": [1.0]}, None),
        ("batch", OrderedDict(loss=0.5), None),  # not a dict: the Python path copies it
        ("batch", {"loss": 0.5}, OrderedDict(a="b")),
        ("batch", {"loss": 0.5}, [("a", "b")]),
        ("unknown", {"loss": 0.5}, None),
        (["unhashable"], {"loss": 0.5}, None),
    ],
)
def test_put_refuses_what_it_does_not_queue_and_changes_nothing(
    measurement: Any, fields: Any, tags: Any
) -> None:
    pending = new_queue().pending
    before = state(pending)
    assert pending.put(measurement, fields, tags) is False
    assert state(pending) == before


@pytest.mark.usefixtures("built")
def test_a_closed_queue_refuses_everything() -> None:
    pending = new_queue().pending
    pending.closed = True
    assert pending.put("batch", {"loss": 0.5}, None) is False
    assert pending.put_series("gradient_layer", "norm", [1.0], "layer", ["a"], None, None) is False
    assert state(pending) == ([], 0, 0, 0)


@pytest.mark.usefixtures("built")
def test_put_series_queues_the_head_then_one_series_entry() -> None:
    queue = new_queue()
    pending = queue.pending
    pending.last_ns = future = 2**62
    values, names = [1.0, 2.0, 3.0], ["a", "b"]  # the shorter list decides
    common = {"step": 4.0, "epoch": 1}
    head = ("gradient", {"total_norm": 2.5, "step": 4.0})
    assert pending.put_series("gradient_layer", "norm", values, "layer", names, common, head)
    values[0], names[0], common["step"], head[1]["step"] = 9.0, "z", 9.0, 9.0
    point, series = pending.entries
    assert type(series) is Series and type(point) is tuple
    assert point == ("gradient", {"total_norm": 2.5, "step": 4.0}, None, future + 1)
    assert series == Series(
        ("gradient_layer", ("norm", "step", "epoch"), "layer"),
        (1.0, 2.0),
        ("a", "b"),
        (4.0, 1),
        future + 2,
    )
    assert (pending.recorded, pending.extra, pending.last_ns) == (3, 1, future + 3)
    assert pending.put_series("gradient_layer", "norm", (5.0,), "layer", ("c",), None, None)
    assert pending.entries[-1] == Series(
        ("gradient_layer", ("norm",), "layer"), (5.0,), ("c",), (), future + 4
    )


@pytest.mark.usefixtures("built")
@pytest.mark.parametrize(
    "call",
    [
        {"values": [1.0, 2]},  # an int among the values
        {"values": (v for v in [1.0])},  # not a list or tuple
        {"tag_values": "ab"},
        {"values": [], "tag_values": []},  # no points: the Python path records the head
        {"common": {"norm": 1.0}},  # the field repeated in common
        {"common": {"step": True}},
        {"common": OrderedDict(step=1.0)},
        {"head": ("gradient", {"total_norm": "x"})},
        {"head": ["gradient", {"total_norm": 1.0}]},
        {"head": ("gradient", {"total_norm": 1.0}, None)},
        {"head": ("unknown", {"total_norm": 1.0})},
        {"measurement": "unknown"},
        {"observed": True},  # an observer sees them: point by point at the flush
    ],
)
def test_put_series_refuses_what_it_does_not_queue_and_changes_nothing(
    call: dict[str, Any],
) -> None:
    args: dict[str, Any] = {
        "measurement": "gradient_layer",
        "field": "norm",
        "values": [1.0, 2.0],
        "tag": "layer",
        "tag_values": ["a", "b"],
        "common": {"step": 1.0},
        "head": ("gradient", {"total_norm": 1.0}),
    }
    observed = frozenset({"gradient_layer"}) if call.pop("observed", False) else frozenset()
    args.update(call)
    pending = new_queue(observed=observed).pending
    before = state(pending)
    assert pending.put_series(*args.values()) is False
    assert state(pending) == before


@pytest.mark.parametrize("kind", ["compiled", "python"])
def test_stamps_increase_strictly_and_add_wakes_the_flusher_at_flush_lines(kind: str) -> None:
    if kind == "compiled" and not compiled:
        pytest.skip("collector._pending is not built")
    queue_type: Any = PendingPoints if kind == "compiled" else _PythonPendingPoints
    wakes: list[int] = []
    pending = queue_type(deque(), MEASUREMENTS, frozenset(), 4, lambda: wakes.append(1), Series)
    now = pending.stamp()
    assert now > 0
    pending.last_ns = future = 2**62  # after a clock step back: still after the last one
    assert [pending.stamp(), pending.stamp(3), pending.stamp()] == [
        future + 1,
        future + 2,
        future + 5,
    ]
    assert pending.last_ns == future + 5
    with pytest.raises(ValueError):
        pending.stamp(0)
    pending.add("a line\n")
    pending.add(("entry", "of three"), 3)
    assert (pending.recorded, pending.extra, len(pending.entries), wakes) == (4, 2, 2, [1])
    pending.entries = deque()  # what a forked child does: a new queue, appended to from now
    pending.add("another\n")
    assert list(pending.entries) == ["another\n"]


def every_kind_of_call(rec: Recorder) -> None:
    """Points of each path through record() and record_series()."""
    layers = ["net.0.weight", "net.0.bias", "a b,c=d"]
    for step in range(5):
        rec.record("batch", {"loss": 1 / (step + 1), "batch_idx": step, "step": float(step)})
        rec.record("batch", {"loss": math.nan, "step": step}, {"client": "c1"})
        rec.record("epoch", OrderedDict(val_loss=0.5, epoch=step))
        rec.record("batch", {"ok": True, "step": step})
        rec.record("batch", {"loss": 0.25}, time=1_700_000_000 + step)
        norms = [0.1 * step + layer for layer in range(len(layers))]
        rec.record_series(
            "gradient_layer",
            "norm",
            norms,
            "layer",
            layers,
            {"step": float(step)},
            head=("gradient", {"total_norm": sum(norms), "step": float(step)}),
        )
        rec.record_series("gradient_layer", "norm", [1.0, 2], "layer", layers, {"step": step})
        rec.record_series("gradient_layer", "norm", [], "layer", [], head=("gradient", {"x": 1.0}))
        rec.event("checkpoint", text=f"step {step}")
    rec.close()
    rec.record("batch", {"loss": 0.5})
    rec.record_series("gradient_layer", "norm", [1.0], "layer", ["a"], head=("gradient", {}))


@pytest.mark.usefixtures("built")
def test_a_recorder_spools_the_same_lines_with_the_python_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every test of the recorder runs with the compiled queue where it is built; this one
    runs the same calls through both and compares what they spool and count."""

    def recorded(home: Path) -> tuple[list[str], tuple[int, int, int]]:
        rec = Recorder(
            new_run_id(),
            experiment=EXPERIMENT,
            settings=make_settings(home),
            tuning=RecorderTuning(flush_lines=7, flush_interval_s=3600),
        )
        every_kind_of_call(rec)
        stats = rec.stats
        lines = [line.replace(rec.run_id, "RUN").rsplit(" ", 1)[0] for line in spool_lines(rec)]
        return lines, (stats.points_recorded, stats.points_spooled, stats.points_dropped)

    with_compiled = recorded(tmp_path / "compiled")
    monkeypatch.setattr(recorder_module, "PendingPoints", _PythonPendingPoints)
    with_python = recorded(tmp_path / "python")
    assert with_compiled == with_python
    lines, counts = with_python
    # 12 points a step: 5 records, a head with 3 layers, 2 points of a series with an int, an
    # event. Dropped: each step's head of no known field, and the 3 points after close().
    assert counts == (60, 60, 5 + 3) and len(lines) == 60
    assert sum(line.startswith("gradient,") for line in lines) == 5
