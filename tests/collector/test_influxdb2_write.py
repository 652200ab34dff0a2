"""The write path against a real InfluxDB 2 (influxd 2.9.1): runwatch's own Recorder, shipper
thread and ``runwatch sync`` write, Flux reads back (user input only ever as ``params``).

What influxd 2.9.1 answers on ``/api/v2/write``, read from its source and checked here:
401 (bad token), 403 (read-only token), 404 (no such bucket or org), 400 (a line it cannot
parse, a series key over 64 KiB: nothing of the request is written), 422 (partial write:
field type conflict, a string field over 1 MiB, points beyond the bucket's retention: the
other lines *are* written; the body ends in ``dropped=N``) and 500 (``--storage-write-timeout``
passed; the points may still land). It never answers 413: ``APIBackend.MaxBatchSizeBytes`` is
never set by the launcher and no flag sets it, so any request size is read (a 76 MB body
was). It never answers 429 or 503 on writes either (``ETooManyRequests`` belongs to tasks,
``EUnavailable`` to the password service), so those stay covered by test_shipper.py's
endpoint and the VictoriaMetrics outage tests.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
import os
import random
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from collector import Recorder, RecorderTuning, new_run_id, schema
from collector.backlog import ship_backlog
from collector.cli import main
from collector.config import Settings
from collector.points import MAX_STRING_FIELD_BYTES, to_wire
from collector.shipper import InfluxWriteTarget, RetryPolicy, ShipperThread, ShipTuning
from collector.spool import SpoolStream, SpoolWriter, backlog, list_segments, read_ack
from tests.collector.influx_wire import recording_proxy
from tests.servers.influxdb2 import InfluxDB2, influxd_binary

pytestmark = pytest.mark.integration

EXPERIMENT = "influxdb2-write"
FAST_RETRY = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.05)
T0 = 1_750_000_000_123_456_789  # ns: a timestamp only nanosecond precision keeps
RUN_POINTS = """
from(bucket: bucket_name)
  |> range(start: 0, stop: 2100-01-01T00:00:00Z)
  |> filter(fn: (r) => r.run_id == run and r._field != "text")
  |> map(fn: (r) => ({r with _ns: int(v: r._time)}))
"""
# Flux's CSV response writes "\n" inside a value as "\r\n" and drops a lone "\r", so string
# values leave the server with those escaped (and decoded by ``unescape_flux_text``).
RUN_TEXTS = r"""
import "strings"

from(bucket: bucket_name)
  |> range(start: 0, stop: 2100-01-01T00:00:00Z)
  |> filter(fn: (r) => r.run_id == run and r._field == "text")
  |> map(fn: (r) => ({r with _ns: int(v: r._time), _value:
      strings.replaceAll(
        v: strings.replaceAll(
          v: strings.replaceAll(v: r._value, t: "\\", u: "\\\\"), t: "\r", u: "\\r"),
        t: "\n", u: "\\n")}))
"""
COUNT_PER_FIELD = """
from(bucket: bucket_name)
  |> range(start: 0, stop: 2100-01-01T00:00:00Z)
  |> filter(fn: (r) => r.run_id == run)
  |> group(columns: ["_measurement", "_field"])
  |> count()
