"""The Recorder: never raises, spools first, ships when InfluxDB is configured.

Integration tests use VictoriaMetrics, an independent ``/api/v2/write`` peer that can be stopped
and restarted (outages, SIGKILL). The write path against InfluxDB 2 itself (its parser, every
measurement, hostile values, refusals) is in test_influxdb2_write.py.
"""

from __future__ import annotations

import gc
import itertools
import logging
import math
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import collector
from collector import Recorder, RecorderTuning, new_run_id
from collector.cli import main as runwatch_main
from collector.config import Settings
from collector.errors import InvalidRunIdError
from collector.shipper import RetryPolicy, ShipTuning
from tests.servers.victoriametrics import VictoriaMetrics

EXPERIMENT = "recorder-tests"


def make_settings(home: Path, influx_url: str | None = None) -> Settings:
    return Settings(
        home=home,
        db_url=f"sqlite:///{home / 'runs.db'}",
        influx_url=influx_url,
        influx_org="org",
        influx_token="token",
        influx_bucket="training",
        prometheus_port=0,
    )


def spool_lines(rec: Recorder) -> list[str]:
    assert rec.spool_path is not None
    return Path(rec.spool_path).read_text(encoding="utf-8").splitlines()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "home")


@pytest.fixture
def recorder(settings: Settings) -> Iterator[Recorder]:
    rec = Recorder(new_run_id(), experiment=EXPERIMENT, settings=settings)
    yield rec
    rec.close()


# --- unit: spool only ----------------------------------------------------------------------


def test_spool_only_without_influxdb(recorder: Recorder) -> None:
    recorder.record("batch", {"loss": 0.5, "step": 1})
    recorder.record("epoch", {"train/loss": 0.25, "epoch": 0})
    recorder.event("training_start", text="go")
    recorder.close()
    lines = spool_lines(recorder)
    assert len(lines) == 3
    base = f"experiment={EXPERIMENT},mode=centralized,run_id={recorder.run_id}"
    assert lines[0].startswith(f"batch,{base} loss=0.5,step=1.0 ")
    assert lines[1].startswith(f"epoch,{base} train_loss=0.25,epoch=0.0 ")
    assert lines[2].startswith(f'event,event=training_start,{base} text="go",value=1.0 ')
    stats = recorder.stats
    assert (stats.points_recorded, stats.points_spooled, stats.points_shipped) == (3, 3, 0)
    assert stats.spool_backlog_bytes == Path(recorder.spool_path or "").stat().st_size
    assert stats.last_error is None


def test_timestamps_are_wall_clock_ns_and_strictly_increasing(recorder: Recorder) -> None:
    before = time.time_ns()
    for step in range(2000):
        recorder.record("batch", {"step": step})
    after = time.time_ns()
    recorder.flush()
    stamps = [int(line.rsplit(" ", 1)[1]) for line in spool_lines(recorder)]
    assert all(a < b for a, b in itertools.pairwise(stamps))
    assert before <= stamps[0] and stamps[-1] <= after + len(stamps)


def test_explicit_times(recorder: Recorder) -> None:
    recorder.record("batch", {"step": 1}, time=1_700_000_000_000_000_123)
    recorder.record("batch", {"step": 2}, time=1_700_000_000.5)
    recorder.record("batch", {"step": 3}, time="yesterday")  # type: ignore[arg-type]
    recorder.flush()
    stamps = [int(line.rsplit(" ", 1)[1]) for line in spool_lines(recorder)]
    assert stamps[:2] == [1_700_000_000_000_000_123, 1_700_000_000_500_000_000]
    assert abs(stamps[2] - time.time_ns()) < 60 * 10**9


class Exploding(Mapping[str, object]):
    def __getitem__(self, key: str) -> object:
        raise RuntimeError("boom")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("boom")

    def __len__(self) -> int:
        return 1


class BadFloat:
    def __float__(self) -> float:
        raise ZeroDivisionError("nope")


class BadStr:
    def __str__(self) -> str:
        raise RuntimeError("no text")


@pytest.mark.parametrize(
    "call",
    [
        lambda r: r.record("nope", {"x": 1.0}),
        lambda r: r.record(None, {"x": 1.0}),
        lambda r: r.record("batch", None),
        lambda r: r.record("batch", [1, 2]),
        lambda r: r.record("batch", Exploding()),
        lambda r: r.record("batch", {"loss": BadFloat()}),
        lambda r: r.record("batch", {"loss": object()}),
        lambda r: r.record("batch", {"loss": 1.0}, tags=[("a", "b")]),
        lambda r: r.record("batch", {"loss": 1.0}, tags={"layer": BadStr()}),
        lambda r: r.record("event", {"text": BadStr(), "value": 1.0}),
        lambda r: r.record("batch", {"loss": 1.0}, time=object()),
        lambda r: r.event("", text="x"),
        lambda r: r.event(None),
        lambda r: r.event("alert", value="high"),
    ],
)
def test_record_never_raises(recorder: Recorder, call: Any) -> None:
    call(recorder)
    call(recorder)
    recorder.record("batch", {"loss": 0.5})
    recorder.flush()
    assert spool_lines(recorder)[-1].split(" ")[1] == "loss=0.5"


