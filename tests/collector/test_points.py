"""Point building: names, values, escaping, time, invalid input (no servers here; InfluxDB 2
itself checks the escaping in test_influxdb2_write.py)."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.points import (
    MAX_STRING_FIELD_BYTES,
    SPOOL_NEWLINE,
    PointBuilder,
    coerce_float,
    escape_tag_value,
    format_string_field,
    normalise_name,
    to_time_ns,
    to_wire,
    truncate_string_field,
)

BASE = {"run_id": "r-1", "experiment": "exp one", "mode": "centralized"}
NS = 1_700_000_000_123_456_789


def build(measurement: str, fields: dict[str, object], tags: dict[str, object] | None = None):
    builder = PointBuilder(BASE)
    line, _, _ = builder.build(measurement, fields, tags, NS)
    return line, builder.problems


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("train/loss", "train_loss"),
        ("val loss", "val_loss"),
        ("lr-Adam", "lr_adam"),
        ("Val__F1 ", "val_f1"),
        ("__private", "private"),
        ("val/acc@5", "val_acc_5"),
        ("epoch", "epoch"),
        ("time", "time_value"),
        (3, "3"),
        ("", None),
        ("///", None),
        ("损失", None),
        ("   ", None),
    ],
)
def test_normalise_name(raw: object, expected: str | None) -> None:
    assert normalise_name(raw) == expected


class HasFloat:
    def __float__(self) -> float:
        return 2.5


class HasItem:
    def item(self) -> int:
        return 7


class BrokenItem:
    def item(self) -> float:
        raise RuntimeError("device lost")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, 1.0),
        (False, 0.0),
        (3, 3.0),
        (0.25, 0.25),
        (Decimal("1.5"), 1.5),
        (HasFloat(), 2.5),
        (HasItem(), 7.0),
        ("0.5", None),
        (b"1", None),
        (None, None),
        ([1.0], None),
        (1j, None),
        (10**400, None),
        (BrokenItem(), None),
    ],
)
def test_coerce_float(value: object, expected: float | None) -> None:
    assert coerce_float(value) == expected


def test_numpy_scalars_become_floats() -> None:
    np = pytest.importorskip("numpy")
    assert coerce_float(np.float32(0.5)) == 0.5
    assert coerce_float(np.int64(4)) == 4.0
    assert coerce_float(np.bool_(True)) == 1.0
    assert math.isnan(coerce_float(np.float64("nan")) or 0.0)


def test_torch_zero_dim_tensors_become_floats_without_collector_importing_torch() -> None:
    torch = pytest.importorskip("torch")
    assert coerce_float(torch.tensor(0.75)) == 0.75
    assert coerce_float(torch.tensor(3)) == 3.0
    assert coerce_float(torch.tensor([1.0, 2.0])) is None
    line, _ = build("batch", {"loss": torch.tensor(0.5), "step": torch.tensor(3)})
    assert " loss=0.5,step=3.0 " in line


def test_line_shape_and_numeric_fields_always_floats() -> None:
    line, problems = build("batch", {"loss": 0.5, "step": 3, "epoch": True, "batch_idx": 0})
    assert line == (
        "batch,experiment=exp\\ one,mode=centralized,run_id=r-1 "
        f"loss=0.5,step=3.0,epoch=1.0,batch_idx=0.0 {NS}\n"
    )
    assert problems.dropped_fields == 0


def test_float_formats_round_trip() -> None:
    for value in (1e-05, 1e16, 1.5e300, -0.0, 5e-324, 0.1 + 0.2):
        line, _ = build("epoch", {"x": value})
        text = line.rsplit(" ", 2)[1].removeprefix("x=")
        assert float(text) == value


@given(value=st.floats(allow_nan=False, allow_infinity=False))
@settings(max_examples=500, deadline=None)
def test_every_finite_float_is_written_as_the_shortest_text_of_its_value(value: float) -> None:
    line, _ = build("epoch", {"x": value})
    assert line is not None
    text = line.rsplit(" ", 2)[1].removeprefix("x=")
    assert float(text) == value and math.copysign(1.0, float(text)) == math.copysign(1.0, value)
    # the digits repr gives (the shortest that read back), only the exponent's spelling may differ
    assert _digits(text) == _digits(repr(value))


def _digits(text: str) -> str:
    mantissa = text.lstrip("-").partition("e")[0].replace(".", "")
    return mantissa.strip("0")


def test_nonfinite_values_are_replaced_by_a_flag() -> None:
    line, problems = build(
        "epoch", {"train_loss": math.nan, "val_loss": math.inf, "lr": -math.inf, "val_acc": 0.9}
    )
    fields = line.rsplit(" ", 2)[1]
    assert fields == "train_loss_nonfinite=1.0,val_loss_nonfinite=1.0,lr_nonfinite=1.0,val_acc=0.9"
    assert problems.nonfinite_fields == 3
    assert "nan" not in line and "inf" not in line


def test_user_metric_names_are_normalised_on_open_measurements() -> None:
    line, _ = build("epoch", {"train/loss": 1.0, "val loss": 2.0})
    assert " train_loss=1.0,val_loss=2.0 " in line


def test_invalid_input_is_dropped_counted_and_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    builder = PointBuilder(BASE)
    caplog.set_level(logging.WARNING, logger="collector.points")
    for _ in range(5):
        assert builder.build("nope", {"x": 1.0}, None, NS)[0] is None
        line, _, _ = builder.build(
            "gradient", {"total_norm": "high", "mystery": 1.0, "": 2.0, "step": 1}, None, NS
        )
        assert line is not None and " step=1.0 " in line
        assert builder.build("gradient", {}, None, NS)[0] is None
    problems = builder.problems
    assert problems.dropped_points == 10
    assert problems.dropped_fields == 15
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 5, (
        messages
    )  # measurement, value, unknown field, empty name, empty point
    assert sum("'nope'" in m for m in messages) == 1
    assert sum("non-numeric value of type str" in m for m in messages) == 1


def test_strings_only_in_event_text() -> None:
    line, _ = build("event", {"text": 'say "hi"\\', "value": 1}, {"event": "alert"})
    assert line == (
        "event,event=alert,experiment=exp\\ one,mode=centralized,run_id=r-1 "
        f'text="say \\"hi\\"\\\\",value=1.0 {NS}\n'
    )
    line, problems = build("epoch", {"note": "a string", "val_loss": 0.5})
    assert " val_loss=0.5 " in line and "note" not in line
    assert problems.dropped_fields == 1


def test_newline_in_text_is_kept_off_the_spool_line_and_restored_on_the_wire() -> None:
    line, _ = build("event", {"text": "first\nsecond", "value": 1.0}, {"event": "alert"})
    assert line.count("\n") == 1 and line.endswith("\n")
    assert SPOOL_NEWLINE in line
    wire = to_wire(line.encode())
    assert b'text="first\nsecond"' in wire
    assert to_wire(b"plain line\n") == b"plain line\n"


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        ("plain", "plain"),
        ("a b,c=d", "a\\ b\\,c\\=d"),
        ("C:\\dir\\", "C:\\dir\\\\ "),
        ("a\\,b", "a\\\\,b"),
        ("a\\\\ b", "a\\\\\\ b"),
        ("end\\\\", "end\\\\\\ "),
        ("two\nlines\r", "two\\ lines\\ "),
        ("ü/ß", "ü/ß"),
        ('"quoted"', '"quoted"'),
        ("rs\x1eand\x00nul", "rs\ufffdand\ufffdnul"),
        ("lone\ud800", "lone?"),
        ("", None),
    ],
)
def test_escape_tag_value(value: str, escaped: str | None) -> None:
    assert escape_tag_value(value) == escaped


def test_string_field_escaping() -> None:
    assert format_string_field('a"b\\c') == '"a\\"b\\\\c"'
    assert format_string_field("x\x1ey") == '"x\ufffdy"'


def test_tags_per_call_escaped_and_rules_enforced(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="collector.points")
    builder = PointBuilder({**BASE, "client_id": "c 1"})
    line, observed, tags = builder.build(
        "gradient_layer",
        {"norm": 1.0},
        {"layer": "model.l1,weight", "step": 3, "run_id": "hijack", "round": 2, "empty": ""},
        NS,
        observe=True,
    )
    assert line.startswith(
        "gradient_layer,client_id=c\\ 1,experiment=exp\\ one,layer=model.l1\\,weight,"
        "mode=centralized,round=2,run_id=r-1 norm=1.0 "
    )
    assert observed == {"norm": 1.0}
    assert tags == {**BASE, "client_id": "c 1", "layer": "model.l1,weight", "round": "2"}
    assert builder.problems.dropped_tags == 2
    assert len(caplog.records) == 2


def tag_keys(line: str) -> list[str]:
    """Tag keys of a line whose tag values hold no escaped backslash."""
    series = re.split(r"(?<!\\) ", line, maxsplit=1)[0]
    return [tag.split("=", 1)[0] for tag in re.split(r"(?<!\\),", series)[1:]]


@pytest.mark.parametrize(
    "call_tags",
    [
        {},
        {"layer": "l1"},  # between the base tags
        {"aaa": "first"},
        {"zzz": "last"},
        {"round": 2, "layer": "l1", "client_id": "c"},
        {"a,b": "comma key", "host": "h"},
    ],
)
def test_tags_are_written_in_key_order(call_tags: dict[str, object]) -> None:
    builder = PointBuilder({**BASE, "host": "node-1"})
    line, _, tags = builder.build("gradient_layer", {"norm": 1.0}, call_tags, NS, observe=True)
    assert line is not None and tags is not None
    keys = tag_keys(line)
    assert keys == sorted(keys)
    assert len(keys) == len(set(keys)) == len(tags)


def test_a_call_tag_replaces_a_base_tag_of_its_key_and_a_clash_keeps_the_last() -> None:
    builder = PointBuilder({**BASE, "host": "node-1"})
    line, _, tags = builder.build("system", {"rss_bytes": 1.0}, {"host": "node-2"}, NS, True)
    assert line is not None and ",host=node-2," in line and "node-1" not in line
    assert tags == {**BASE, "host": "node-2"}
    line, _, tags = builder.build(
        "system", {"rss_bytes": 1.0}, {"Rank": "0", "rank": "1", "host": "x"}, NS, True
    )
    assert line is not None and ",rank=1," in line and "rank=0" not in line
    assert tags is not None and tags["rank"] == "1"


def test_observed_fields_are_finite_normalised_and_flag_nonfinite() -> None:
    builder = PointBuilder(BASE)
    _, observed, tags = builder.build(
        "epoch", {"Train/Loss": 0.5, "val_loss": math.nan}, None, NS, observe=True
    )
    assert observed == {"train_loss": 0.5, "val_loss_nonfinite": 1.0}
    assert tags == BASE


def test_time_conversions() -> None:
    assert to_time_ns(NS) == NS
    assert to_time_ns(1_700_000_000.5) == 1_700_000_000_500_000_000
    aware = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert to_time_ns(aware) == int(aware.timestamp()) * 10**9 + 123_456_000
    shifted = aware.astimezone(timezone(timedelta(hours=5)))
    assert to_time_ns(shifted) == to_time_ns(aware)
    naive = datetime(2024, 5, 1, 12, 0, 0)
    assert to_time_ns(naive) == int(naive.timestamp() * 1e6) * 1000
    for bad in (1_700_000_000, True, "now", math.nan, -1.0, None):
        assert to_time_ns(bad) is None


@settings(max_examples=300, deadline=None)
@given(
    fields=st.dictionaries(
        st.text(max_size=20),
        st.one_of(
            st.floats(allow_nan=True, allow_infinity=True),
            st.integers(),
            st.booleans(),
            st.text(max_size=30),
            st.none(),
        ),
        max_size=8,
    ),
    tags=st.dictionaries(st.text(max_size=10), st.text(max_size=30), max_size=4),
    text=st.text(max_size=100),
)
def test_any_input_gives_one_line_or_nothing_and_never_raises(
    fields: dict[str, object], tags: dict[str, str], text: str
) -> None:
    builder = PointBuilder(BASE)
    for measurement, data in (("epoch", fields), ("event", {"text": text, "value": 1.0})):
        line, _, _ = builder.build(measurement, data, tags, NS)
        if line is None:
            continue
        assert line.endswith(f" {NS}\n")
        assert line.count("\n") == 1
        assert "\x00" not in line
        numeric = [kv for kv in line.split(" ")[-2].split(",") if "=" in kv]
        for pair in numeric if measurement == "epoch" else []:
            _, _, value = pair.rpartition("=")
            assert math.isfinite(float(value)), pair
            assert not value.endswith("i")
        line.encode("utf-8")  # valid text, whatever came in


def test_a_string_field_over_one_mib_is_cut_at_a_character_boundary(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert truncate_string_field("x" * MAX_STRING_FIELD_BYTES) is None
    cut = truncate_string_field("é" * MAX_STRING_FIELD_BYTES)
    assert cut == "é" * (MAX_STRING_FIELD_BYTES // 2)
    odd = truncate_string_field("a" + "😀" * MAX_STRING_FIELD_BYTES)
    assert odd is not None and len(odd.encode()) <= MAX_STRING_FIELD_BYTES
    assert len(odd.encode()) > MAX_STRING_FIELD_BYTES - 4
    builder = PointBuilder({"run_id": "r"})
    line, _, _ = builder.build("event", {"text": "\x00" * MAX_STRING_FIELD_BYTES}, None, 1)
    assert line is not None and len(line.encode()) < MAX_STRING_FIELD_BYTES + 100
    assert "cut field 'text'" in caplog.text


_FIELD_NAMES = [
    "loss",
    "step",
    "Train/Loss",
    "val loss",
    "text",
    "",
    "mystery",
    "batch_idx",
    "norm",
]
_NUMBERS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False), st.integers(min_value=-1000, max_value=1000)
)
_ANY_VALUES = st.one_of(
    _NUMBERS,
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**1100), max_value=2**1100),
    st.booleans(),
    st.text(max_size=3),
)


_TAGS = st.none() | st.dictionaries(
    st.sampled_from(["layer", "Layer", "client", "run_id", "step", "", "a b"]),
    st.one_of(
        st.sampled_from(["conv1.weight", "a,b=c d", "ends\\", "", "50%", "x\ny"]),
        st.integers(0, 3),
        st.lists(st.integers(), max_size=1),  # not hashable
        st.none(),
    ),
    max_size=3,
)


def plain_lines(
    builder: PointBuilder,
    measurement: str,
    rows: list[Mapping[str, object]],
    times: list[int],
    tags: list[Mapping[str, object] | None] | None = None,
) -> str | None:
    """``plain_rows``' lines, as the spool gets them."""
    made = builder.plain_rows(measurement, rows, times, tags)
    return None if made is None else made.text