"""
NOT_TAGS = {"result", "table"}


# --- helpers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredPoint:
    measurement: str
    field: str
    ns: int
    value: Any
    tags: dict[str, str]


def run_points(server: InfluxDB2, bucket: str, run_id: str) -> list[StoredPoint]:
    """Every field value of the run in ``bucket``, with its exact nanosecond time."""
    params = {"bucket_name": bucket, "run": run_id}
    numbers = [stored_point(r, r["_value"]) for r in server.query(RUN_POINTS, params)]
    texts = [
        stored_point(r, unescape_flux_text(r["_value"])) for r in server.query(RUN_TEXTS, params)
    ]
    return numbers + texts


def stored_point(record: dict[str, Any], value: Any) -> StoredPoint:
    tags = {k: v for k, v in record.items() if not k.startswith("_") and k not in NOT_TAGS}
    return StoredPoint(record["_measurement"], record["_field"], record["_ns"], value, tags)


def unescape_flux_text(text: str | None) -> str:
    if text is None:  # Flux's CSV has no empty string apart from a missing one
        return ""
    return re.sub(r"\\(.)", lambda m: {"r": "\r", "n": "\n"}.get(m[1], m[1]), text)


def counts_per_field(server: InfluxDB2, bucket: str, run_id: str) -> dict[tuple[str, str], int]:
    rows = server.query(COUNT_PER_FIELD, {"bucket_name": bucket, "run": run_id})
    return {(r["_measurement"], r["_field"]): r["_value"] for r in rows}


def tuning(batch_lines: int = 5_000, batch_bytes: int = 4 * 1024 * 1024) -> ShipTuning:
    return ShipTuning(batch_lines=batch_lines, batch_bytes=batch_bytes, retry=FAST_RETRY)


def spool_path(settings: Settings, run_id: str) -> Path:
    return SpoolStream.at(settings.spool_dir, run_id).path


def spooled_lines(settings: Settings, run_id: str) -> list[bytes]:
    return spool_path(settings, run_id).read_bytes().splitlines(keepends=True)


def offline(settings: Settings) -> Settings:
    """The same settings with no InfluxDB: a recorder only spools."""
    return dataclasses.replace(settings, influx_url=None)


def spool_batches(settings: Settings, run_id: str, count: int, start_ns: int = T0) -> None:
    """``count`` batch points (step = i, loss = i / 8) at ``start_ns + i * 1001`` ns, spooled
    by a recorder that ships nothing (no InfluxDB URL)."""
    with Recorder(run_id, experiment=EXPERIMENT, settings=offline(settings)) as rec:
        for i in range(count):
            rec.record("batch", {"step": i, "loss": i / 8}, time=start_ns + i * 1001)


def use_env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    """``runwatch`` CLI environment for ``settings``."""
    monkeypatch.setenv("RUNWATCH_HOME", str(settings.home))
    monkeypatch.setenv("INFLUXDB_V2_URL", settings.influx_url or "")
    monkeypatch.setenv("INFLUXDB_V2_ORG", settings.influx_org or "")
    monkeypatch.setenv("INFLUXDB_V2_TOKEN", settings.influx_token or "")
    monkeypatch.setenv("INFLUXDB_V2_BUCKET", settings.influx_bucket)
    monkeypatch.setenv("RUNWATCH_PROMETHEUS_PORT", "0")
    monkeypatch.chdir(settings.home.parent)


# --- batching, gzip, nanoseconds ---------------------------------------------------------------


@pytest.mark.parametrize(("gzip", "encodings"), [(None, {None}), (True, {"gzip"})])
def test_the_recorders_shipper_sends_batches_with_exact_ns_times(
    influxdb2: InfluxDB2,
    influxdb2_bucket: str,
    tmp_path: Path,
    gzip: bool | None,
    encodings: set[str | None],
) -> None:
    """Gzip or plain: plain by default to this loopback server (RUNWATCH_INFLUX_GZIP=auto)."""
    count = 2_500
    with recording_proxy(influxdb2.url) as proxy:
        settings = influxdb2.settings(tmp_path / "home", influxdb2_bucket).with_overrides(
            influx_url=proxy.url, influx_gzip=gzip
        )
        run_id = new_run_id()
        rec_tuning = RecorderTuning(flush_lines=400, ship=tuning(batch_lines=700))
        with Recorder(run_id, experiment=EXPERIMENT, settings=settings, tuning=rec_tuning) as rec:
            for i in range(count):
                rec.record("batch", {"step": i, "loss": i / 7})  # timestamps: time.time_ns()
        assert rec.stats.points_shipped == count and rec.stats.spool_backlog_bytes == 0

    writes = proxy.writes
    assert len(writes) >= 4  # 2,500 lines never fit one 700-line batch
    assert {r.encoding for r in writes} == encodings
    assert {r.status for r in writes} == {204}
    assert max(r.payload.count(b"\n") for r in writes) <= 700
    spooled = spooled_lines(settings, run_id)
    sent = b"".join(r.payload for r in writes)
    assert sent == to_wire(b"".join(spooled))  # in order, each line once

    written_ns = [int(line.rsplit(b" ", 1)[1]) for line in spooled]
    stored = {
        p.ns: p.value for p in run_points(influxdb2, influxdb2_bucket, run_id) if p.field == "loss"
    }
    assert stored == {ns: i / 7 for i, ns in enumerate(written_ns)}
    assert any(ns % 1000 for ns in written_ns)  # really nanoseconds, not microseconds


def test_sync_cuts_batches_at_the_line_and_byte_limits_and_acks_each(
    influxdb2: InfluxDB2, influxdb2_bucket: str, tmp_path: Path
) -> None:
    settings = influxdb2.settings(tmp_path / "home", influxdb2_bucket)
    run_id = new_run_id()
    spool_batches(settings, run_id, 2_500)
    lines = spooled_lines(settings, run_id)
    with recording_proxy(influxdb2.url) as proxy:
        via_proxy = settings.with_overrides(influx_url=proxy.url)
        acks: list[int] = []
        result = ship_backlog(
            via_proxy,
            run_id,
            progress=lambda done, total: acks.append(done),
            tuning=tuning(batch_lines=1_000),
        )
    assert result.error is None and result.lines_shipped == 2_500
    assert [r.payload.count(b"\n") for r in proxy.writes] == [1_000, 1_000, 500]
    assert [r.payload for r in proxy.writes] == [
        b"".join(lines[:1_000]),
        b"".join(lines[1_000:2_000]),
        b"".join(lines[2_000:]),
    ]
    sizes = [len(b"".join(lines[:n])) for n in (1_000, 2_000, 2_500)]
    assert acks == [0, *sizes]  # acknowledged batch by batch
    assert read_ack(SpoolStream.at(settings.spool_dir, run_id)) == sizes[-1]

    byte_run = new_run_id()
    spool_batches(settings, byte_run, 1_000)
    byte_limit = 16 * 1024
    with recording_proxy(influxdb2.url) as proxy:
        via_proxy = settings.with_overrides(influx_url=proxy.url)
        ship_backlog(via_proxy, byte_run, tuning=tuning(batch_bytes=byte_limit))
    sizes = [len(r.payload) for r in proxy.writes]
    assert len(sizes) > 1 and max(sizes) <= byte_limit
    assert b"".join(r.payload for r in proxy.writes) == b"".join(spooled_lines(settings, byte_run))
    assert counts_per_field(influxdb2, influxdb2_bucket, byte_run) == {
        ("batch", "step"): 1_000,
        ("batch", "loss"): 1_000,
    }

    # Requests start at first_batch_lines and double while influxd acknowledges them.
    growing_run = new_run_id()
    spool_batches(settings, growing_run, 2_500)
    growing = dataclasses.replace(tuning(batch_lines=1_000), first_batch_lines=250)
    with recording_proxy(influxdb2.url) as proxy:
        via_proxy = settings.with_overrides(influx_url=proxy.url)
        result = ship_backlog(via_proxy, growing_run, tuning=growing)
    assert result.error is None and result.lines_shipped == 2_500
    assert [r.payload.count(b"\n") for r in proxy.writes] == [250, 500, 1_000, 750]
    assert b"".join(r.payload for r in proxy.writes) == b"".join(
        spooled_lines(settings, growing_run)
    )
    assert counts_per_field(influxdb2, influxdb2_bucket, growing_run) == {
        ("batch", "step"): 2_500,
        ("batch", "loss"): 2_500,
    }


# --- schema: every measurement and field type ------------------------------------------------

EXTRA_TAG_VALUES = {
    schema.LAYER: "features.0.weight",
    schema.SOURCE: schema.SOURCE_AGGREGATED,
    schema.EVENT: schema.EVENT_CHECKPOINT,
    schema.HOST: "node-7",
    schema.RANK: "0",
}
OPEN_FIELD = {schema.M_EPOCH: "custom_metric", schema.M_BATCH: "grad_scale"}


def schema_point(measurement: schema.Measurement, index: int) -> dict[str, object]:
    """A value for every field the measurement knows (strings for string fields)."""
    rng = random.Random(index)
    fields: dict[str, object] = {}
    for name in measurement.fields:
        if measurement.is_string_field(name):
            fields[name] = f'{measurement.name} "text" \\ {index}\nsecond line'
        else:
            fields[name] = rng.uniform(-1e6, 1e6) * 10 ** rng.randint(-12, 12)
    if measurement.name in OPEN_FIELD:
        fields[OPEN_FIELD[measurement.name]] = math.pi * index
    if measurement.field_prefixes:
        fields[f"{measurement.field_prefixes[0]}extra"] = 2.0**-30
    return fields


def test_every_schema_measurement_and_field_type_reads_back_exactly(
    influxdb2: InfluxDB2, influxdb2_bucket: str, tmp_path: Path
) -> None:
    settings = influxdb2.settings(tmp_path / "home", influxdb2_bucket)
    run_id = new_run_id()
    federated = {schema.CLIENT_ID: "client-3", schema.ROUND: "2"}
    expected: dict[tuple[str, str, int], object] = {}
    expected_tags: dict[str, dict[str, str]] = {}
    with Recorder(
        run_id, experiment=EXPERIMENT, mode=schema.MODE_FEDERATED, settings=settings
    ) as rec:
        for index, measurement in enumerate(schema.MEASUREMENTS.values()):
            ns = T0 + index * 1_000_003
            tags = {**federated, **{t: EXTRA_TAG_VALUES[t] for t in measurement.tags}}
            fields = schema_point(measurement, index)
            rec.record(measurement.name, fields, tags=tags, time=ns)
            expected.update({(measurement.name, k, ns): v for k, v in fields.items()})
            expected_tags[measurement.name] = {
                schema.RUN_ID: run_id,
                schema.EXPERIMENT: EXPERIMENT,
                schema.MODE: schema.MODE_FEDERATED,
                **tags,
            }
        # ints and bools are floats on the wire; NaN/Inf become <field>_nonfinite flags
        odd_ns = T0 + 99
        rec.record(
            "epoch",
            {"epoch": 3, "val_acc": True, "val_loss": math.nan, "lr": -math.inf},
            tags=federated,
            time=odd_ns,
        )
    assert rec.stats.points_shipped == len(schema.MEASUREMENTS) + 1
    expected.update(
        {
            ("epoch", "epoch", odd_ns): 3.0,
            ("epoch", "val_acc", odd_ns): 1.0,
            ("epoch", "val_loss_nonfinite", odd_ns): 1.0,
            ("epoch", "lr_nonfinite", odd_ns): 1.0,
        }
    )

    stored = run_points(influxdb2, influxdb2_bucket, run_id)
    assert {(p.measurement, p.field, p.ns): p.value for p in stored} == expected
    for point in stored:
        string = schema.MEASUREMENTS[point.measurement].is_string_field(point.field)
        assert type(point.value) is (str if string else float), point
        assert point.tags == expected_tags[point.measurement], point
    assert {p.measurement for p in stored} == set(schema.MEASUREMENTS)


# --- hostile tags and field values -------------------------------------------------------------

HOSTILE = [
    "plain",
    "with space",
    "comma,separated",
    "key=value",
    'double "quoted"',
    "single 'quoted'",
    "back\\slash",
    "trailing backslash\\",
    "\\leading backslash",
    "\\\\double backslash\\\\",
    "escaped \\, comma and \\= equals and \\  space",
    "a\\,b",
    "C:\\",
    "\\",
    "train/loss",
    "unicode ü ß 東京 😀",
    "tab\tinside",
    "#hash at start",
    "x" * 10_000,
]
TEXT_ONLY = [
    "line one\nline two",
    "crlf\r\nend",
    "ends with newline\n",
    "\n",
    "",
    'quote at end"',
    "y" * 200_000,
]


def hostile_strings(seed: int, count: int) -> list[str]:
    alphabet = [" ", ",", "=", '"', "\\", "'", "a", "Z", "é", "😀", "\t", "#", "/", "\n", "_"]
    rng = random.Random(seed)
    return ["".join(rng.choices(alphabet, k=rng.randint(1, 24))) for _ in range(count)]


@contextlib.contextmanager
def wide_csv_fields() -> Iterator[None]:
    """influxdb-client reads Flux's CSV with Python's csv module, which refuses a value over
    128 KiB unless told otherwise."""
    previous = csv.field_size_limit(4 * MAX_STRING_FIELD_BYTES)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def stored_tag(value: str) -> str:
    """What InfluxDB 2 keeps of a tag value (collector.points, "Escaping")."""
    value = value.replace("\n", " ").replace("\r", " ")
    return value + " " if value.endswith("\\") else value


def test_hostile_tag_and_field_values_round_trip_exactly(
    influxdb2: InfluxDB2, influxdb2_bucket: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = influxdb2.settings(tmp_path / "home", influxdb2_bucket)
    tag_values = HOSTILE + hostile_strings(1, 1_000)
    texts = HOSTILE + TEXT_ONLY + hostile_strings(2, 1_000)
    huge = "é" * MAX_STRING_FIELD_BYTES  # 2 MiB of UTF-8: more than InfluxDB stores
    experiment = 'exp, "hostile" = \\ yes \\'
    client = "c 1,=\\"
    run_id = new_run_id()  # run ids are validated: the hostile ones are the other tags
    with Recorder(
        run_id, experiment=experiment, settings=settings, tags={"client_id": client}
    ) as rec:
        for i, value in enumerate(tag_values):
            rec.record("gradient_layer", {"norm": float(i), "step": i}, tags={"layer": value})
        for i, text in enumerate(texts):
            rec.event("alert", text=text, value=float(i))
        rec.event("checkpoint", text=huge, value=-1.0)
    assert rec.stats.points_shipped == len(tag_values) + len(texts) + 1
    assert rec.stats.points_rejected == 0
    assert "cut field 'text'" in caplog.text

    with wide_csv_fields():
        stored = run_points(influxdb2, influxdb2_bucket, run_id)
    layers = {p.value: p.tags for p in stored if p.field == "norm"}
    assert len(layers) == len(tag_values)
    for i, value in enumerate(tag_values):
        assert layers[float(i)]["layer"] == stored_tag(value), (i, value)
    for tags in layers.values():
        assert tags["experiment"] == stored_tag(experiment)
        assert tags["client_id"] == stored_tag(client)
        assert tags["run_id"] == run_id

    event_index = {p.ns: p.value for p in stored if p.measurement == "event" and p.field == "value"}
    event_text = {p.ns: p.value for p in stored if p.measurement == "event" and p.field == "text"}
    assert event_index.keys() == event_text.keys()
    by_index = {event_index[ns]: event_text[ns] for ns in event_index}
    assert by_index.pop(-1.0) == "é" * (MAX_STRING_FIELD_BYTES // 2)  # cut at 1 MiB
    assert by_index == {float(i): text for i, text in enumerate(texts)}

    stamps = [p.ns for p in stored if p.field in ("norm", "value")]
    assert len(set(stamps)) == len(stamps)  # strictly increasing recorder clock, to the ns


def test_normalised_metric_names_and_nonfinite_flags_in_influxdb2(
    influxdb2: InfluxDB2, influxdb2_bucket: str, tmp_path: Path
) -> None:
    settings = influxdb2.settings(tmp_path / "home", influxdb2_bucket)
    names = ["train/loss", "val loss", "Val__F1 ", "a=b", 'q"uote', "back\\slash", "x,y", "lr-Adam"]
    run_id = new_run_id()
    with Recorder(run_id, experiment=EXPERIMENT, settings=settings) as rec:
        rec.record("epoch", {name: float(i) for i, name in enumerate(names)}, time=T0)
        rec.record("epoch", {"val_loss": math.nan, "val_acc": -math.inf, "lr": 1e-05}, time=T0 + 1)
    stored = {(p.field, p.ns): p.value for p in run_points(influxdb2, influxdb2_bucket, run_id)}
    assert stored == {
        ("train_loss", T0): 0.0,
        ("val_loss", T0): 1.0,
        ("val_f1", T0): 2.0,
        ("a_b", T0): 3.0,
        ("q_uote", T0): 4.0,
        ("back_slash", T0): 5.0,
        ("x_y", T0): 6.0,
        ("lr_adam", T0): 7.0,
        ("val_loss_nonfinite", T0 + 1): 1.0,
        ("val_acc_nonfinite", T0 + 1): 1.0,
        ("lr", T0 + 1): 1e-05,
    }


# --- refusals --------------------------------------------------------------------------------


def rejected_groups(settings: Settings, run_id: str) -> list[tuple[str, list[bytes]]]:
    """The ``.rejected`` file as (reason comment, lines) groups."""
    path = SpoolStream.at(settings.spool_dir, run_id).rejected_path
    groups: list[tuple[str, list[bytes]]] = []
    for line in path.read_bytes().splitlines(keepends=True):
        if line.startswith(b"# "):
            groups.append((line.decode(), []))
        else:
            groups[-1][1].append(line)
    return groups


def test_refused_lines_go_to_rejected_and_every_good_line_lands(
    influxdb2: InfluxDB2,
    influxdb2_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = influxdb2.settings(tmp_path / "home", influxdb2_bucket)
    # another writer made gradient.total_norm a string in this bucket: runwatch's float is
    # a field type conflict (422, partial write: the other lines of the request are written)
    seeded = influxdb2.write(
        influxdb2_bucket, f'gradient,run_id=other total_norm="x" {T0}'.encode()
    )
    assert seeded.status == 204, seeded.text
    run_id = new_run_id()
    with Recorder(run_id, experiment=EXPERIMENT, settings=offline(settings)) as rec:
        for i in range(300):
            rec.record("batch", {"step": i}, time=T0 + i)
            if i == 100:
                rec.record("gradient", {"total_norm": 1.5}, time=T0 + i)
            if i == 200:  # a series key over 64 KiB: 400, nothing of the request written
                rec.record("gradient_layer", {"norm": 1.0}, tags={"layer": "L" * 70_000}, time=T0)
    path = spool_path(settings, run_id)
    with path.open("ab") as spool:  # a line damaged on disk: 400 "unable to parse"
        spool.write(b"batch,run_id=" + run_id.encode() + b" step= 1\n")

    use_env(monkeypatch, settings)
    assert main(["sync"]) == 0
    out = capsys.readouterr().out
    assert "shipped 300 points" in out and "3 lines InfluxDB refused moved to .rejected" in out
    assert counts_per_field(influxdb2, influxdb2_bucket, run_id) == {("batch", "step"): 300}
    groups = rejected_groups(settings, run_id)
    assert [len(lines) for _, lines in groups] == [1, 1, 1]
    by_reason = {lines[0].split(b",", 1)[0]: reason for reason, lines in groups}
    assert "HTTP 422" in by_reason[b"gradient"] and "field type conflict" in by_reason[b"gradient"]
    assert "HTTP 400" in by_reason[b"gradient_layer"]
    assert "max key length exceeded" in by_reason[b"gradient_layer"]
    assert "HTTP 400" in by_reason[b"batch"] and "unable to parse" in by_reason[b"batch"]
    assert backlog(settings.spool_dir) == []


def test_points_beyond_the_buckets_retention_are_quarantined_in_few_requests(
    influxdb2: InfluxDB2, tmp_path: Path
) -> None:
    bucket = f"retention-{new_run_id()[-10:]}"
    influxdb2.create_bucket(bucket, retention_s=3600)
    settings = influxdb2.settings(tmp_path / "home", bucket)
    run_id = new_run_id()
    old, fresh = 2_995, 10
    now = time.time_ns()
    spool_batches(settings, run_id, old, start_ns=now - 3 * 3600 * 10**9)
    with Recorder(run_id, experiment=EXPERIMENT, settings=offline(settings)) as rec:
        for i in range(fresh):
            rec.record("batch", {"step": 10_000 + i}, time=now - 60 * 10**9 + i)
    # the two recorders wrote one stream after the other
    assert len(spooled_lines(settings, run_id)) == old + fresh

    with recording_proxy(influxdb2.url) as proxy:
        result = ship_backlog(
            settings.with_overrides(influx_url=proxy.url), run_id, tuning=tuning(1_000)
        )
    assert result.error is None
    assert (result.lines_shipped, result.lines_rejected) == (fresh, old)
    assert len(proxy.writes) < 40  # line by line it would take about 6,000
    assert Counter(r.status for r in proxy.writes)[204] >= 1
    assert {r.status for r in proxy.writes} <= {204, 422}
    groups = rejected_groups(settings, run_id)
    assert sum(len(lines) for _, lines in groups) == old
    assert all("outside retention policy" in reason for reason, _ in groups)
    assert len(groups) < 20
    stored = run_points(influxdb2, bucket, run_id)
    assert sorted(p.value for p in stored if p.field == "step") == [
        float(10_000 + i) for i in range(fresh)
    ]


def test_a_wrong_token_401_keeps_every_point_until_sync_has_the_right_one(
    influxdb2: InfluxDB2,
    influxdb2_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    good = influxdb2.settings(tmp_path / "home", influxdb2_bucket)
    wrong_token = "not-the-token-" + "z" * 20
    wrong = good.with_overrides(influx_token=wrong_token)
    run_id = new_run_id()
    with Recorder(run_id, experiment=EXPERIMENT, settings=wrong) as rec:
        for i in range(500):
            rec.record("batch", {"step": i}, time=T0 + i)
        rec.close(timeout=1.0)
    assert rec.stats.points_shipped == 0
    assert (rec.stats.last_error or "").startswith("HTTP 401: ")
    assert rec.stats.spool_backlog_bytes == spool_path(good, run_id).stat().st_size

    use_env(monkeypatch, wrong)
    assert main(["sync"]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "HTTP 401" in err[0] and "unauthorized" in err[0], err
    assert wrong_token not in captured.out + captured.err
    assert read_ack(SpoolStream.at(good.spool_dir, run_id)) == 0
    assert counts_per_field(influxdb2, influxdb2_bucket, run_id) == {}

    use_env(monkeypatch, good)
    assert main(["sync"]) == 0
    assert counts_per_field(influxdb2, influxdb2_bucket, run_id) == {("batch", "step"): 500}


def test_a_read_only_token_403_and_a_missing_bucket_404_wait_on_disk(
    influxdb2: InfluxDB2, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    bucket = f"later-{new_run_id()[-10:]}"
    settings = influxdb2.settings(tmp_path / "home", bucket)
    run_id = new_run_id()
    spool_batches(settings, run_id, 1_200)
    use_env(monkeypatch, settings)
    assert main(["sync"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "HTTP 404" in err[0] and f'bucket \\"{bucket}\\" not found' in err[0]

    influxdb2.create_bucket(bucket)
    use_env(monkeypatch, settings.with_overrides(influx_token=influxdb2.read_token))
    assert main(["sync"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "HTTP 403" in err[0] and "insufficient permissions" in err[0]
    assert read_ack(SpoolStream.at(settings.spool_dir, run_id)) == 0

    use_env(monkeypatch, settings)
    assert main(["sync"]) == 0
    assert counts_per_field(influxdb2, bucket, run_id) == {
        ("batch", "step"): 1_200,
        ("batch", "loss"): 1_200,
    }


@pytest.fixture(scope="module")
def failing_influxdb2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB2]:
    """An influxd whose every write times out in storage: HTTP 500 "timeout" (the points
    may land all the same)."""
    binary = influxd_binary()
    server = InfluxDB2(
        binary, tmp_path_factory.mktemp("influxdb2-500"), ["--storage-write-timeout=1ns"]
    )
    try:
        yield server
    finally:
        server.stop()


def test_a_500_is_retried_with_backoff_and_the_batch_stays_for_later(
    failing_influxdb2: InfluxDB2,
    influxdb2: InfluxDB2,
    influxdb2_bucket: str,
    tmp_path: Path,
) -> None:
    failing = failing_influxdb2.settings(tmp_path / "home", "training")
    run_id = new_run_id()
    spool_batches(failing, run_id, 3_000)
    with recording_proxy(failing_influxdb2.url) as proxy:
        result = ship_backlog(failing.with_overrides(influx_url=proxy.url), tuning=tuning())
    assert [r.status for r in proxy.writes] == [
        500
    ] * FAST_RETRY.max_attempts  # the same batch each time
    assert len({r.payload for r in proxy.writes}) == 1
    assert (result.error or "").startswith("HTTP 500: ") and "timeout" in (result.error or "")
    assert result.remaining_bytes == spool_path(failing, run_id).stat().st_size
    assert read_ack(SpoolStream.at(failing.spool_dir, run_id)) == 0
    assert not SpoolStream.at(failing.spool_dir, run_id).rejected_path.exists()

    healthy = failing.with_overrides(
        influx_url=influxdb2.url, influx_token=influxdb2.write_token, influx_bucket=influxdb2_bucket
    )
    assert ship_backlog(healthy).error is None
    assert counts_per_field(influxdb2, influxdb2_bucket, run_id) == {
        ("batch", "step"): 3_000,
        ("batch", "loss"): 3_000,
    }


# --- idempotence -------------------------------------------------------------------------------


def test_shipping_the_same_batches_twice_leaves_one_point_per_series_and_time(
    influxdb2: InfluxDB2,
    influxdb2_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = influxdb2.settings(tmp_path / "home", influxdb2_bucket)
    run_id = new_run_id()
    with Recorder(run_id, experiment=EXPERIMENT, settings=settings) as rec:  # ships itself
        for i in range(1_500):
            rec.record("batch", {"step": i, "loss": i / 8}, time=T0 + i * 1001)
            if i % 100 == 0:
                rec.event("checkpoint", text=f"step {i}\nsaved", value=float(i))
    assert rec.stats.points_shipped == 1_515
    expected = {
        ("batch", "step"): 1_500,
        ("batch", "loss"): 1_500,
        ("event", "text"): 15,
        ("event", "value"): 15,
    }
    assert counts_per_field(influxdb2, influxdb2_bucket, run_id) == expected
    before = {
        (p.measurement, p.field, p.ns): p.value
        for p in run_points(influxdb2, influxdb2_bucket, run_id)
    }

    stream = SpoolStream.at(settings.spool_dir, run_id)
    stream.ack_path.write_text("0\n")  # the ack is lost: sync sends every batch again
    use_env(monkeypatch, settings)
    assert main(["sync", run_id]) == 0
    assert capsys.readouterr().out.startswith("shipped 1515 points")
    assert main(["sync", run_id]) == 0  # and once more from a fresh ack file
    os.replace(stream.ack_path, stream.ack_path.with_suffix(".old"))
    assert main(["sync", run_id]) == 0

    assert counts_per_field(influxdb2, influxdb2_bucket, run_id) == expected
    after = {
        (p.measurement, p.field, p.ns): p.value
        for p in run_points(influxdb2, influxdb2_bucket, run_id)
    }
    assert after == before


# --- compressed spool segments ------------------------------------------------------------------


def segment_lines(run_id: str, start: int, count: int) -> bytes:
    return b"".join(
        b"batch,run_id=%s step=%d,loss=%r %d\n" % (run_id.encode(), i, i / 7, T0 + i * 1001)
        for i in range(start, start + count)
    )


def test_compressed_segments_ship_exactly_live_and_by_sync(
    influxdb2: InfluxDB2, influxdb2_bucket: str, tmp_path: Path
) -> None:
    settings = influxdb2.settings(tmp_path / "home", influxdb2_bucket)
    live_run, synced_run = new_run_id(), new_run_id()

    # Live: the shipper reads while its writer rolls segments and compresses finished ones.
    writer = SpoolWriter.open(settings.spool_dir, live_run, segment_bytes=32 * 1024)
    with recording_proxy(influxdb2.url) as proxy:
        shipper = ShipperThread(
            writer.stream,
            lambda: writer.written,
            InfluxWriteTarget(
                proxy.url,
                token=settings.influx_token,
                org=settings.influx_org,
                bucket=influxdb2_bucket,
            ),
            tuning(batch_lines=700),
            idle_poll_s=0.05,
        )
        for start in range(0, 12_000, 400):
            writer.append(segment_lines(live_run, start, 400))
            shipper.nudge()
        assert shipper.close(timeout=60)
        writer.close(compression_budget_s=60)
    sent = b"".join(r.payload for r in proxy.writes)
    assert sorted(sent.splitlines()) == sorted(segment_lines(live_run, 0, 12_000).splitlines())
    assert sum(s.compressed for s in list_segments(writer.stream)) >= 10
    assert read_ack(writer.stream) == writer.written
    assert counts_per_field(influxdb2, influxdb2_bucket, live_run) == {
        ("batch", "step"): 12_000,
        ("batch", "loss"): 12_000,
    }

    # Offline, then `runwatch sync`: batches come out of compressed segments in spool order.
    writer = SpoolWriter.open(settings.spool_dir, synced_run, segment_bytes=32 * 1024)
    for start in range(0, 5_000, 500):
        writer.append(segment_lines(synced_run, start, 500))
    writer.close(compression_budget_s=60)
    assert all(s.compressed for s in list_segments(writer.stream)[:-1])
    with recording_proxy(influxdb2.url) as proxy:
        via_proxy = settings.with_overrides(influx_url=proxy.url)
        result = ship_backlog(via_proxy, synced_run, tuning=tuning(batch_lines=1_000))
    assert result.error is None and result.lines_shipped == 5_000
    assert b"".join(r.payload for r in proxy.writes) == segment_lines(synced_run, 0, 5_000)
    assert counts_per_field(influxdb2, influxdb2_bucket, synced_run) == {
        ("batch", "step"): 5_000,
        ("batch", "loss"): 5_000,
    }


def test_sync_ships_what_close_left_plain_then_compresses_it(
    influxdb2: InfluxDB2, influxdb2_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import collector.spool._writer as writer_module

    settings = influxdb2.settings(tmp_path / "home", influxdb2_bucket)
    run_id = new_run_id()
    # a training that kept the cores busy: the writer compressed no finished segment
    monkeypatch.setattr(writer_module, "compress_segment", lambda *args: None)
    writer = SpoolWriter.open(settings.spool_dir, run_id, segment_bytes=32 * 1024)
    for start in range(0, 5_000, 500):
        writer.append(segment_lines(run_id, start, 500))
    writer.close(compression_budget_s=0)
    left_plain = [s for s in list_segments(writer.stream)[:-1] if not s.compressed]
    assert len(left_plain) >= 5
    monkeypatch.undo()

    with recording_proxy(influxdb2.url) as proxy:
        via_proxy = settings.with_overrides(influx_url=proxy.url)
        result = ship_backlog(via_proxy, run_id, tuning=tuning(batch_lines=1_000))
    assert result.error is None and result.lines_shipped == 5_000
    assert result.segments_compressed == len(left_plain)
    assert b"".join(r.payload for r in proxy.writes) == segment_lines(run_id, 0, 5_000)
    assert counts_per_field(influxdb2, influxdb2_bucket, run_id) == {
        ("batch", "step"): 5_000,
        ("batch", "loss"): 5_000,
    }
    segments = list_segments(writer.stream)
    assert all(s.compressed for s in segments[:-1])
    head, *rolled = left_plain  # the head keeps the stream's lock: it is emptied
    assert head.path == writer.stream.path and head.path.stat().st_size == 0
    assert not any(s.path.exists() for s in rolled)
    assert read_ack(writer.stream) == writer.written
    again = ship_backlog(settings, run_id, tuning=tuning())
    assert (again.lines_shipped, again.segments_compressed) == (0, 0)
