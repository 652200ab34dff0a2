"""The Prometheus exporter: metric names, point mapping, NaN, HTTP serving, promtool."""

from __future__ import annotations

import logging
import math
import socket
import subprocess
import threading
import time
import urllib.request

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from collector import prometheus as prom
from collector.config import load_settings
from collector.prometheus import PrometheusExporter, start_exporter
from collector.recorder import Recorder, RecorderTuning
from collector.run import Run
from tests.servers._process import free_port


def samples(exporter: PrometheusExporter) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = exporter.render().decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(exporter: PrometheusExporter, name: str, **labels: str) -> float | None:
    key = (name, frozenset({"run_id": exporter.run_id, **labels}.items()))
    return samples(exporter).get(key)


@pytest.fixture
def exporter() -> PrometheusExporter:
    return PrometheusExporter("run-1", experiment="exp", mode="centralized")


def test_uses_its_own_registry_never_the_global_one(exporter: PrometheusExporter) -> None:
    assert exporter.registry is not REGISTRY
    assert REGISTRY.get_sample_value("training_epoch", {"run_id": "run-1"}) is None
    # two runs in one process do not collide
    other = PrometheusExporter("run-2", experiment="exp")
    other.epoch.set(7)
    assert value(exporter, prom.EPOCH) is None
    assert value(other, prom.EPOCH) == 7


def test_injected_registry_is_used() -> None:
    registry = CollectorRegistry()
    PrometheusExporter("run-x", experiment="e", registry=registry)
    assert (
        registry.get_sample_value(
            prom.RUN_INFO, {"run_id": "run-x", "experiment": "e", "mode": "centralized"}
        )
        == 1.0
    )


def test_run_info_and_status_are_labelled_by_run(exporter: PrometheusExporter) -> None:
    assert value(exporter, prom.RUN_INFO, experiment="exp", mode="centralized") == 1.0
    assert value(exporter, prom.RUN_STATUS, status="in_progress") == 1.0
    exporter.set_status("completed")
    assert value(exporter, prom.RUN_STATUS, status="completed") == 1.0
    assert value(exporter, prom.RUN_STATUS, status="in_progress") == 0.0
    exporter.set_status("bogus")  # ignored with a warning
    assert value(exporter, prom.RUN_STATUS, status="completed") == 1.0


def test_values_never_set_are_absent_not_zero(exporter: PrometheusExporter) -> None:
    assert value(exporter, prom.VAL_LOSS) is None
    assert value(exporter, prom.FEDERATED_ROUND) is None
    # counters exist from the start at 0
    assert value(exporter, prom.OPTIMIZER_STEPS) == 0.0
    assert value(exporter, prom.SAMPLES) == 0.0


@pytest.mark.parametrize("at_once", [False, True], ids=["observe", "observe_many"])
def test_the_epoch_gauge_never_goes_back_to_an_epoch_whose_point_comes_late(
    exporter: PrometheusExporter, at_once: bool
) -> None:
    """An epoch's point is written after the next epoch started: observing it then leaves
    the gauge at the epoch under way."""

    def observe(*points: tuple[str, dict[str, float]]) -> None:
        tagged = [(measurement, fields, {"run_id": "run-1"}) for measurement, fields in points]
        if at_once:
            exporter.observe_many(tagged)
        else:
            for point in tagged:
                exporter.observe(*point)

    observe(("batch", {"epoch": 0.0, "step": 0.0}))
    exporter.epoch_started(1)
    observe(("epoch", {"epoch": 0.0, "train_loss": 0.4}))
    assert value(exporter, prom.EPOCH) == 1.0
    assert value(exporter, prom.TRAIN_LOSS) == 0.4  # the rest of the late point still counts
    observe(("epoch", {"epoch": 1.0}), ("batch", {"epoch": 2.0, "step": 9.0}))
    assert value(exporter, prom.EPOCH) == 2.0
    observe(("batch", {"epoch": 3.0, "step": 12.0}), ("epoch", {"epoch": 2.0}))  # one flush
    assert value(exporter, prom.EPOCH) == 3.0
    exporter.epoch_started(0)  # the trainer's word stands: a new fit from epoch 0
    assert value(exporter, prom.EPOCH) == 0.0