@given(
    measurement=st.sampled_from(["batch", "batch", "gradient", "gradient_layer", "event", "nope"]),
    names=st.lists(st.sampled_from(_FIELD_NAMES), min_size=1, max_size=4, unique=True),
    data=st.data(),
)
@settings(max_examples=300, deadline=None)
def test_plain_lines_are_builds_lines_or_none(
    measurement: str, names: list[str], data: st.DataObject
) -> None:
    values = _NUMBERS if data.draw(st.booleans()) else _ANY_VALUES
    rows: list[dict[str, object]] = [
        {name: data.draw(values) for name in names}
        for _ in range(data.draw(st.integers(min_value=1, max_value=5)))
    ]
    times = [NS + index for index in range(len(rows))]
    tags = data.draw(st.none() | st.lists(_TAGS, min_size=len(rows), max_size=len(rows)))
    builder = PointBuilder({**BASE, "tag%": "50%"})
    for _ in range(2):  # the second time from the builder's caches
        text = plain_lines(builder, measurement, rows, times, tags)  # type: ignore[arg-type]
        observing = builder.plain_rows(measurement, rows, times, tags, observe=True)  # type: ignore[arg-type]
        assert (observing is None) == (text is None)
        if observing is not None:
            assert observing.observed is not None and observing.tags is not None
            for i, row in enumerate(rows):
                _, observed, all_tags = builder.build(
                    measurement, row, tags[i] if tags else None, times[i], observe=True
                )
                assert observing.observed[i] == observed and observing.tags[i] == all_tags
        if text is not None:
            built = [
                builder.build(measurement, row, tags[i] if tags else None, times[i])[0]
                for i, row in enumerate(rows)
            ]
            assert text == "".join(line or "" for line in built)
            assert None not in built and "_nonfinite" not in text


