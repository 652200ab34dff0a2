"""Names of a stream's files, the acknowledged offset and the rejected lines."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote

SPOOL_SUFFIX = ".lp"
ACK_SUFFIX = ".ack"
REJECTED_SUFFIX = ".rejected"
SEGMENT_SUFFIX = ".lps"
COMPRESSED_SEGMENT_SUFFIX = ".lps.gz"
SEGMENT_MARK = "@"
"""Separates a stream's stem from a segment's offsets (never in an encoded run id)."""
MAX_STREAMS_PER_RUN = 1_000
_SAFE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def encode_run_id(run_id: str) -> str:
    """A file-name-safe form of ``run_id`` (reversible with ``decode_run_id``)."""
    return "".join(
        ch if ch in _SAFE_CHARS else "".join(f"%{b:02X}" for b in ch.encode("utf-8", "replace"))
        for ch in run_id
    )


def decode_run_id(stem: str) -> str:
    return unquote(stem)


@dataclass(frozen=True)
class SpoolStream:
    """One spool stream of a run: its head file, segments, acknowledgement and rejections."""

    run_id: str
    index: int
    path: Path
    """The head file ``<stem>.lp``: the stream's lock, and its bytes from offset 0 until the
    first segment is rolled."""

    @property
    def stem(self) -> str:
        return self.path.name[: -len(SPOOL_SUFFIX)]

    @property
    def ack_path(self) -> Path:
        return self.path.with_suffix(ACK_SUFFIX)

    @property
    def rejected_path(self) -> Path:
        return self.path.with_suffix(REJECTED_SUFFIX)

    def segment_path(self, start: int) -> Path:
        """The plain segment holding the stream's bytes from ``start``."""
        return self.path.with_name(f"{self.stem}{SEGMENT_MARK}{start}{SEGMENT_SUFFIX}")

    def compressed_segment_path(self, start: int, end: int) -> Path:
        """The gzip file holding the stream's bytes ``[start, end)``."""
        return self.path.with_name(
            f"{self.stem}{SEGMENT_MARK}{start}-{end}{COMPRESSED_SEGMENT_SUFFIX}"
        )

    @classmethod
    def at(cls, spool_dir: Path, run_id: str, index: int = 0) -> SpoolStream:
        stem = encode_run_id(run_id) + ("" if index == 0 else f".{index}")
        return cls(run_id, index, spool_dir / (stem + SPOOL_SUFFIX))


def parse_stream(path: Path) -> SpoolStream | None:
    """The stream a ``.lp`` head file is, or None for any other file."""
    name = path.name
    if not name.endswith(SPOOL_SUFFIX):
        return None
    stem, _, index_text = name[: -len(SPOOL_SUFFIX)].partition(".")
    if not stem or (index_text and not index_text.isdigit()):
        return None
    return SpoolStream(decode_run_id(stem), int(index_text or 0), path)


def list_streams(spool_dir: Path, run_id: str | None = None) -> list[SpoolStream]:
    """Every stream in the spool (or of one run), sorted by run_id then index."""
    if not spool_dir.is_dir():
        return []
    found = [s for p in spool_dir.iterdir() if (s := parse_stream(p)) is not None]
    if run_id is not None:
        found = [s for s in found if s.run_id == run_id]
    return sorted(found, key=lambda s: (s.run_id, s.index))


def read_ack(stream: SpoolStream) -> int:
    """The acknowledged offset (0 when none or unreadable: re-sending is harmless)."""
    try:
        return max(0, int(stream.ack_path.read_text(encoding="ascii").strip() or 0))
    except (OSError, ValueError):
        return 0


def write_ack(stream: SpoolStream, offset: int) -> None:
    """Record ``offset`` atomically; not fsynced (losing it only means re-sending)."""
    temp = stream.ack_path.with_name(f"{stream.ack_path.name}.{os.getpid()}.tmp")
    temp.write_text(f"{offset}\n", encoding="ascii")
    os.replace(temp, stream.ack_path)


def quarantine(stream: SpoolStream, data: bytes, reason: str) -> None:
    """Append lines that must never be shipped to ``<run>.rejected``, after a comment."""
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    reason_line = " ".join(reason.split())
    with stream.rejected_path.open("ab") as out:
        out.write(f"# {stamp} {reason_line}\n".encode("utf-8", "replace"))
        out.write(data if data.endswith(b"\n") else data + b"\n")