def test_epoch_point_maps_to_gauges(exporter: PrometheusExporter) -> None:
    exporter.observe(
        "epoch",
        {
            "epoch": 3.0,
            "train_loss": 0.4,
            "val_loss": 0.5,
            "val_acc": 0.9,
            "val_precision": 0.8,
            "val_recall": 0.7,
            "val_f1": 0.75,
            "val_auroc": 0.95,
            "lr": 0.01,
            "val_cm_tp": 4.0,
        },
        {"run_id": "run-1"},
    )
    assert value(exporter, prom.EPOCH) == 3.0
    assert value(exporter, prom.TRAIN_LOSS) == 0.4
    assert value(exporter, prom.VAL_LOSS) == 0.5
    assert value(exporter, prom.VAL_ACCURACY) == 0.9
    assert value(exporter, prom.VAL_PRECISION) == 0.8
    assert value(exporter, prom.VAL_RECALL) == 0.7
    assert value(exporter, prom.VAL_F1) == 0.75
    assert value(exporter, prom.VAL_AUROC) == 0.95
    assert value(exporter, prom.LEARNING_RATE) == 0.01


def test_batch_and_gradient_points_advance_the_step_counter(exporter: PrometheusExporter) -> None:
    exporter.observe("batch", {"loss": 0.3, "step": 10.0, "epoch": 1.0, "samples_per_s": 99.0}, {})
    exporter.observe("gradient", {"total_norm": 2.5, "step": 20.0}, {})
    exporter.observe("batch", {"loss": 0.2, "step": 15.0}, {})  # older step: counter stays
    # step = steps taken before that batch's own (Lightning's numbering): 21 taken after it
    assert value(exporter, prom.OPTIMIZER_STEPS) == 21.0
    assert value(exporter, prom.TRAIN_LOSS) == 0.2
    assert value(exporter, prom.GRADIENT_NORM) == 2.5
    assert value(exporter, prom.SAMPLES_PER_SECOND) == 99.0


def test_nonfinite_flag_shows_nan_and_is_counted(exporter: PrometheusExporter) -> None:
    exporter.observe("batch", {"loss": 0.3}, {})
    exporter.observe("batch", {"loss_nonfinite": 1.0, "step": 5.0}, {})
    loss = value(exporter, prom.TRAIN_LOSS)
    assert loss is not None and math.isnan(loss)
    assert value(exporter, prom.NONFINITE_VALUES) == 1.0
    assert value(exporter, prom.OPTIMIZER_STEPS) == 6.0


_GAUGE_FIELDS = ["loss", "train_loss", "epoch", "step", "samples_per_s", "total_norm", "lr"]
_OBSERVED_FIELDS = st.dictionaries(
    st.sampled_from(
        _GAUGE_FIELDS
        + ["val_loss", "accuracy", "unmapped"]
        + [f"{f}_nonfinite" for f in _GAUGE_FIELDS]
    ),
    st.floats(min_value=-5, max_value=50, allow_nan=False),
    max_size=4,
)
_OBSERVED_POINTS = st.lists(
    st.tuples(
        st.sampled_from(["batch", "gradient", "epoch", "round", "client_round", "system"]),
        _OBSERVED_FIELDS,
        st.fixed_dictionaries(
            {},
            optional={
                "round": st.sampled_from(["1", "2"]),
                "source": st.just("server"),
                "client_id": st.just("c1"),
            },
        ),
    ),
    max_size=12,
)