def test_bad_input_is_counted_and_warned_once(
    recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    for _ in range(100):
        recorder.record("batch", {"loss": "high", "step": 1})
        recorder.record("mystery", {"x": 1.0})
        recorder.record("epoch", {"val_loss": math.nan})
    stats = recorder.stats
    assert stats.points_recorded == 200
    assert stats.points_dropped == 100
    assert stats.fields_dropped == 100
    assert stats.nonfinite_fields == 100
    assert len(caplog.records) == 2


def test_queued_points_are_copies_built_in_recording_order(recorder: Recorder) -> None:
    fields: dict[str, object] = {"loss": 0.5, "step": 1}
    tags = {"layer": "a"}
    recorder.record("gradient_layer", {"norm": 1.5, "step": 0}, tags=tags)
    recorder.record("batch", fields)
    fields["loss"], fields["step"] = 0.25, 2  # a caller reusing its dict
    tags["layer"] = "b"
    recorder.record("batch", fields)
    recorder.record("batch", {"loss": "high", "step": 3})  # built at once: keeps its place
    recorder.record("batch", {"//": 1.0})  # queued, dropped when built: no name
    stats = recorder.stats
    assert (stats.points_recorded, stats.points_spooled, stats.points_dropped) == (4, 4, 1)
    lines = spool_lines(recorder)
    assert [line.split(" ")[1] for line in lines] == [
        "norm=1.5,step=0.0",
        "loss=0.5,step=1.0",
        "loss=0.25,step=2.0",
        "step=3.0",
    ]
    assert ",layer=a," in lines[0].split(" ")[0]
    stamps = [int(line.split(" ")[2]) for line in lines]
    assert stamps == sorted(stamps) and len(set(stamps)) == 4


def test_runs_of_plain_points_spool_the_lines_built_one_by_one(recorder: Recorder) -> None:
    """A flush writes the plain points of one shape with one format: the spool holds what
    building each point alone gives, in recording order, whatever breaks the runs."""
    from collector.points import PointBuilder

    recorded: list[tuple[str, dict[str, object], dict[str, object] | None]] = []
    for step in range(3):
        recorded.append(("batch", {"loss": 1 / (step + 1), "step": step}, None))
    recorded.append(("batch", {"step": 3, "loss": 0.2}, None))  # another field order
    recorded.append(("batch", {"loss": math.nan, "step": 4}, None))  # breaks no run: built alone
    recorded.append(("batch", {"loss": 0.1, "step": 5}, None))
    recorded.append(("gradient_layer", {"norm": 1.0, "step": 5}, {"layer": "a"}))
    recorded.append(("batch", {"loss": 2**1100, "step": 6}, None))  # past the float range
    recorded.append(("epoch", {"Train/Loss": 0.5, "epoch": 0}, None))
    recorded.append(("epoch", {"Train/Loss": 0.4, "epoch": 1}, None))
    for measurement, fields, tags in recorded:
        recorder.record(measurement, fields, tags)
    recorder.flush()
    lines = spool_lines(recorder)
    assert len(lines) == len(recorded)
    builder = PointBuilder(recorder.base_tags)
    for line, (measurement, fields, tags) in zip(lines, recorded, strict=True):
        time_ns = int(line.rsplit(" ", 1)[1])
        assert line + "\n" == builder.build(measurement, fields, tags, time_ns)[0]
    assert recorder.stats.points_spooled == len(recorded)
    assert recorder.stats.nonfinite_fields == 1 and recorder.stats.fields_dropped == 1


def test_shapes_interleaved_across_a_flush_keep_recording_order_for_spool_and_observers(
    settings: Settings,
) -> None:
    """Training steps interleave shapes (per-layer, gradient and batch points): a flush formats
    each shape's points together across the whole queue, yet the spool holds each point's own
    line in recording order and observers see each point in that order, as built alone."""
    from collector.points import PointBuilder

    seen: list[tuple[str, dict[str, float], dict[str, str]]] = []

    class Collecting:
        observed_measurements = frozenset({"batch", "gradient", "client_round"})

        def observe(
            self, measurement: str, fields: Mapping[str, float], tags: Mapping[str, str]
        ) -> None:
            seen.append((measurement, dict(fields), dict(tags)))

    recorded: list[tuple[str, dict[str, object], dict[str, object] | None]] = []
    for step in range(4):
        for layer in ("0.weight", "0.bias"):
            recorded.append(
                ("gradient_layer", {"norm": step + 0.5, "step": step}, {"layer": layer})
            )
        recorded.append(("gradient", {"total_norm": step / 3, "step": step}, None))
        recorded.append(("batch", {"loss": 1 / (step + 1), "step": step}, None))
    recorded[7] = ("batch", {"loss": math.inf, "step": 1}, None)  # its group goes point by point
    recorded.append(("batch", {"loss": 0.1, "step": 4}, {"phase": "warmup"}))  # tagged, observed
    recorded.append(("client_round", {"train_loss": 0.3}, {"round": 1, "client_id": "c1"}))
    recorded.append(("client_round", {"train_loss": 0.2}, {"round": 2, "client_id": "c1"}))
    run_id = new_run_id()
    tuning = RecorderTuning(flush_interval_s=3600)
    with Recorder(
        run_id, experiment=EXPERIMENT, settings=settings, observers=[Collecting()], tuning=tuning
    ) as rec:
        for measurement, fields, tags in recorded:
            rec.record(measurement, fields, tags)
        rec.record("gradient", {"nope": 1.0})  # no known field: both dropped when built
        rec.record("gradient", {"nope": 2.0})
        rec.flush()
        lines = spool_lines(rec)
        stats = rec.stats
    assert len(lines) == len(recorded) == stats.points_spooled
    assert stats.points_dropped == 2 and stats.points_recorded == len(recorded)
    builder = PointBuilder(rec.base_tags)
    expected_seen = []
    for line, (measurement, fields, tags) in zip(lines, recorded, strict=True):
        time_ns = int(line.rsplit(" ", 1)[1])
        built, observed, all_tags = builder.build(measurement, fields, tags, time_ns, True)
        assert line + "\n" == built
        if measurement != "gradient_layer":
            expected_seen.append((measurement, observed, all_tags))
    stamps = [int(line.rsplit(" ", 1)[1]) for line in lines]
    assert stamps == sorted(stamps)
    assert seen == expected_seen
    assert seen[-3][2]["phase"] == "warmup" and seen[-1][2]["round"] == "2"


def test_a_loss_tensor_that_requires_grad_is_recorded_without_a_warning(
    recorder: Recorder,
) -> None:
    import warnings

    torch = pytest.importorskip("torch")
    weight = torch.tensor(2.0, requires_grad=True)
    loss = weight * 0.25
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns on float() of a tensor that requires grad
        recorder.record("batch", {"loss": loss, "step": 7})
        recorder.record("batch", {"loss": torch.tensor([1.0, 2.0]), "step": 8})  # not a scalar
        recorder.flush()
    lines = spool_lines(recorder)
    assert lines[0].split(" ")[1] == "loss=0.5,step=7.0"
    assert lines[1].split(" ")[1] == "step=8.0"
    assert recorder.stats.fields_dropped == 1


def test_observers_see_normalised_fields_nonfinite_flags_and_failures_are_contained(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[tuple[str, dict[str, float], dict[str, str]]] = []

    class Collecting:
        def observe(
            self, measurement: str, fields: Mapping[str, float], tags: Mapping[str, str]
        ) -> None:
            seen.append((measurement, dict(fields), dict(tags)))

    class Failing:
        def observe(
            self, measurement: str, fields: Mapping[str, float], tags: Mapping[str, str]
        ) -> None:
            raise ValueError("observer bug")

    caplog.set_level(logging.WARNING)
    run_id = new_run_id()
    with Recorder(
        run_id,
        experiment=EXPERIMENT,
        mode="federated",
        settings=settings,
        tags={"client_id": "3"},
        observers=[Failing(), Collecting()],
    ) as rec:
        rec.record("client_round", {"Train/Loss": 0.5, "val_loss": math.inf}, tags={"round": 2})
        rec.record("client_round", {"train_loss": 0.4}, tags={"round": 3})
    base = {"run_id": run_id, "experiment": EXPERIMENT, "mode": "federated", "client_id": "3"}
    assert seen == [
        ("client_round", {"train_loss": 0.5, "val_loss_nonfinite": 1.0}, {**base, "round": "2"}),
        ("client_round", {"train_loss": 0.4}, {**base, "round": "3"}),
    ]
    assert sum("observer" in r.getMessage() for r in caplog.records) == 1
    assert isinstance(Collecting(), collector.PointObserver)


def test_observers_see_points_when_they_are_spooled_not_on_the_recording_thread(
    settings: Settings,
) -> None:
    seen: list[tuple[str, dict[str, float], dict[str, str]]] = []

    class Batches:
        observed_measurements = frozenset({"batch", "client_round"})

        def observe(
            self, measurement: str, fields: Mapping[str, float], tags: Mapping[str, str]
        ) -> None:
            seen.append((measurement, dict(fields), dict(tags)))

    run_id = new_run_id()
    tuning = RecorderTuning(flush_interval_s=3600)  # nothing is built before the asserts
    with Recorder(
        run_id, experiment=EXPERIMENT, settings=settings, observers=[Batches()], tuning=tuning
    ) as rec:
        rec.record("batch", {"Train/Loss": 0.5, "step": 3, "acc": math.nan, "//": 1.0})
        rec.record("gradient", {"total_norm": 1.0, "step": 3})  # nobody observes gradients
        rec.record("client_round", {"train_loss": 0.4}, tags={"Round": 2, "step": 9, "x": ""})
        rec.record("batch", {"//": 1.0})  # nothing the line would hold: not observed
        assert rec._queue.entries and all(not isinstance(p, str) for p in rec._queue.entries)
        assert seen == []  # record() only queued them
        rec.flush()
        base = {"run_id": run_id, "experiment": EXPERIMENT, "mode": "centralized"}
        assert seen == [
            ("batch", {"train_loss": 0.5, "step": 3.0, "acc_nonfinite": 1.0}, base),
            ("client_round", {"train_loss": 0.4}, {**base, "round": "2"}),
        ]
        lines = spool_lines(rec)
    assert [line.split(" ")[1] for line in lines] == [
        "train_loss=0.5,step=3.0,acc_nonfinite=1.0",
        "total_norm=1.0,step=3.0",
        "train_loss=0.4",
    ]
    assert ",round=2," in lines[2].split(" ")[0]
    assert rec.stats.points_dropped == 1 and rec.stats.fields_dropped == 2


def test_each_observer_sees_only_its_measurements_one_by_one_or_a_flush_at_once(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    seen: dict[str, list[object]] = {"batches": [], "all": [], "failing": []}

    class Batches:
        observed_measurements = frozenset({"batch"})

        def observe(
            self, measurement: str, fields: Mapping[str, float], tags: Mapping[str, str]
        ) -> None:
            seen["batches"].append((measurement, fields["step"]))

    class AllAtOnce:
        observed_measurements = frozenset({"batch", "gradient"})

        def observe(self, *point: object) -> None:
            raise AssertionError("observe_many is used when there is one")

        def observe_many(self, points: list[tuple[str, Mapping[str, float], object]]) -> None:
            seen["all"].append([(m, fields["step"]) for m, fields, _ in points])

    class FailingAtOnce:
        def observe(self, *point: object) -> None:
            raise AssertionError("observe_many is used when there is one")

        def observe_many(self, points: list[object]) -> None:
            seen["failing"].append(len(points))
            raise ValueError("observer bug")

    caplog.set_level(logging.WARNING)
    tuning = RecorderTuning(flush_interval_s=3600)
    observers = [Batches(), AllAtOnce(), FailingAtOnce()]
    with Recorder(
        new_run_id(), experiment=EXPERIMENT, settings=settings, observers=observers, tuning=tuning
    ) as rec:
        for step in range(2):
            rec.record("gradient", {"total_norm": 1.0, "step": step})
            rec.record("batch", {"loss": 0.5, "step": step})
        rec.flush()
        rec.record("batch", {"loss": 0.5, "step": 2})
        rec.record("system", {"cpu_percent": 3.0})  # only the observer of everything gets it
        rec.flush()
    assert seen["batches"] == [("batch", 0.0), ("batch", 1.0), ("batch", 2.0)]
    assert seen["all"] == [
        [("gradient", 0.0), ("batch", 0.0), ("gradient", 1.0), ("batch", 1.0)],
        [("batch", 2.0)],
    ]
    assert seen["failing"] == [4, 2]  # still called after it failed; warned about once
    assert sum("observer" in r.getMessage() for r in caplog.records) == 1


def test_record_series_writes_the_points_of_as_many_record_calls(settings: Settings) -> None:
    names = ["net.0.weight", "net.0.bias", "a layer,with=odd chars"]
    norms = [0.5, math.inf, 2.0]
    with (
        Recorder(new_run_id(), experiment=EXPERIMENT, settings=settings) as one_by_one,
        Recorder(new_run_id(), experiment=EXPERIMENT, settings=settings) as series,
    ):
        for name, norm in zip(names, norms, strict=True):
            one_by_one.record("gradient_layer", {"norm": norm, "step": 4.0}, {"layer": name})
        series.record_series("gradient_layer", "norm", norms, "layer", names, {"step": 4.0})
        series.record_series("gradient_layer", "norm", [], "layer", [], {"step": 5.0})
        assert len(series._queue.entries) == 1  # one entry on the training thread
        one_by_one.flush()
        series.flush()
        expected, written = spool_lines(one_by_one), spool_lines(series)
        assert series.stats.points_recorded == 3 and series.stats.points_spooled == 3

    def same_run(line: str, recorder: Recorder) -> str:  # the line without run id and time
        return line.replace(recorder.run_id, "RUN").rsplit(" ", 1)[0]

    assert [same_run(line, series) for line in written] == [
        same_run(line, one_by_one) for line in expected
    ]
    assert "layer=a\\ layer\\,with\\=odd\\ chars" in written[2]
    stamps = [int(line.rsplit(" ", 1)[1]) for line in written]
    assert stamps == sorted(set(stamps))  # each point its own, increasing timestamp
    assert "norm_nonfinite=1.0" in written[1]


def tracked_within(entry: object) -> int:
    """Objects Python's collector tracks in ``entry`` and the containers under it."""
    found = int(gc.is_tracked(entry))
    if isinstance(entry, tuple | list):
        found += sum(tracked_within(item) for item in entry)
    elif isinstance(entry, dict):
        found += sum(tracked_within(item) for item in (*entry, *entry.values()))
    return found


def test_queued_points_and_series_are_one_tracked_object_each(
    settings: Settings,
) -> None:
    """What waits for the flush gives Python's collector as little as possible to promote
    into its oldest generation, whose full collections a long training pays for: each entry
    is one tracked object, with nothing tracked under it (no list, no function)."""

    tuning = RecorderTuning(flush_interval_s=3600)  # the entries wait
    with Recorder(new_run_id(), experiment=EXPERIMENT, settings=settings, tuning=tuning) as rec:
        step = 3.0
        rec.record("batch", {"loss": 0.5, "step": step})
        rec.record("gradient", {"total_norm": 1.0, "max_norm": 0.9, "min_norm": 0.1, "step": 3})
        norms = [0.5, 0.25]
        rec.record_series("gradient_layer", "norm", norms, "layer", ["a", "b"], {"step": step})
        norms.append(9.0)  # the caller's list is not what waits
        gc.collect()
        gc.collect()  # one pass may reach a tuple before the tuple inside it: untracked next
        entries = list(rec._queue.entries)
        assert len(entries) == 3
        assert [tracked_within(entry) for entry in entries] == [1, 1, 1]
        rec.flush()
        assert sum("norm=9" in line for line in spool_lines(rec)) == 0


def test_series_interleaved_with_other_points_spool_what_record_calls_would(
    settings: Settings,
) -> None:
    """``record_series`` entries of one shape are formatted as one group across the flush
    (lists, no dict per point) and cut back per entry between the other points; a non-finite
    value sends its group point by point; a field repeated in ``common`` and non-str tag
    values take the general paths. Every line is what the same ``record()`` calls write."""
    layers = ["0.weight", "0.bias", "a b,c=d"]
    calls: list[tuple[list[float], list[object], dict[str, float] | None, str]] = [
        ([0.5, 1.5, 2.5], list(layers), {"step": 0.0}, "norm"),
        ([0.25, 0.75, 1.0], list(layers), {"step": 1}, "norm"),  # an int common value
        ([3.0, 4.0], ["0.weight", "0.bias"], None, "norm"),  # another shape: no common
        ([math.nan, 2.0], ["x", "y"], {"step": 2.0, "epoch": 0.0}, "norm"),
        ([1.0, 2.0], ["x", "y"], {"step": 3.0, "epoch": 0.0}, "norm"),  # NaN's group
        ([5.0], [7], {"step": 4.0}, "norm"),  # an int tag value
        ([6.0], ["z"], {"norm": 9.0}, "norm"),  # the field repeated in common: common wins
    ]
    with (
        Recorder(new_run_id(), experiment=EXPERIMENT, settings=settings) as one_by_one,
        Recorder(new_run_id(), experiment=EXPERIMENT, settings=settings) as series,
    ):
        for step, (values, tag_values, common, field) in enumerate(calls):
            for value, tag_value in zip(values, tag_values, strict=True):
                one_by_one.record(
                    "gradient_layer", {field: value, **(common or {})}, {"layer": tag_value}
                )
            one_by_one.record("batch", {"loss": 0.1 * step, "step": step})
            series.record_series("gradient_layer", field, values, "layer", tag_values, common)
            series.record("batch", {"loss": 0.1 * step, "step": step})
        one_by_one.flush()
        series.flush()
        expected, written = spool_lines(one_by_one), spool_lines(series)
        points = sum(len(values) for values, *_ in calls) + len(calls)
        assert series.stats.points_recorded == points == series.stats.points_spooled
        assert one_by_one.stats.nonfinite_fields == series.stats.nonfinite_fields == 1

    def same_run(line: str, recorder: Recorder) -> str:  # the line without run id and time
        return line.replace(recorder.run_id, "RUN").rsplit(" ", 1)[0]

    assert [same_run(line, series) for line in written] == [
        same_run(line, one_by_one) for line in expected
    ]
    stamps = [int(line.rsplit(" ", 1)[1]) for line in written]
    assert stamps == sorted(set(stamps))


@pytest.mark.parametrize(
    ("head", "values", "observed"),
    [
        ({"total_norm": 3.0, "max_norm": 2.0, "min_norm": 0.5, "step": 4.0}, [2.0, 0.5], False),
        ({"total_norm": 3.0, "step": 4}, [2.0, 0.5], True),  # an int; the series observed
        ({"total_norm": 1.0, "step": 4.0}, [], False),  # no series: the head alone
        ({"total_norm": "tensor", "step": 4.0}, [2.0, 0.5], False),  # read now, not later
        ({"total_norm": 3.0, "step": 4.0}, [2.0, "tensor"], False),  # the series point by point
    ],
)
def test_record_series_head_writes_what_a_record_call_before_it_would(
    settings: Settings, head: dict[str, Any], values: list[Any], observed: bool
) -> None:
    """``head`` is the point a ``record()`` call just before the series would write, stamped
    before its points, whatever path the series takes; after ``close()`` all are dropped."""
    torch = pytest.importorskip("torch")
    tensors = []

    def made(value: Any) -> Any:
        if value != "tensor":
            return value
        tensors.append(torch.tensor(1.5))
        return tensors[-1]

    head = {name: made(value) for name, value in head.items()}
    values = [made(value) for value in values]
    layers = [f"layer {index}" for index in range(len(values))]

    class Layers:
        observed_measurements = ("gradient_layer",)

        def observe(self, *_: Any) -> None:
            pass

    observers = [Layers()] if observed else []
    with (
        Recorder(new_run_id(), experiment=EXPERIMENT, settings=settings) as one_by_one,
        Recorder(
            new_run_id(), experiment=EXPERIMENT, settings=settings, observers=observers
        ) as series,
    ):
        one_by_one.record("gradient", head)
        for value, layer in zip(values, layers, strict=True):
            one_by_one.record("gradient_layer", {"norm": value, "step": 4.0}, {"layer": layer})
        series.record_series(
            "gradient_layer",
            "norm",
            values,
            "layer",
            layers,
            {"step": 4.0},
            head=("gradient", head),
        )
        for tensor in tensors:
            tensor.fill_(99.0)  # what the flush writes is what the values were at the call
        one_by_one.flush()
        series.flush()
        expected, written = spool_lines(one_by_one), spool_lines(series)
        assert series.stats.points_recorded == 1 + len(values) == series.stats.points_spooled
    assert series.closed
    series.record_series(
        "gradient_layer", "norm", values, "layer", layers, {"step": 5.0}, head=("gradient", head)
    )
    assert series.stats.points_dropped == 1 + len(values)

    def same_run(line: str, recorder: Recorder) -> str:  # the line without run id and time
        return line.replace(recorder.run_id, "RUN").rsplit(" ", 1)[0]

    assert [same_run(line, series) for line in written] == [
        same_run(line, one_by_one) for line in expected
    ]
    assert written[0].startswith("gradient,") and "=99.0" not in "".join(written)
    stamps = [int(line.rsplit(" ", 1)[1]) for line in written]
    assert stamps == sorted(set(stamps))


def test_record_series_of_non_plain_values_and_observed_series_go_point_by_point(
    settings: Settings,
) -> None:
    torch = pytest.importorskip("torch")
    seen: list[dict[str, float]] = []

    class Layers:
        observed_measurements = ("gradient_layer",)

        def observe(
            self, measurement: str, fields: Mapping[str, float], tags: Mapping[str, str]
        ) -> None:
            seen.append({**fields, "layer": float(tags["layer"])})

    with Recorder(
        new_run_id(), experiment=EXPERIMENT, settings=settings, observers=[Layers()]
    ) as rec:
        rec.record_series("gradient_layer", "norm", [1.0, 2.0], "layer", ["1", "2"])
        rec.record_series("gradient_layer", "norm", [torch.tensor(3.0)], "layer", ["3"])
        rec.flush()
        lines = spool_lines(rec)
    assert seen == [{"norm": float(n), "layer": float(n)} for n in (1, 2, 3)]
    assert [line.split(" ")[1] for line in lines] == ["norm=1.0", "norm=2.0", "norm=3.0"]


def test_record_later_makes_its_points_at_the_flush_stamped_at_the_call(
    settings: Settings,
) -> None:
    made_on: list[str] = []

    def gradient_points() -> list[tuple[str, dict[str, float], dict[str, str] | None]]:
        made_on.append(threading.current_thread().name)
        return [
            ("gradient", {"total_norm": 2.5, "step": 4.0}, None),
            ("gradient_layer", {"norm": math.inf, "step": 4.0}, {"layer": "net.0.weight"}),
            ("gradient_layer", {"norm": 1.5, "step": 4.0}, {"layer": "a layer,odd"}),
        ]

    tuning = RecorderTuning(flush_interval_s=3600)
    with (
        Recorder(new_run_id(), experiment=EXPERIMENT, settings=settings) as one_by_one,
        Recorder(new_run_id(), experiment=EXPERIMENT, settings=settings, tuning=tuning) as later,
    ):
        for measurement, fields, tags in gradient_points():
            one_by_one.record(measurement, fields, tags)
        made_on.clear()
        later.record("batch", {"step": 3.0})
        later.record_later(gradient_points, 3)
        later.record("batch", {"step": 5.0})
        assert made_on == [] and len(later._queue.entries) == 3  # one entry, nothing made yet
        assert later.stats.points_recorded == 5
        one_by_one.flush()
        later.flush()
        expected, written = spool_lines(one_by_one), spool_lines(later)
        assert (later.stats.points_recorded, later.stats.points_spooled) == (5, 5)

    def same_run(line: str, recorder: Recorder) -> str:  # the line without run id and time
        return line.replace(recorder.run_id, "RUN").rsplit(" ", 1)[0]

    assert made_on == [threading.current_thread().name]  # the flush called it, once
    assert [same_run(line, later) for line in written[1:4]] == [
        same_run(line, one_by_one) for line in expected
    ]
    assert [line.split(" ")[1] for line in (written[0], written[4])] == ["step=3.0", "step=5.0"]
    stamps = [int(line.rsplit(" ", 1)[1]) for line in written]
    assert stamps == sorted(set(stamps))  # in call order, each point its own timestamp
    assert stamps[1:4] == [stamps[1], stamps[1] + 1, stamps[1] + 2]


def test_record_later_takes_at_most_count_points_and_drops_those_of_a_failing_function(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    def three() -> Iterator[tuple[str, dict[str, float], None]]:
        for step in range(3):
            yield ("batch", {"step": float(step)}, None)

    def broken() -> list[tuple[str, dict[str, float], None]]:
        raise ZeroDivisionError("no gradients")

    with Recorder(new_run_id(), experiment=EXPERIMENT, settings=settings) as rec:
        rec.record_later(three, 2)  # a third point would take the next call's timestamp
        rec.record_later(three, 5)  # fewer than announced: not an error
        with caplog.at_level(logging.WARNING, logger="collector"):
            rec.record_later(broken, 4)
            rec.record_later(broken, 4)
            rec.record_later(three, 0)
            rec.flush()
        steps = [line.split(" ")[1] for line in spool_lines(rec)]
        stats = rec.stats
    assert steps == ["step=0.0", "step=1.0", "step=0.0", "step=1.0", "step=2.0"]
    assert (stats.points_recorded, stats.points_spooled, stats.points_dropped) == (5, 5, 8)
    warnings = [r.getMessage() for r in caplog.records if "record_later" in r.getMessage()]
    assert len(warnings) == 1 and "ZeroDivisionError: no gradients" in warnings[0]
    assert "broken raised" in warnings[0]
    rec.record_later(three, 3)  # closed
    assert rec.stats.points_dropped == 11


def test_segment_bytes_sets_where_the_spool_rolls_and_compresses(settings: Settings) -> None:
    from collector.spool import SpoolStream, StreamReader, list_segments

    tuning = RecorderTuning(segment_bytes=8_192, flush_lines=20, queue_limit=20)
    with Recorder(new_run_id(), experiment=EXPERIMENT, settings=settings, tuning=tuning) as rec:
        for step in range(400):
            rec.record("batch", {"loss": 1.0 / (step + 1), "step": step})
    stream = SpoolStream.at(settings.spool_dir, rec.run_id)
    segments = list_segments(stream)
    assert len(segments) > 5 and all(segment.compressed for segment in segments[:-1])
    with StreamReader(stream) as reader:
        lines = reader.read(0, reader.extent()[0]).decode().splitlines()
    assert [line.split(" ")[1] for line in lines] == [
        f"loss={1.0 / (step + 1)!r},step={float(step)!r}" for step in range(400)
    ]


def test_flush_lines_counts_the_points_of_a_series(settings: Settings) -> None:
    tuning = RecorderTuning(flush_lines=10, queue_limit=10, flush_interval_s=3600)
    with Recorder(new_run_id(), experiment=EXPERIMENT, settings=settings, tuning=tuning) as rec:
        names = [str(i) for i in range(6)]
        rec.record_series("gradient_layer", "norm", [1.0] * 6, "layer", names)
        assert spool_lines(rec) == []
        rec.record_series("gradient_layer", "norm", [1.0] * 6, "layer", names)
        assert len(spool_lines(rec)) == 12  # 12 points queued >= 10: appended at once


def test_flush_lines_and_the_periodic_flusher_bound_what_sits_in_memory(settings: Settings) -> None:
    tuning = RecorderTuning(flush_lines=10, queue_limit=10, flush_interval_s=3600)
    with Recorder(new_run_id(), experiment=EXPERIMENT, settings=settings, tuning=tuning) as rec:
        for step in range(25):
            rec.record("batch", {"step": step})
        assert len(spool_lines(rec)) == 20  # two full batches; 5 wait for the next flush
        rec.flush()
        assert len(spool_lines(rec)) == 25

    ticking = RecorderTuning(flush_interval_s=0.05)
    with Recorder(new_run_id(), experiment=EXPERIMENT, settings=settings, tuning=ticking) as rec:
        rec.record("batch", {"step": 1})
        deadline = time.monotonic() + 5
        while not spool_lines(rec) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(spool_lines(rec)) == 1


def test_flush_lines_wake_the_flusher_and_queue_limit_appends_on_the_recording_thread(
    settings: Settings,
) -> None:
    tuning = RecorderTuning(flush_lines=10, queue_limit=30, flush_interval_s=3600)
    with Recorder(new_run_id(), experiment=EXPERIMENT, settings=settings, tuning=tuning) as rec:
        for step in range(9):
            rec.record("batch", {"step": step})
        time.sleep(0.2)
        assert spool_lines(rec) == []  # under flush_lines: the flusher sleeps on
        rec.record("batch", {"step": 9})
        deadline = time.monotonic() + 5
        while len(spool_lines(rec)) < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(spool_lines(rec)) == 10  # woken, it appended them (not the hour later)

        rec._stop_flusher.set()  # the flusher falls behind: it is gone
        rec._flush_now.set()
        rec._flusher.join(5)
        for step in range(10, 39):
            rec.record("batch", {"step": step})
        assert len(spool_lines(rec)) == 10  # 29 wait
        rec.record("batch", {"step": 39})
        assert len(spool_lines(rec)) == 40  # queue_limit: record() appended them itself


def test_close_is_idempotent_and_later_points_are_dropped(settings: Settings) -> None:
    rec = Recorder(new_run_id(), experiment=EXPERIMENT, settings=settings)
    rec.record("batch", {"step": 1})
    rec.close()
    rec.close()
    assert rec.closed
    rec.record("batch", {"step": 2})
    rec.flush()
    assert len(spool_lines(rec)) == 1
    assert rec.stats.points_dropped == 1


def test_two_live_recorders_of_one_run_write_separate_streams(settings: Settings) -> None:
    run_id = new_run_id()
    with (
        Recorder(run_id, experiment=EXPERIMENT, settings=settings, tags={"client_id": "a"}) as a,
        Recorder(run_id, experiment=EXPERIMENT, settings=settings, tags={"client_id": "b"}) as b,
    ):
        a.record("client_round", {"train_loss": 1.0})
        b.record("client_round", {"train_loss": 2.0})
    assert a.spool_path != b.spool_path
    assert "client_id=a" in spool_lines(a)[0] and "client_id=b" in spool_lines(b)[0]


def test_an_unwritable_spool_degrades_without_raising(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "spool").write_text("a file where the spool directory should be")
    rec = Recorder(new_run_id(), experiment=EXPERIMENT, settings=make_settings(home))
    rec.record("batch", {"step": 1})
    rec.flush()
    rec.close()
    stats = rec.stats
    assert stats.last_error is not None and "spool" in stats.last_error
    assert stats.points_dropped == 1 and stats.spool_path is None


def test_invalid_constructor_arguments_fail_fast(settings: Settings) -> None:
    with pytest.raises(ValueError, match="mode"):
        Recorder("r", experiment="e", mode="distributed", settings=settings)
    for bad in ("", "../../../escape", "a b", "x" * 65):
        with pytest.raises(InvalidRunIdError, match="run id"):
            Recorder(bad, experiment="e", settings=settings)
    assert not list(settings.home.parent.glob("escape*"))


def test_recording_from_many_threads_loses_nothing(settings: Settings) -> None:
    tuning = RecorderTuning(flush_lines=50, flush_interval_s=0.01)
    with Recorder(new_run_id(), experiment=EXPERIMENT, settings=settings, tuning=tuning) as rec:

        def produce(worker: int) -> None:
            for step in range(2000):
                rec.record("batch", {"step": step, "batch_idx": worker})

        threads = [threading.Thread(target=produce, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    lines = spool_lines(rec)
    assert len(lines) == 8000
    assert all(line.startswith("batch,") and line.count(" ") == 2 for line in lines)


# --- integration: VictoriaMetrics ----------------------------------------------------------

FAST_RETRY = ShipTuning(
    request_timeout_s=2.0, retry=RetryPolicy(base_delay_s=0.05, max_delay_s=0.3)
)


def export_steps(server: VictoriaMetrics, run_id: str, series: str) -> dict[int, float]:
    """{timestamp_ms: value} of one series of a run."""
    found: dict[int, float] = {}
    for labels, samples in server.samples(f'{series}{{run_id="{run_id}"}}').items():
        found.update(samples)
    return found


@pytest.mark.integration
def test_100k_points_reach_victoriametrics_with_tags_and_values(
    tmp_path: Path, victoriametrics: VictoriaMetrics
) -> None:
    settings = make_settings(tmp_path / "home", victoriametrics.url)
    run_id = new_run_id()
    count = 100_000
    start_ms = int(time.time() * 1000) - count - 60_000  # unique ms per point (VM keeps ms)
    with Recorder(
        run_id, experiment="vm peer", settings=settings, tags={"client_id": "c-1"}
    ) as rec:
        for i in range(count):
            rec.record(
                "batch",
                {"loss": i / 1024, "step": i},
                tags={"round": i // 10_000},
                time=(start_ms + i) * 1_000_000,
            )
    stats = rec.stats
    assert stats.points_shipped == count and stats.spool_backlog_bytes == 0

    exported = victoriametrics.samples(f'{{run_id="{run_id}"}}')
    names = {dict(labels)["__name__"] for labels in exported}
    assert names == {"batch_loss", "batch_step"}
    per_series: dict[str, dict[int, float]] = {"batch_loss": {}, "batch_step": {}}
    for labels, samples in exported.items():
        label_map = dict(labels)
        assert label_map["experiment"] == "vm peer"
        assert label_map["mode"] == "centralized"
        assert label_map["client_id"] == "c-1"
        for timestamp, value in samples:
            i = timestamp - start_ms
            assert label_map["round"] == str(i // 10_000)
            per_series[label_map["__name__"]][i] = value
    assert per_series["batch_step"] == {i: float(i) for i in range(count)}
    assert per_series["batch_loss"] == {i: i / 1024 for i in range(count)}


def wait_for(predicate: Any, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.integration
def test_outage_then_sync_delivers_every_point(
    tmp_path: Path, victoriametrics_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server: VictoriaMetrics = victoriametrics_factory()  # not started: down when the run starts
    home = tmp_path / "home"
    settings = make_settings(home, server.url)
    run_id = new_run_id()
    start_ms = int(time.time() * 1000) - 3_600_000
    tuning = RecorderTuning(flush_interval_s=0.05, ship=FAST_RETRY)
    step = 0

    def produce(rec: Recorder, count: int) -> None:
        nonlocal step
        for _ in range(count):
            rec.record("batch", {"step": step}, time=(start_ms + step) * 1_000_000)
            step += 1
        rec.flush()

    rec = Recorder(run_id, experiment=EXPERIMENT, settings=settings, tuning=tuning)
    produce(rec, 3000)
    assert wait_for(lambda: rec.stats.last_error is not None)  # it tried and failed
    server.start()
    produce(rec, 3000)
    assert wait_for(lambda: rec.stats.points_shipped >= 6000), rec.stats
    server.stop()
    produce(rec, 3000)
    time.sleep(0.3)
    server.start()
    produce(rec, 3000)
    server.stop()
    produce(rec, 3000)
    rec.close(timeout=1.0)
    assert rec.stats.spool_backlog_bytes > 0  # the last part waits on disk

    server.start()
    monkeypatch.setenv("RUNWATCH_HOME", str(home))
    monkeypatch.setenv("INFLUXDB_V2_URL", server.url)
    monkeypatch.setenv("INFLUXDB_V2_ORG", "org")
    monkeypatch.setenv("INFLUXDB_V2_TOKEN", "token")
    monkeypatch.chdir(tmp_path)
    assert runwatch_main(["sync"]) == 0

    steps = export_steps(server, run_id, "batch_step")
    assert steps == {start_ms + i: float(i) for i in range(15_000)}


PRODUCER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from collector import Recorder
    from collector.config import Settings

    home, url, run_id, start_ms = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    settings = Settings(home=Path(home), db_url="sqlite://", influx_url=url, influx_org="o",
                        influx_token="t", prometheus_port=0)
    rec = Recorder(run_id, experiment="killed", settings=settings)
    step = 0
    while True:
        rec.record("batch", {"step": step, "loss": step / 2}, time=(start_ms + step) * 1_000_000)
        step += 1
        if step % 500 == 0:
            time.sleep(0.001)
    """
)


@pytest.mark.integration
def test_sigkill_mid_run_then_sync_ships_every_complete_line_and_nothing_corrupt(
    tmp_path: Path, victoriametrics: VictoriaMetrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    run_id = new_run_id()
    start_ms = int(time.time() * 1000) - 7_200_000
    producer = subprocess.Popen(
        [sys.executable, "-c", PRODUCER, str(home), victoriametrics.url, run_id, str(start_ms)],
        stderr=subprocess.PIPE,
    )
    spool = home / "spool" / f"{run_id}.lp"
    try:
        assert wait_for(lambda: spool.exists() and spool.stat().st_size > 3_000_000), (
            producer.stderr.read() if producer.poll() is not None and producer.stderr else ""
        )
    finally:
        producer.send_signal(signal.SIGKILL)
        producer.wait(30)
    # A write cut short by a kill leaves a line without its newline; add one, as it would.
    with spool.open("ab") as raw:
        raw.write(
            b"batch,run_id=" + run_id.encode() + b",experiment=killed,mode=centralized loss=9"
        )

    held = spool.read_bytes()
    complete = held[: held.rfind(b"\n") + 1].splitlines()
    assert len(complete) > 10_000

    monkeypatch.setenv("RUNWATCH_HOME", str(home))
    monkeypatch.setenv("INFLUXDB_V2_URL", victoriametrics.url)
    monkeypatch.chdir(tmp_path)
    assert runwatch_main(["sync", run_id]) == 0

    exported = victoriametrics.samples(f'{{run_id="{run_id}"}}')
    assert {dict(labels)["__name__"] for labels in exported} == {"batch_step", "batch_loss"}
    steps = export_steps(victoriametrics, run_id, "batch_step")
    losses = export_steps(victoriametrics, run_id, "batch_loss")
    assert steps == {start_ms + i: float(i) for i in range(len(complete))}
    assert losses == {start_ms + i: i / 2 for i in range(len(complete))}
