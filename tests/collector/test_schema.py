"""The schema module describes docs/design.md's table as data other code can walk."""

from __future__ import annotations

import json

import pytest

from collector import schema

DESIGN_TABLE = {
    "epoch": ((), {"train_loss", "val_loss", "val_acc", "val_f1", "val_auroc", "lr", "epoch"}),
    "batch": (
        (),
        {"loss", "acc", "recall", "f1", "samples_per_s", "step", "epoch", "batch_idx"},
    ),
    "gradient": ((), {"total_norm", "max_norm", "min_norm", "step"}),
    "gradient_layer": (("layer",), {"norm", "step"}),
    "round": (
        ("source",),
        {
            "loss",
            "accuracy",
            "precision",
            "recall",
            "f1",
            "auroc",
            "cm_tp",
            "cm_tn",
            "cm_fp",
            "cm_fn",
            "num_clients",
            "num_examples",
            "duration_s",
        },
    ),
    "client_round": ((), {"train_loss", "num_examples", "duration_s", "val_loss"}),
    "event": (("event",), {"text", "value"}),
    "system": (("host", "rank"), {"cpu_percent", "rss_bytes", "gpu_util", "gpu_mem_bytes"}),
}


def test_every_measurement_of_the_design_table_with_its_tags_and_fields() -> None:
    assert set(schema.MEASUREMENTS) == set(DESIGN_TABLE)
    for name, (tags, fields) in DESIGN_TABLE.items():
        measurement = schema.MEASUREMENTS[name]
        assert measurement.name == name
        assert measurement.tags == tags
        assert fields <= set(measurement.fields), name


def test_only_event_text_is_a_string_field() -> None:
    strings = {(m.name, f) for m in schema.MEASUREMENTS.values() for f in m.string_fields}
    assert strings == {("event", "text")}
    assert schema.MEASUREMENTS["event"].is_string_field("text")
    assert not schema.MEASUREMENTS["event"].is_string_field("value")


def test_counters_are_fields_never_tags() -> None:
    for measurement in schema.MEASUREMENTS.values():
        assert not set(measurement.tags) & set(schema.NEVER_TAGS), measurement.name
    assert set(schema.NEVER_TAGS) == {"step", "epoch", "batch_idx"}


def test_base_and_common_tags() -> None:
    assert schema.BASE_TAGS == ("run_id", "experiment", "mode")
    assert schema.FEDERATED_TAGS == ("client_id", "round", "partition_id")
    assert (schema.SOURCE, schema.EVENT, schema.LAYER, schema.HOST, schema.RANK) == (
        "source",
        "event",
        "layer",
        "host",
        "rank",
    )
    assert schema.MODES == ("centralized", "federated")


def test_epoch_and_batch_fields_are_open_the_others_fixed() -> None:
    for name in ("epoch", "batch"):  # users log their own epoch- and step-level metrics
        assert schema.MEASUREMENTS[name].accepts_field("my_custom_metric")
    gradient = schema.MEASUREMENTS["gradient"]
    assert gradient.accepts_field("total_norm")
    assert not gradient.accepts_field("my_custom_metric")
    client_round = schema.MEASUREMENTS["client_round"]
    assert client_round.accepts_field("val_specificity")
    assert not client_round.accepts_field("specificity")


@pytest.mark.parametrize("name", ["train_loss", "loss", "norm"])
def test_nonfinite_flag_name(name: str) -> None:
    assert schema.nonfinite_field(name) == f"{name}_nonfinite"


def test_events_listed() -> None:
    assert set(schema.EVENT_NAMES) == {
        "training_start",
        "training_end",
        "early_stopping",
        "round_start",
        "round_end",
        "client_failure",
        "checkpoint",
        "alert",
    }


def test_describe_is_json_and_complete() -> None:
    described = json.loads(json.dumps(schema.describe()))
    names = [m["name"] for m in described["measurements"]]
    assert names == list(schema.MEASUREMENTS)
    event = next(m for m in described["measurements"] if m["name"] == "event")
    assert event["tags"] == ["run_id", "experiment", "mode", "event"]
    assert event["string_fields"] == ["text"]
    assert described["events"] == list(schema.EVENT_NAMES)


def test_measurements_cannot_be_changed() -> None:
    with pytest.raises(TypeError):
        schema.MEASUREMENTS["new"] = schema.MEASUREMENTS["epoch"]  # type: ignore[index]


def test_evaluation_fields_are_round_fields() -> None:
    assert set(schema.EVALUATION_FIELDS) <= set(schema.MEASUREMENTS["round"].fields)
    assert schema.evaluation_field("val_loss") == "loss"
    assert schema.evaluation_field("test_acc") == "accuracy"
    assert schema.evaluation_field("server_cm_tp") == "cm_tp"
    assert schema.evaluation_field("train_loss") is None