@given(points=_OBSERVED_POINTS)
@settings(max_examples=200, deadline=None)
def test_observing_a_flush_at_once_leaves_what_observing_each_point_leaves(
    points: list[tuple[str, dict[str, float], dict[str, str]]],
) -> None:
    """``observe_many`` (one update per gauge) ends where ``observe`` point by point ends:
    every gauge at its last value, NaN where the last was a non-finite flag, the step counter
    and the epoch at their highest, every non-finite value counted."""
    one_by_one = PrometheusExporter("run-1", experiment="exp")
    at_once = PrometheusExporter("run-1", experiment="exp")
    for measurement, fields, tags in points:
        one_by_one.observe(measurement, fields, tags)
    at_once.observe_many(points)
    moving = (prom.RUN_START_TIMESTAMP, "_created")
    expected = {k: v for k, v in samples(one_by_one).items() if not k[0].endswith(moving)}
    found = {k: v for k, v in samples(at_once).items() if not k[0].endswith(moving)}
    assert found.keys() == expected.keys()
    for key, number in expected.items():
        assert found[key] == number or (math.isnan(found[key]) and math.isnan(number)), key


def test_step_completed_feeds_histogram_samples_and_timestamp(
    exporter: PrometheusExporter,
) -> None:
    exporter.step_completed(1, duration_s=0.002, samples=32)
    exporter.step_completed(2, duration_s=0.004, samples=32)
    assert value(exporter, prom.OPTIMIZER_STEPS) == 2.0
    assert value(exporter, prom.SAMPLES) == 64.0
    assert value(exporter, prom.STEP_DURATION + "_count") == 2.0
    assert value(exporter, prom.STEP_DURATION + "_sum") == pytest.approx(0.006)
    timestamp = value(exporter, prom.LAST_STEP_TIMESTAMP)
    assert timestamp is not None and timestamp > 1e9


def test_federated_points_and_methods(exporter: PrometheusExporter) -> None:
    exporter.set_rounds_planned(5)
    exporter.round_started(2)
    exporter.observe(
        "round",
        {"loss": 0.6, "accuracy": 0.8, "recall": 0.7, "duration_s": 3.0},
        {"round": "2", "source": "server"},
    )
    exporter.observe("round", {"loss": 9.0}, {"round": "2", "source": "aggregated"})
    exporter.observe("client_round", {"train_loss": 0.9}, {"client_id": "c1", "round": "2"})
    exporter.observe("client_round", {"train_loss_nonfinite": 1.0}, {"client_id": "c2"})
    exporter.round_finished(2, duration_s=3.5, responded=3, failed=1)
    assert value(exporter, prom.FEDERATED_ROUNDS_PLANNED) == 5
    assert value(exporter, prom.FEDERATED_ROUND) == 2
    assert value(exporter, prom.FEDERATED_SERVER_EVAL_LOSS) == 0.6  # aggregated did not overwrite
    assert value(exporter, prom.FEDERATED_SERVER_EVAL_ACCURACY) == 0.8
    assert value(exporter, prom.FEDERATED_SERVER_EVAL_RECALL) == 0.7
    assert value(exporter, prom.FEDERATED_ROUND_DURATION) == 3.5
    assert value(exporter, prom.FEDERATED_CLIENTS_RESPONDED) == 3
    assert value(exporter, prom.FEDERATED_CLIENTS_FAILED) == 1
    assert value(exporter, prom.FEDERATED_CLIENT_TRAIN_LOSS, client_id="c1") == 0.9
    c2 = value(exporter, prom.FEDERATED_CLIENT_TRAIN_LOSS, client_id="c2")
    assert c2 is not None and math.isnan(c2)


def test_names_follow_conventions(exporter: PrometheusExporter) -> None:
    exporter.step_completed(1, duration_s=0.01, samples=1)
    names = {name for name, _ in samples(exporter)}
    for name in names:
        assert name.startswith(("training_", "federated_")), name
    text = exporter.render().decode()
    for family in text_string_to_metric_families(text):
        if family.type == "counter" and family.samples:
            assert any(s.name.endswith("_total") for s in family.samples), family.name
    # step, epoch and round are values, never labels
    label_names = {k for _, labels in samples(exporter) for k, _ in labels}
    assert not label_names & {"step", "epoch", "round"}


