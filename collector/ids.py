"""Globally unique, human-sortable run identifiers.

A run_id is ``YYYYMMDDTHHMMSSZ-<10 base32 chars>``: the UTC start time, then 50 random bits.
Sorting run_ids sorts runs by start time; two machines with their own SQLite files cannot
collide in a shared InfluxDB (a collision needs the same second and the same 50 random bits).
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
_TIME_PREFIX = "%Y%m%dT%H%M%SZ"
_RUN_ID_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-hjkmnp-tv-z]{10}$")


def new_run_id(now: datetime | None = None) -> str:
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    bits = secrets.randbits(50)
    suffix = "".join(_ALPHABET[(bits >> shift) & 31] for shift in range(45, -1, -5))
    return f"{moment.strftime(_TIME_PREFIX)}-{suffix}"


def is_run_id(text: str) -> bool:
    return bool(_RUN_ID_RE.match(text))


def run_started_at(run_id: str) -> datetime | None:
    """The UTC start time a run_id begins with (None when ``run_id`` is not one of ours)."""
    if not is_run_id(run_id):
        return None
    return datetime.strptime(run_id.partition("-")[0], _TIME_PREFIX).replace(tzinfo=UTC)
