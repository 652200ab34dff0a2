"""The store's CRUD patterns (bulk writes, eager loading, federated context, final stats) against a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import func, select

from collector.errors import UnknownRunError
from collector.ids import is_run_id
from collector.store import RunExistsError, Store
from collector.store.models import Client, Round, RunMetric


def _cm_epoch(
    epoch: int, tp: float, tn: float, fp: float, fn: float, **extra: object
) -> dict[str, object]:
    return {
        "epoch": epoch,
        "val_cm_tp": tp,
        "val_cm_tn": tn,
        "val_cm_fp": fp,
        "val_cm_fn": fn,
        **extra,
    }


# -- run lifecycle -----------------------------------------------------------------------


def test_create_run_returns_a_run_id_and_starts_in_progress(store: Store) -> None:
    run_id = store.create_run("baseline", source_path="/data/xray", host="node-1")

    run = store.get_run(run_id)
    assert is_run_id(run_id)
    assert (run.experiment, run.mode, run.status) == ("baseline", "centralized", "in_progress")
    assert (run.source_path, run.host, run.end_time) == ("/data/xray", "node-1", None)
    assert run.start_time.tzinfo is UTC and run.heartbeat_at.tzinfo is UTC
    assert abs(run.start_time - datetime.now(UTC)) < timedelta(minutes=1)


def test_create_run_accepts_a_given_run_id_once(store: Store) -> None:
    store.create_run("fed", "federated", run_id="server-chosen-id")
    assert store.get_run("server-chosen-id").mode == "federated"
    with pytest.raises(RunExistsError):
        store.create_run("fed", run_id="server-chosen-id")


def test_create_run_rejects_an_unknown_mode(store: Store) -> None:
    with pytest.raises(ValueError, match="mode"):
        store.create_run("x", "decentralized")


def test_heartbeat_moves_heartbeat_forward(store: Store) -> None:
    run_id = store.create_run("hb")
    before = store.get_run(run_id).heartbeat_at
    time.sleep(0.01)
    store.heartbeat(run_id)
    assert store.get_run(run_id).heartbeat_at > before


@pytest.mark.parametrize("status", ["completed", "failed"])
def test_complete_run_sets_status_and_end_time(store: Store, status: str) -> None:
    run_id = store.create_run("done")
    store.complete_run(run_id, status)
    run = store.get_run(run_id)
    assert run.status == status
    assert run.end_time is not None and run.end_time >= run.start_time
    assert run.duration_s is not None and run.duration_s >= 0


def test_complete_run_rejects_other_statuses(store: Store) -> None:
    run_id = store.create_run("done")
    with pytest.raises(ValueError, match="status"):
        store.complete_run(run_id, "in_progress")


def test_stale_runs_are_marked_crashed_and_fresh_ones_are_not(store: Store) -> None:
    stale = store.create_run("dies")
    finished = store.create_run("finishes")
    store.complete_run(finished)
    time.sleep(0.3)
    alive = store.create_run("alive")

    crashed = store.mark_stale_runs_crashed(timedelta(seconds=0.2))

    assert crashed == [stale]
    assert store.get_run(stale).status == "crashed"
    assert store.get_run(stale).end_time == store.get_run(stale).heartbeat_at
    assert store.get_run(alive).status == "in_progress"
    assert store.get_run(finished).status == "completed"
    assert store.mark_stale_runs_crashed(timedelta(seconds=0.2)) == []


def test_reads_and_new_runs_see_stale_runs_as_crashed(new_db_url: Callable[[], str]) -> None:
    store = Store(new_db_url(), stale_after=timedelta(seconds=0.2))
    try:
        dead = store.create_run("dies")
        time.sleep(0.3)
        assert [s.status for s in store.list_runs()] == ["crashed"]
        assert store.get_run(dead).status == "crashed"

        other = Store(store.url, stale_after=timedelta(seconds=0.2))
        second = other.create_run("second")
        time.sleep(0.3)
        third = other.create_run("third")  # a new run's start marks the one before
        assert store.mark_stale_runs_crashed(timedelta(seconds=0.2)) == []
        assert {s.run_id: s.status for s in store.list_runs()} == {
            dead: "crashed",
            second: "crashed",
            third: "in_progress",
        }
        other.dispose()
    finally:
        store.dispose()


def test_a_crashed_run_that_heartbeats_again_is_in_progress(store: Store) -> None:
    run_id = store.create_run("outage")
    time.sleep(0.3)
    store.mark_stale_runs_crashed(timedelta(seconds=0.2))
    assert store.get_run(run_id).status == "crashed"

    store.heartbeat(run_id)

    summary = store.get_run(run_id)
    assert summary.status == "in_progress" and summary.end_time is None
    store.complete_run(run_id)
    store.heartbeat(run_id)  # a late beat never reopens a finished run
    assert store.get_run(run_id).status == "completed"


def test_mark_crashed_changes_only_a_run_in_progress(store: Store) -> None:
    running, finished = store.create_run("running"), store.create_run("finished")
    store.complete_run(finished, "failed")

    assert store.mark_crashed(running) is True
    assert store.mark_crashed(finished) is False
    assert store.get_run(running).status == "crashed"
    assert store.get_run(finished).status == "failed"
    with pytest.raises(UnknownRunError):
        store.mark_crashed("no-such-run")


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.get_run("nope"),
        lambda s: s.heartbeat("nope"),
        lambda s: s.complete_run("nope"),
        lambda s: s.persist_epoch_metrics("nope", [{"epoch": 0, "loss": 1.0}]),
        lambda s: s.save_hyperparams("nope", {"lr": 1}),
        lambda s: s.metrics_by_context("nope", "epoch_end"),
        lambda s: s.ensure_client("nope", "c1"),
        lambda s: s.add_artifact("nope", "/ckpt"),
    ],
)
def test_unknown_run_id_raises_unknown_run_error(store: Store, call: object) -> None:
    with pytest.raises(UnknownRunError) as info:
        call(store)  # type: ignore[operator]
    assert info.value.run_id == "nope"


# -- hyperparameters -----------------------------------------------------------------------


def test_hyperparams_are_flattened_json_values_and_upserted(store: Store) -> None:
    run_id = store.create_run(
        "hp", hyperparams={"lr": 0.001, "model": {"name": "resnet", "depth": 18}}
    )
    store.save_hyperparams(
        run_id, {"lr": 0.01, "augment": True, "betas": (0.9, 0.99), "none": None}
    )

    assert store.get_run(run_id).hyperparams == {
        "augment": True,
        "betas": [0.9, 0.99],
        "lr": 0.01,
        "model.depth": 18,
        "model.name": "resnet",
        "none": None,
    }


# -- bulk persistence ---------------------------------------------------------------------


def test_persist_epoch_metrics_writes_one_row_per_value_with_dataset_type(store: Store) -> None:
    run_id = store.create_run("bulk")
    epochs = [
        {
            "epoch": e,
            "train_loss": 1.0 / (e + 1),
            "val_acc": 0.5 + e / 10,
            "test_f1": 0.7,
            "lr": 0.1,
            "timestamp": 123.0,
            "global_step": 99,
        }
        for e in range(3)
    ]

    written = store.persist_epoch_metrics(run_id, epochs)

    assert written == 12
    records = store.metrics_by_context(run_id, "epoch_end")
    assert len(records) == 12
    assert {(r.name, r.dataset_type) for r in records} == {
        ("train_loss", "train"),
        ("val_acc", "validation"),
        ("test_f1", "test"),
        ("lr", "other"),
    }
    assert [r.value for r in records if r.name == "train_loss"] == [1.0, 0.5, pytest.approx(1 / 3)]
    assert sorted({r.step for r in records}) == [0, 1, 2]
    assert all(r.recorded_at.tzinfo is UTC for r in records)
    assert [r.name for r in store.metrics_by_dataset_type(run_id, "validation")] == ["val_acc"] * 3


def test_persist_epoch_metrics_uses_one_insert_statement(store: Store) -> None:
    from sqlalchemy import event

    run_id = store.create_run("bulk")
    statements: list[str] = []
    listener = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(store.engine, "before_cursor_execute", listener)
    try:
        store.persist_epoch_metrics(run_id, [{"epoch": e, "loss": float(e)} for e in range(500)])
    finally:
        event.remove(store.engine, "before_cursor_execute", listener)
    inserts = [s for s in statements if s.lstrip().upper().startswith("INSERT INTO RUN_METRICS")]
    assert len(inserts) == 1


def test_step_falls_back_to_step_key_then_position(store: Store) -> None:
    run_id = store.create_run("steps")
    store.persist_epoch_metrics(run_id, [{"step": 40, "loss": 1.0}, {"loss": 2.0}], context="batch")
    assert [(r.step, r.value) for r in store.metrics_by_context(run_id, "batch")] == [
        (1, 2.0),
        (40, 1.0),
    ]


def test_empty_epochs_write_nothing(store: Store) -> None:
    run_id = store.create_run("empty")
    assert store.persist_epoch_metrics(run_id, []) == 0
    assert store.persist_epoch_metrics(run_id, [{"epoch": 0}]) == 0


def test_unknown_context_is_rejected(store: Store) -> None:
    run_id = store.create_run("ctx")
    with pytest.raises(ValueError, match="context"):
        store.persist_epoch_metrics(run_id, [{"epoch": 0, "loss": 1.0}], context="weekly")


def test_numeric_types_convert_to_float(store: Store) -> None:
    run_id = store.create_run("types")
    epoch = {
        "epoch": np.int64(2),
        "flag": True,
        "count": 7,
        "np_float": np.float32(0.25),
        "np_int": np.int64(3),
    }
    assert store.persist_epoch_metrics(run_id, [epoch]) == 4
    values = {r.name: r.value for r in store.metrics_by_context(run_id, "epoch_end")}
    assert values == {"flag": 1.0, "count": 7.0, "np_float": 0.25, "np_int": 3.0}
    assert all(type(v) is float for v in values.values())
    assert {r.step for r in store.metrics_by_context(run_id, "epoch_end")} == {2}


def test_bad_values_are_never_stored_as_numbers_and_warn_once_per_name(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    run_id = store.create_run("bad")
    epochs = [
        {
            "epoch": e,
            "val_loss": math.nan,
            "grad": -math.inf,
            "note": "diverged",
            "missing": None,
            "z": complex(1, 2),
            "ok": 1.0,
        }
        for e in range(3)
    ]

    with caplog.at_level(logging.WARNING, logger="collector.store"):
        written = store.persist_epoch_metrics(run_id, epochs)
        store.persist_epoch_metrics(run_id, [{"epoch": 3, "val_loss": math.inf}])

    records = store.metrics_by_context(run_id, "epoch_end")
    assert written == 9
    assert {r.name for r in records} == {"ok", "val_loss_nonfinite", "grad_nonfinite"}
    assert all(math.isfinite(r.value) for r in records)
    assert [r.value for r in records if r.name == "val_loss_nonfinite"] == [1.0] * 4
    assert next(r.dataset_type for r in records if r.name == "val_loss_nonfinite") == "validation"
    warned = [r.getMessage() for r in caplog.records]
    for name in ("val_loss", "grad", "note", "missing", "z"):
        assert sum(f"'{name}'" in message for message in warned) == 1, name
    assert len(warned) == 5


def test_bad_server_and_round_values_follow_the_same_rule(store: Store) -> None:
    run_id = store.create_run("fed", "federated")
    store.record_round(
        run_id,
        1,
        server_metrics={"loss": math.nan, "acc": 0.5, "who": "x"},
        aggregated_metrics={"val_loss": math.inf, "val_acc": 0.4},
    )
    store.add_server_evaluation(run_id, 1, {"loss": math.nan, "accuracy": 0.9})
    store.add_artifact(run_id, "/ckpt/a.ckpt", metric_name="val_loss", metric_value=math.nan)

    (round_,) = store.rounds(run_id)
    assert round_.server_metrics == {"loss_nonfinite": 1.0, "acc": 0.5}
    assert round_.aggregated_client_metrics == {"val_loss_nonfinite": 1.0, "val_acc": 0.4}
    (evaluation,) = store.server_evaluations(run_id)
    assert evaluation.loss is None and evaluation.accuracy == 0.9
    assert evaluation.metrics == {"loss_nonfinite": 1.0, "accuracy": 0.9}
    assert store.get_run(run_id).artifacts[0].metric_value is None


# -- federated context resolution -------------------------------------------------------------


def test_clients_and_rounds_resolve_per_run(store: Store) -> None:
    first = store.create_run("fed-a", "federated")
    second = store.create_run("fed-b", "federated")

    store.persist_epoch_metrics(
        first, [{"epoch": 0, "train_loss": 0.9}], client_id="7", round_number=1
    )
    store.persist_epoch_metrics(
        second, [{"epoch": 0, "train_loss": 0.1}], client_id="7", round_number=1
    )
    store.persist_epoch_metrics(
        first, [{"epoch": 1, "train_loss": 0.8}], client_id="7", round_number=2
    )

    assert store.ensure_client(first, "7") != store.ensure_client(second, "7")
    assert store.ensure_client(first, "7") == store.ensure_client(first, "7")
    first_by_client = store.metrics_grouped_by_client(first)
    assert list(first_by_client) == ["7"]
    assert [(r.value, r.round_number) for r in first_by_client["7"]] == [(0.9, 1), (0.8, 2)]
    assert [r.value for r in store.metrics_grouped_by_client(second)["7"]] == [0.1]
    with store.session(write=False) as session:
        assert session.scalar(select(func.count()).select_from(Client)) == 2
        assert session.scalar(select(func.count()).select_from(Round)) == 3


def test_metrics_grouped_by_client_orders_clients_and_steps(store: Store) -> None:
    run_id = store.create_run("fed", "federated")
    for client in ("b", "a"):
        store.persist_epoch_metrics(
            run_id,
            [{"epoch": 1, "loss": 1.0}, {"epoch": 0, "loss": 2.0}],
            client_id=client,
            round_number=1,
        )
    store.persist_epoch_metrics(run_id, [{"epoch": 0, "central": 1.0}])

    grouped = store.metrics_grouped_by_client(run_id)

    assert list(grouped) == ["a", "b"]
    assert [r.step for r in grouped["a"]] == [0, 1]
    assert all(r.client_id == "a" for r in grouped["a"])


def test_record_round_upserts_and_stores_aggregates_as_metrics(store: Store) -> None:
    run_id = store.create_run("fed", "federated")
    start = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    store.record_round(run_id, 1, started_at=start, num_clients=3)
    store.record_round(run_id, 1, aggregated_metrics={"val_acc": 0.5, "val_loss": 0.7})
    store.record_round(
        run_id, 1, aggregated_metrics={"val_acc": 0.6}, ended_at=start + timedelta(seconds=9)
    )

    (round_,) = store.rounds(run_id)
    assert (round_.round_number, round_.num_clients, round_.status) == (1, 3, "completed")
    assert round_.started_at == start and round_.ended_at == start + timedelta(seconds=9)
    aggregated = store.aggregated_metrics(run_id)
    assert [(r.name, r.value, r.step, r.round_number) for r in aggregated] == [
        ("val_acc", 0.6, 1, 1)
    ]


def test_naive_datetimes_are_taken_as_local_time(store: Store) -> None:
    run_id = store.create_run("fed", "federated")
    naive = datetime(2025, 6, 1, 12, 0, 0)
    store.record_round(run_id, 1, started_at=naive)
    assert store.rounds(run_id)[0].started_at == naive.astimezone(UTC)


def test_server_evaluation_fills_confusion_matrix_columns(store: Store) -> None:
    run_id = store.create_run("fed", "federated")
    store.add_server_evaluation(
        run_id,
        1,
        {
            "server_loss": 0.4,
            "server_acc": 0.8,
            "server_precision": 0.7,
            "server_recall": 0.6,
            "server_f1": 0.65,
            "server_auroc": 0.9,
            "server_cm_tp": 30,
            "server_cm_tn": 50,
            "server_cm_fp": 12,
            "server_cm_fn": 8,
            "num_examples": 100,
        },
    )
    store.add_server_evaluation(
        run_id, 2, {"loss": 0.3, "cm_tp": 35, "cm_tn": 52, "cm_fp": 10, "cm_fn": 3}
    )
    store.add_server_evaluation(
        run_id, 2, {"loss": 0.25, "cm_tp": 36, "cm_tn": 52, "cm_fp": 9, "cm_fn": 3}
    )

    first, second = store.server_evaluations(run_id)
    assert (first.loss, first.accuracy, first.precision, first.recall, first.f1, first.auroc) == (
        0.4,
        0.8,
        0.7,
        0.6,
        0.65,
        0.9,
    )
    assert (first.cm_tp, first.cm_tn, first.cm_fp, first.cm_fn) == (30, 50, 12, 8)
    assert first.metrics is not None and first.metrics["num_examples"] == 100
    assert (second.round_number, second.loss, second.cm_tp, second.auroc) == (2, 0.25, 36, None)


# -- final confusion-matrix stats -----------------------------------------------------------------


def test_complete_run_stores_final_stats_from_the_last_epoch(store: Store) -> None:
    run_id = store.create_run("cm")
    store.persist_epoch_metrics(
        run_id,
        [
            _cm_epoch(0, 1, 1, 1, 1, val_auroc=0.5),
            _cm_epoch(2, 40, 45, 10, 5, val_auroc=0.93),
            _cm_epoch(1, 2, 2, 2, 2),
        ],
    )

    store.complete_run(run_id)

    stats = store.final_stats(run_id)
    assert stats["final_precision_cm"] == pytest.approx(40 / 50)
    assert stats["final_recall_cm"] == pytest.approx(40 / 45)
    p, r = 40 / 50, 40 / 45
    assert stats["final_f1_cm"] == pytest.approx(2 * p * r / (p + r))
    assert stats["final_accuracy_cm"] == pytest.approx(85 / 100)
    assert stats["final_auroc_cm"] == 0.93
    assert (stats["final_cm_tp"], stats["final_cm_fn"]) == (40, 5)
    final = store.metrics_by_context(run_id, "final_epoch")
    assert {r.step for r in final} == {2} and {r.dataset_type for r in final} == {"other"}
    assert store.get_run(run_id).final_stats == stats


def test_final_stats_guard_zero_division(store: Store) -> None:
    run_id = store.create_run("zeros")
    store.persist_epoch_metrics(run_id, [_cm_epoch(0, 0, 0, 0, 0)])
    store.complete_run(run_id)
    stats = store.final_stats(run_id)
    assert [
        stats[k]
        for k in ("final_precision_cm", "final_recall_cm", "final_f1_cm", "final_accuracy_cm")
    ] == [0.0, 0.0, 0.0, 0.0]
    assert "final_auroc_cm" not in stats


def test_no_confusion_matrix_means_no_final_stats(store: Store) -> None:
    run_id = store.create_run("no-cm")
    store.persist_epoch_metrics(run_id, [{"epoch": 0, "val_loss": 0.2, "val_cm_tp": 3}])
    store.complete_run(run_id)
    assert store.final_stats(run_id) == {}


def test_completing_twice_replaces_final_stats(store: Store) -> None:
    run_id = store.create_run("twice")
    store.persist_epoch_metrics(run_id, [_cm_epoch(0, 1, 1, 0, 0)])
    store.complete_run(run_id, "failed")
    store.persist_epoch_metrics(run_id, [_cm_epoch(1, 3, 1, 1, 0)])
    store.complete_run(run_id)
    assert len(store.metrics_by_context(run_id, "final_epoch")) == 8
    assert store.final_stats(run_id)["final_cm_tp"] == 3


def test_federated_final_stats_come_from_the_last_server_evaluation(store: Store) -> None:
    run_id = store.create_run("fed", "federated")
    # Client epochs carry confusion matrices too, but belong to clients, not to the run.
    store.persist_epoch_metrics(run_id, [_cm_epoch(0, 9, 9, 9, 9)], client_id="c", round_number=2)
    store.add_server_evaluation(
        run_id, 1, {"server_cm_tp": 1, "server_cm_tn": 1, "server_cm_fp": 1, "server_cm_fn": 1}
    )
    store.add_server_evaluation(
        run_id,
        2,
        {
            "server_cm_tp": 20,
            "server_cm_tn": 70,
            "server_cm_fp": 5,
            "server_cm_fn": 5,
            "server_auroc": 0.97,
        },
    )
    store.complete_run(run_id)
    stats = store.final_stats(run_id)
    assert stats["final_accuracy_cm"] == pytest.approx(0.9)
    assert stats["final_auroc_cm"] == 0.97
    assert {r.step for r in store.metrics_by_context(run_id, "final_epoch")} == {2}


def test_federated_final_stats_fall_back_to_client_aggregates(store: Store) -> None:
    run_id = store.create_run("fed", "federated")
    store.record_round(
        run_id,
        3,
        aggregated_metrics={"val_cm_tp": 8, "val_cm_tn": 8, "val_cm_fp": 2, "val_cm_fn": 2},
    )
    store.complete_run(run_id)
    assert store.final_stats(run_id)["final_precision_cm"] == pytest.approx(0.8)


# -- reads ---------------------------------------------------------------------------------------


def test_list_runs_newest_first_with_limit(store: Store) -> None:
    assert store.list_runs() == []
    ids = [store.create_run(f"exp-{i}") for i in range(3)]
    assert [r.run_id for r in store.list_runs()] == ids[::-1]
    assert [r.run_id for r in store.list_runs(limit=2)] == ids[:0:-1]


def test_list_runs_with_metrics_attaches_client_and_round(store: Store) -> None:
    run_id = store.create_run("fed", "federated")
    store.persist_epoch_metrics(run_id, [{"epoch": 0, "loss": 1.0}], client_id="c9", round_number=4)
    store.add_artifact(
        run_id, "/ckpt/best.ckpt", step=10, epoch=1, metric_name="val_loss", metric_value=0.2
    )

    (summary,) = store.list_runs(with_metrics=True)
    (without,) = store.list_runs()

    assert [(m.name, m.client_id, m.round_number) for m in summary.metrics] == [("loss", "c9", 4)]
    assert without.metrics == ()
    assert summary.clients == ("c9",)
    assert [r.round_number for r in summary.rounds] == [4]
    (artifact,) = summary.artifacts
    assert (artifact.kind, artifact.path, artifact.step, artifact.epoch, artifact.metric_value) == (
        "checkpoint",
        "/ckpt/best.ckpt",
        10,
        1,
        0.2,
    )


def test_summaries_are_frozen_detached_snapshots(store: Store) -> None:
    run_id = store.create_run("snap")
    summary = store.get_run(run_id)
    store.complete_run(run_id)
    store.dispose()
    assert summary.status == "in_progress"
    with pytest.raises(dataclasses.FrozenInstanceError):
        summary.status = "completed"  # type: ignore[misc]
    assert summary.to_dict()["status"] == "in_progress"


def test_latest_metrics_gives_each_metric_at_its_last_step(store: Store) -> None:
    run_id = store.create_run("latest")
    store.persist_epoch_metrics(run_id, [{"epoch": 0, "a": 1.0, "b": 5.0}, {"epoch": 1, "a": 2.0}])
    assert store.latest_metrics(run_id) == {"a": 2.0, "b": 5.0}


def test_metric_rows_are_deleted_with_their_run(store: Store) -> None:
    from collector.store.models import Run

    run_id = store.create_run("gone", "federated")
    store.persist_epoch_metrics(run_id, [{"epoch": 0, "loss": 1.0}], client_id="c", round_number=1)
    with store.session() as session:
        session.delete(session.scalars(select(Run).where(Run.run_id == run_id)).one())
    with store.session(write=False) as session:
        assert session.scalar(select(func.count()).select_from(RunMetric)) == 0
        assert session.scalar(select(func.count()).select_from(Client)) == 0


def test_concurrent_get_or_create_of_clients_and_rounds_agrees(store: Store) -> None:
    from concurrent.futures import ThreadPoolExecutor

    run_id = store.create_run("race", "federated")
    jobs = [(f"c{n % 3}", n % 2) for n in range(24)]

    def persist(job: tuple[str, int]) -> int:
        client, round_number = job
        store.persist_epoch_metrics(
            run_id, [{"epoch": 0, "loss": 1.0}], client_id=client, round_number=round_number
        )
        return store.ensure_client(run_id, client)

    with ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(persist, jobs))

    assert len({(client, key) for (client, _), key in zip(jobs, keys, strict=True)}) == 3
    assert sorted(store.metrics_grouped_by_client(run_id)) == ["c0", "c1", "c2"]
    assert [r.round_number for r in store.rounds(run_id)] == [0, 1]


def test_integer_client_ids_are_stored_as_text(store: Store) -> None:
    run_id = store.create_run("ints", "federated")
    key = store.ensure_client(run_id, 12345)  # type: ignore[arg-type]
    store.persist_epoch_metrics(run_id, [{"epoch": 0, "loss": 1.0}], client_id=12345)  # type: ignore[arg-type]
    assert store.ensure_client(run_id, "12345") == key
    assert list(store.metrics_grouped_by_client(run_id)) == ["12345"]