def test_promtool_accepts_the_exposition(exporter: PrometheusExporter, promtool: str) -> None:
    exporter.observe("epoch", {"epoch": 1.0, "train_loss": 0.5, "val_loss_nonfinite": 1.0}, {})
    exporter.step_completed(3, duration_s=0.01, samples=8)
    exporter.round_finished(1, duration_s=1.0, responded=2, failed=0)
    exporter.set_client_train_loss("client-1", 0.4)
    result = subprocess.run(
        [promtool, "check", "metrics"], input=exporter.render(), capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert result.stdout.strip() == b"" and result.stderr.strip() == b""  # no lint findings


def test_http_server_binds_the_given_address_and_stops(exporter: PrometheusExporter) -> None:
    port = free_port()
    assert exporter.start_http_server("127.0.0.1", port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            body = resp.read().decode()
        assert 'training_run_info{experiment="exp",mode="centralized",run_id="run-1"} 1.0' in body
    finally:
        exporter.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_busy_port_warns_once_and_does_not_raise(
    exporter: PrometheusExporter, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        with caplog.at_level(logging.WARNING, logger="collector.prometheus"):
            assert exporter.start_http_server("127.0.0.1", port) is False
    warnings = [r for r in caplog.records if "not started" in r.getMessage()]
    assert len(warnings) == 1
    assert not exporter.serving
    exporter.observe("batch", {"loss": 1.0}, {})  # still usable
    assert value(exporter, prom.TRAIN_LOSS) == 1.0


def test_start_exporter_respects_settings(tmp_path) -> None:  # type: ignore[no-untyped-def]
    disabled = load_settings(
        {"RUNWATCH_HOME": str(tmp_path), "RUNWATCH_PROMETHEUS_PORT": "0"}, dotenv=None
    )
    assert start_exporter(disabled, "r", experiment="e") is None
    port = free_port()
    enabled = load_settings(
        {"RUNWATCH_HOME": str(tmp_path), "RUNWATCH_PROMETHEUS_PORT": str(port)}, dotenv=None
    )
    exporter = start_exporter(enabled, "r", experiment="e", mode="federated")
    assert exporter is not None
    try:
        assert exporter.serving and exporter.port == port
        assert value(exporter, prom.RUN_INFO, experiment="e", mode="federated") == 1.0
    finally:
        exporter.stop()


def test_recorder_feeds_the_exporter_as_observer(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = load_settings(
        {"RUNWATCH_HOME": str(tmp_path), "RUNWATCH_PROMETHEUS_PORT": "0"}, dotenv=None
    )
    exporter = PrometheusExporter("run-obs", experiment="e")
    with Recorder("run-obs", experiment="e", settings=settings, observers=(exporter,)) as rec:
        rec.record("epoch", {"epoch": 2, "val_loss": 0.25, "train/loss": 0.5})
        rec.record("gradient", {"total_norm": 1.5, "step": 40})
    assert value(exporter, prom.EPOCH) == 2.0
    assert value(exporter, prom.VAL_LOSS) == 0.25
    assert value(exporter, prom.TRAIN_LOSS) == 0.5  # name normalised by the recorder
    assert value(exporter, prom.GRADIENT_NORM) == 1.5
    assert value(exporter, prom.OPTIMIZER_STEPS) == 41.0


def test_a_scrape_sees_every_point_recorded_before_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = load_settings(
        {"RUNWATCH_HOME": str(tmp_path), "RUNWATCH_PROMETHEUS_PORT": "0"}, dotenv=None
    )
    exporter = PrometheusExporter("run-scrape", experiment="e")
    slow_flush = RecorderTuning(flush_interval_s=3600)  # only the scrape flushes
    with Recorder(
        "run-scrape", experiment="e", settings=settings, observers=(exporter,), tuning=slow_flush
    ) as rec:
        rec.record("batch", {"loss": 0.75, "step": 9})
        assert rec._queue.entries  # queued, not observed yet
        assert value(exporter, prom.TRAIN_LOSS) == 0.75
        assert value(exporter, prom.OPTIMIZER_STEPS) == 10.0
        assert not rec._queue.entries  # the scrape had it spooled and observed
        rec.record("batch", {"loss": 0.5, "step": 10})
        registry_value = exporter.registry.get_sample_value(
            prom.TRAIN_LOSS, {"run_id": "run-scrape"}
        )
        assert registry_value == 0.5
    del rec
    assert value(exporter, prom.TRAIN_LOSS) == 0.5  # a gone recorder's hook is a no-op


def test_step_duration_buckets(exporter: PrometheusExporter) -> None:
    for duration in (0.0004, 0.002, 0.002, 50.0):
        exporter.step_completed(1, duration_s=duration)
    bucket = prom.STEP_DURATION + "_bucket"
    assert value(exporter, bucket, le="0.0005") == 1.0
    assert value(exporter, bucket, le="0.001") == 1.0
    assert value(exporter, bucket, le="0.0025") == 3.0
    assert value(exporter, bucket, le="30.0") == 3.0
    assert value(exporter, bucket, le="+Inf") == 4.0
    assert value(exporter, prom.STEP_DURATION + "_sum") == pytest.approx(50.0044)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def status_line(status: str, run_id: str) -> str:
    return f'{prom.RUN_STATUS}{{run_id="{run_id}",status="{status}"}} 1.0'


def test_a_scraped_exporter_waits_for_the_final_scrape_before_stopping(
    exporter: PrometheusExporter,
) -> None:
    port = free_port()
    assert exporter.start_http_server("127.0.0.1", port)
    assert status_line("in_progress", "run-1") in scrape(port)
    exporter.set_status("completed")
    stopper = threading.Thread(target=exporter.stop, kwargs={"final_scrape_timeout_s": 30.0})
    stopper.start()
    time.sleep(0.3)
    assert stopper.is_alive()  # still serving: Prometheus has not seen the final status yet
    assert status_line("completed", "run-1") in scrape(port)
    stopper.join(timeout=10)
    assert not stopper.is_alive() and not exporter.serving
    with pytest.raises(OSError):
        scrape(port)


def test_a_never_scraped_exporter_stops_at_once(exporter: PrometheusExporter) -> None:
    assert exporter.start_http_server("127.0.0.1", free_port())
    started = time.monotonic()
    exporter.stop(final_scrape_timeout_s=30.0)
    assert time.monotonic() - started < 5.0 and not exporter.serving


def test_a_plain_loop_runs_exporter_serves_the_run_and_reports_failure(tmp_path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    settings = load_settings(
        {"RUNWATCH_HOME": str(tmp_path), "RUNWATCH_PROMETHEUS_PORT": str(port)}, dotenv=None
    )
    run = Run("e", settings=settings, run_id="run-own")
    with pytest.raises(RuntimeError, match="training bug"), run:
        assert run.exporter is not None and run.exporter.port == port
        assert run.exporter.serving
        run.record("batch", {"loss": 0.75, "step": 3})
        assert value(run.exporter, prom.TRAIN_LOSS) == 0.75
        raise RuntimeError("training bug")
    assert run.exporter is not None and not run.exporter.serving
    assert value(run.exporter, prom.RUN_STATUS, status="failed") == 1.0

    disabled = load_settings(
        {"RUNWATCH_HOME": str(tmp_path), "RUNWATCH_PROMETHEUS_PORT": "0"}, dotenv=None
    )
    with Run("e", settings=disabled, run_id="run-off") as run:
        assert run.exporter is None
    with Recorder("run-rec", experiment="e", settings=settings) as rec:
        assert not hasattr(rec, "exporter")  # the run owns the exporter, never the recorder


def test_unscraped_step_durations_stay_bounded(exporter: PrometheusExporter) -> None:
    for step in range(1, 20_001):
        exporter.step_completed(step, duration_s=0.001)
    assert len(exporter.steps.ended) <= 4_097
    assert value(exporter, prom.STEP_DURATION + "_count") == 20_000.0


def test_the_exporter_asks_for_every_measurement_it_maps(exporter: PrometheusExporter) -> None:
    mapped = {name.split(":")[0] for name in exporter._tables} | {"client_round"}
    assert set(exporter.observed_measurements) == mapped
    before = exporter.render()
    for measurement in ("gradient_layer", "system", "event"):  # skipped by the recorder
        exporter.observe(measurement, {"norm": 1.0, "cpu_percent": 5.0, "value": 1.0}, {})
    assert exporter.render() == before