@given(
    names=st.lists(st.sampled_from(["norm", "step"]), min_size=1, max_size=2, unique=True),
    data=st.data(),
)
@settings(max_examples=200, deadline=None)
def test_tagged_plain_lines_are_builds_lines(names: list[str], data: st.DataObject) -> None:
    count = data.draw(st.integers(min_value=2, max_value=6))
    rows: list[dict[str, object]] = [
        {name: data.draw(_NUMBERS) for name in names} for _ in range(count)
    ]
    tags = data.draw(st.lists(_TAGS, min_size=count, max_size=count))
    times = [NS + index for index in range(count)]
    builder = PointBuilder({**BASE, "tag%": "50%"})
    text = plain_lines(builder, "gradient_layer", rows, times, tags)  # type: ignore[arg-type]
    unhashable = any(isinstance(v, list) for t in tags if t for v in t.values())
    if unhashable:
        assert text is None  # build() takes each
        return
    built = [
        builder.build("gradient_layer", row, t, at)[0] for row, t, at in zip(rows, tags, times)
    ]
    assert text == "".join(line or "" for line in built)


@given(
    common=st.lists(st.sampled_from(["step", "epoch", "Step", "nope"]), max_size=2, unique=True),
    data=st.data(),
)
@settings(max_examples=200, deadline=None)
def test_plain_series_are_builds_lines(common: list[str], data: st.DataObject) -> None:
    """A series (columns and one tag) formats as ``build`` writes each point, or is None
    exactly when some point cannot go the plain way (then the recorder builds each)."""
    count = data.draw(st.integers(min_value=1, max_value=6))
    floats = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(
        [math.nan, math.inf]
    )
    columns = [[data.draw(floats) for _ in range(count)] for _ in range(1 + len(common))]
    tag_values = data.draw(
        st.lists(
            st.sampled_from(["conv1.weight", "a,b=c d", "ends\\", "", "x\ny", 3, 3.0, True])
            | st.lists(st.integers(), max_size=1),
            min_size=count,
            max_size=count,
        )
    )
    names = ("norm", *common)
    times = [NS + index for index in range(count)]
    builder = PointBuilder({**BASE, "tag%": "50%"})
    for _ in range(2):  # the second time from the builder's caches
        text = builder.plain_series(
            "gradient_layer",
            names,
            "layer",
            list(tag_values),
            columns,
            times,  # type: ignore[arg-type]
        )
        rows = [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]
        unhashable = any(isinstance(value, list) for value in tag_values)
        finite = all(math.isfinite(value) for column in columns for value in column)
        unknown = {"epoch", "nope"} & set(common)  # not fields of gradient_layer
        if unhashable or not finite or unknown:
            assert text is None
            continue
        built = [
            builder.build("gradient_layer", row, {"layer": tag}, at)[0]
            for row, tag, at in zip(rows, tag_values, times, strict=True)
        ]
        assert text == "".join(line or "" for line in built)


