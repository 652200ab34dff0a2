"""Globally unique, human-sortable run identifiers.

A run_id is ``YYYYMMDDTHHMMSSZ-<10 base32 chars>``: the UTC start time, then 50 random bits.
Sorting run_ids sorts runs by start time; two machines with their own SQLite files cannot
collide in a shared InfluxDB (a collision needs the same second and the same 50 random bits).

A caller may choose its own run_id instead (``validate_run_id``): 1 to 64 characters of
``A-Z a-z 0-9 . _ -``, starting with a letter or digit. Run ids name files and directories
under ``RUNWATCH_HOME`` (checkpoints, exports), so anything else (``../x``, ``/etc``, spaces,
control characters) is refused before a run starts.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from collector.errors import InvalidRunIdError, RunIdInUseError

if TYPE_CHECKING:
    from collector.config import Settings

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
_TIME_PREFIX = "%Y%m%dT%H%M%SZ"
_RUN_ID_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-hjkmnp-tv-z]{10}$")
_CHOSEN_RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RUN_ID_RULE = "1 to 64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit"


def new_run_id(now: datetime | None = None) -> str:
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    bits = secrets.randbits(50)
    suffix = "".join(_ALPHABET[(bits >> shift) & 31] for shift in range(45, -1, -5))
    return f"{moment.strftime(_TIME_PREFIX)}-{suffix}"


def is_run_id(text: str) -> bool:
    return bool(_RUN_ID_RE.match(text))


def validate_run_id(run_id: object) -> str:
    """``run_id`` if it is a valid (generated or caller-chosen) run id; else InvalidRunIdError."""
    if is_valid_run_id(run_id):
        return str(run_id)
    raise InvalidRunIdError(run_id, RUN_ID_RULE)


def is_valid_run_id(run_id: object) -> bool:
    return isinstance(run_id, str) and bool(_CHOSEN_RUN_ID_RE.fullmatch(run_id))


def refuse_reused_run_id(settings: Settings, run_id: str) -> None:
    """RunIdInUseError when this machine's spool already holds points of ``run_id``: a new
    run under that id would merge two trainings (the store checks its own rows itself)."""
    from collector.spool import list_streams

    if list_streams(settings.spool_dir, run_id):
        raise RunIdInUseError(run_id, f"its points are in the spool, {settings.spool_dir}")


def run_started_at(run_id: str) -> datetime | None:
    """The UTC start time a run_id begins with (None when ``run_id`` is not one of ours)."""
    if not is_run_id(run_id):
        return None
    return datetime.strptime(run_id.partition("-")[0], _TIME_PREFIX).replace(tzinfo=UTC)
