"""What runwatch adds to Flower messages, and how each side reads it.

The server's wrapper notes its run in every instruction it sends (run id, experiment, round)
as namespaced keys (``runwatch.run-id``, ``runwatch.experiment``, ``runwatch.round``) inside
the instruction's own ConfigRecord, so the instruction keeps its shape: Flower's client-side
DP mods (``fixedclipping_mod``, ``adaptiveclipping_mod``) require exactly one ConfigRecord.
The record is replaced by a copy with the keys added: the ConfigRecord the user passed to
``start`` stays as it was. An instruction without a ConfigRecord gets one, named
``runwatch``: one ConfigRecord is the shape Flower's strategies send and its mods expect.

A ClientApp that uses runwatch adds one ``ConfigRecord`` named ``runwatch`` to its reply
(client id, its epoch history as JSON, its wall time). Strategies ignore it: their
consistency checks (and ``adaptiveclipping_mod``'s) count only ArrayRecords and
MetricRecords, so the reply still holds exactly one of each.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from flwr.app import ConfigRecord, Context, Message, RecordDict

from collector.ids import is_valid_run_id

log = logging.getLogger("collector.flower")

RECORD_NAME = "runwatch"
NOTE_PREFIX = f"{RECORD_NAME}."
KEY_RUN_ID = f"{NOTE_PREFIX}run-id"
KEY_EXPERIMENT = f"{NOTE_PREFIX}experiment"
KEY_ROUND = f"{NOTE_PREFIX}round"
KEY_CLIENT_ID = "client-id"
KEY_EPOCHS = "epochs"
KEY_DURATION_S = "duration-s"
KEY_PARTITION_ID = "partition-id"
KEY_CHECKPOINTS = "checkpoints"

EpochHistory = list[dict[str, float]]


@dataclass(frozen=True)
class RunNote:
    """The run a server instruction belongs to, as the client sees it."""

    run_id: str
    experiment: str
    round_number: int

    def to_record(self) -> ConfigRecord:
        return ConfigRecord(
            {
                KEY_RUN_ID: self.run_id,
                KEY_EXPERIMENT: self.experiment,
                KEY_ROUND: self.round_number,
            }
        )


def attach_run_note(message: Message, note: RunNote) -> None:
    """Note the run in an outgoing instruction's ConfigRecord (see the module doc).

    Instructions sharing one RecordDict (Flower's strategies send one to every node) are
    noted once."""
    content = message.content
    name = next(iter(content.config_records), None)
    if name is None:
        content[RECORD_NAME] = note.to_record()
        return
    record = content.config_records[name]
    if _note_in(record) == note:
        return
    content[name] = ConfigRecord({**record, **note.to_record()})


def read_run_note(message: Message) -> RunNote | None:
    """The run note of an instruction, or None when the server runs without runwatch."""
    for record in message.content.config_records.values():
        if KEY_RUN_ID in record:
            return _note_in(record)
    return None


def _note_in(record: ConfigRecord) -> RunNote | None:
    run_id = record.get(KEY_RUN_ID)
    experiment = record.get(KEY_EXPERIMENT)
    round_number = record.get(KEY_ROUND)
    if not isinstance(run_id, str) or not isinstance(experiment, str):
        return None
    if not is_valid_run_id(run_id):  # it would name files under this client's RUNWATCH_HOME
        log.warning("runwatch: ignoring a run note with an invalid run id %s", ascii(run_id)[:80])
        return None
    if not isinstance(round_number, int) or isinstance(round_number, bool):
        return None
    return RunNote(run_id, experiment, round_number)


def client_id_of(context: Context) -> str:
    """A client's id: its Flower node id, the same number the server sees as the sender."""
    return str(context.node_id)


def partition_id_of(context: Context) -> str | None:
    """The client's node config ``partition-id`` (the simulation engine sets it; a SuperNode
    gets it with ``--node-config``), as text; None when it has none."""
    value = context.node_config.get(KEY_PARTITION_ID)
    if value is None or isinstance(value, bytes) or str(value).strip() == "":
        return None
    return str(value).strip()


@dataclass(frozen=True)
class ClientReport:
    """What a runwatch ClientApp reports besides its metrics."""

    client_id: str
    epochs: EpochHistory = field(default_factory=list)
    duration_s: float | None = None
    partition_id: str | None = None
    """The client's node config ``partition-id``, when it has one."""
    checkpoints: tuple[str, ...] = ()
    """Paths of the checkpoint files the client kept this round (on the client's machine)."""

    def to_record(self) -> ConfigRecord:
        values: dict[str, str | float] = {
            KEY_CLIENT_ID: self.client_id,
            KEY_EPOCHS: json.dumps([_finite_only(e) for e in self.epochs]),
        }
        if self.duration_s is not None:
            values[KEY_DURATION_S] = float(self.duration_s)
        if self.partition_id is not None:
            values[KEY_PARTITION_ID] = self.partition_id
        if self.checkpoints:
            values[KEY_CHECKPOINTS] = json.dumps(list(self.checkpoints))
        return ConfigRecord(values)  # type: ignore[arg-type]


def attach_client_report(content: RecordDict, report: ClientReport) -> None:
    content[RECORD_NAME] = report.to_record()


def read_client_report(reply: Message) -> ClientReport | None:
    """The report inside a reply; None when there is none or it cannot be read."""
    if reply.has_error():
        return None
    record = reply.content.config_records.get(RECORD_NAME)
    if record is None:
        return None
    client_id = record.get(KEY_CLIENT_ID)
    if not isinstance(client_id, str):
        client_id = str(reply.metadata.src_node_id)
    duration = record.get(KEY_DURATION_S)
    partition = record.get(KEY_PARTITION_ID)
    return ClientReport(
        client_id=client_id,
        epochs=_decode_epochs(record.get(KEY_EPOCHS)),
        duration_s=float(duration) if isinstance(duration, int | float) else None,
        partition_id=partition if isinstance(partition, str) else None,
        checkpoints=_decode_paths(record.get(KEY_CHECKPOINTS)),
    )


def _finite_only(epoch: Mapping[str, object]) -> dict[str, float]:
    """JSON has no NaN: a non-finite value travels as its ``<name>_nonfinite`` flag."""
    out: dict[str, float] = {}
    for name, raw in epoch.items():
        try:
            value = float(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            out[name] = value
        else:
            out[f"{name}_nonfinite"] = 1.0
    return out


def _decode_epochs(raw: object) -> EpochHistory:
    if not isinstance(raw, str):
        return []
    try:
        decoded = json.loads(raw)
    except ValueError:
        log.warning("runwatch: a client's epoch history is not valid JSON; ignored")
        return []
    if not isinstance(decoded, list):
        return []
    return [_numeric_items(e) for e in decoded if isinstance(e, dict)]


def _decode_paths(raw: object) -> tuple[str, ...]:
    if not isinstance(raw, str):
        return ()
    try:
        decoded = json.loads(raw)
    except ValueError:
        return ()
    if not isinstance(decoded, list):
        return ()
    return tuple(p for p in decoded if isinstance(p, str) and p)


def _numeric_items(epoch: Mapping[str, object]) -> dict[str, float]:
    return {
        str(k): float(v)
        for k, v in epoch.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def sent_node_ids(messages: Sequence[Message]) -> list[int]:
    return [m.metadata.dst_node_id for m in messages]