def test_plain_lines_write_groups_of_finite_numbers() -> None:
    builder = PointBuilder({**BASE, "tag%": "50%"})
    rows: list[dict[str, object]] = [
        {"loss": 0.5, "step": 3, "Batch Idx": 2**53},
        {"loss": 1e-300, "step": -1, "Batch Idx": 0.1 + 0.2},
    ]
    text = plain_lines(builder, "batch", rows, [NS, NS + 1])  # type: ignore[arg-type]
    built = [builder.build("batch", row, None, NS + i)[0] for i, row in enumerate(rows)]
    assert text == "".join(line or "" for line in built)
    assert text is not None and text.count("\n") == 2 and ",tag=50% " in text
    layers = [{"layer": "0.weight"}, {"layer": "0.bias"}, None, {"layer": "a,b c=%"}]
    layer_rows: list[dict[str, object]] = [{"norm": 0.5 * i, "step": 7} for i in range(4)]
    times = [NS + i for i in range(4)]
    tagged = plain_lines(builder, "gradient_layer", layer_rows, times, layers)  # type: ignore[arg-type]
    built = [
        builder.build("gradient_layer", r, t, at)[0] for r, t, at in zip(layer_rows, layers, times)
    ]
    assert tagged == "".join(line or "" for line in built)
    assert tagged is not None and ",layer=a\\,b\\ c\\=%,mode=" in tagged and tagged.count("\n") == 4
    same_key = [{"layer": 1}, {"layer": True}, {"layer": 1.0}]  # equal as dict keys
    for _ in range(2):  # the second time from the caches
        lines = plain_lines(builder, "gradient_layer", layer_rows[:3], times[:3], same_key)  # type: ignore[arg-type]
        assert lines is not None
        assert [line.split(",")[2] for line in lines.splitlines()] == [
            "layer=1",
            "layer=True",
            "layer=1.0",
        ]
        built_one = [builder.build("gradient_layer", {"norm": 1.0}, t, NS)[0] for t in same_key]
        assert [line.split(",")[2] for line in built_one if line] == [
            "layer=1",
            "layer=True",
            "layer=1.0",
        ]
    unhashable = [{"layer": ["x"]}, None]
    assert plain_lines(builder, "gradient_layer", layer_rows[:2], times[:2], unhashable) is None  # type: ignore[arg-type]
    assert plain_lines(builder, "batch", [{"loss": math.nan}, {"loss": 1.0}], [NS, NS]) is None
    assert plain_lines(builder, "batch", [{"loss": 2**1100}], [NS]) is None
    assert plain_lines(builder, "gradient", [{"mystery": 1.0}], [NS]) is None
    huge: list[dict[str, object]] = [{"loss": 1.7e308}, {"loss": 1.7e308}]  # the sum is not finite
    assert plain_lines(builder, "batch", huge, [NS, NS + 1]) == "".join(
        builder.build("batch", row, None, NS + i)[0] or "" for i, row in enumerate(huge)
    )
    assert plain_lines(builder, "event", [{"text": 1.0}], [NS]) is None
