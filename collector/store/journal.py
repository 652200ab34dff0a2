"""Run metadata that could not reach the database, kept on local disk until it can.

A training writes its run row, hyperparameters, epoch metrics, rounds and final status through
a :class:`JournalingStore`. While the database answers, each write goes straight to it. From
the first write the database cannot take (it is down, unreachable, its file unwritable), that
write and every later write of the run go to the run's journal instead — one JSON line per
call, in order, with the time it happened — so nothing the store would have held is lost and
the training never notices. ``runwatch sync`` replays journals into the database once it
answers (:func:`replay_journals`), giving the run the rows, times and status it would have had.

Files: ``<RUNWATCH_HOME>/journal/<run id>.jsonl``; beside it ``.ack`` (bytes replayed) and
``.live``, which the writing process holds a shared lock on while it lives. A journal is
removed once it is replayed to its end, holds the run's completion and has no live writer.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from collector.config import Settings, mask_url
from collector.errors import RunwatchError
from collector.spool import decode_run_id, encode_run_id

# Through the package, never `collector.store._store` directly: importing the private module
# while another thread runs the package's __init__ deadlocks the two imports (Python then
# hands one a half-initialised module).
from collector.store import RunExistsError, Store
from collector.store.engine import DatabaseUnavailableError
from collector.store.models import utc_now

log = logging.getLogger("collector.store")

JOURNAL_SUFFIX = ".jsonl"
ACK_SUFFIX = ".ack"
LIVE_SUFFIX = ".live"
_DATETIME_KEY = "$datetime"

WHEN_ARGUMENT: Mapping[str, str] = {
    "create_run": "started_at",
    "complete_run": "ended_at",
    "persist_epoch_metrics": "recorded_at",
    "add_server_evaluation": "recorded_at",
    "add_artifact": "created_at",
}
"""The keyword each journaled write takes for when it happened (replayed as that time)."""
JOURNALED_WRITES = (
    *WHEN_ARGUMENT,
    "save_hyperparams",
    "record_round",
    "ensure_client",
    "remove_artifacts",
)


def journal_dir(settings: Settings) -> Path:
    return settings.home / "journal"


def journal_path(settings: Settings, run_id: str) -> Path:
    return journal_dir(settings) / (encode_run_id(run_id) + JOURNAL_SUFFIX)


class JournalingStore(Store):
    """The :class:`Store` of one run's writer; see the module doc. Reads pass through."""

    def __init__(self, url: str, journal: Path, *, stale_after: timedelta | None = None) -> None:
        super().__init__(url, stale_after=stale_after)
        self.journal = journal
        self.journaled = 0
        """Writes kept in the journal so far."""
        self.unavailable: str | None = None
        """Why the database was given up on (None: every write reached it)."""
        self._heartbeat_warned = False
        self._live_fd: int | None = None

    @classmethod
    def for_run(cls, settings: Settings, run_id: str) -> JournalingStore:
        return cls(
            settings.db_url,
            journal_path(settings, run_id),
            stale_after=timedelta(seconds=settings.stale_after_s),
        )

    def create_run(self, *args: Any, **kwargs: Any) -> str:
        kwargs.setdefault("run_id", None)
        if kwargs["run_id"] is None:
            from collector.ids import new_run_id

            kwargs["run_id"] = new_run_id()
        self._write("create_run", args, kwargs)
        return str(kwargs["run_id"])

    def complete_run(self, *args: Any, **kwargs: Any) -> None:
        self._write("complete_run", args, kwargs)

    def save_hyperparams(self, *args: Any, **kwargs: Any) -> None:
        self._write("save_hyperparams", args, kwargs)

    def persist_epoch_metrics(self, *args: Any, **kwargs: Any) -> int:
        written = self._write("persist_epoch_metrics", args, kwargs)
        return written if isinstance(written, int) else 0

    def record_round(self, *args: Any, **kwargs: Any) -> None:
        self._write("record_round", args, kwargs)

    def add_server_evaluation(self, *args: Any, **kwargs: Any) -> None:
        self._write("add_server_evaluation", args, kwargs)

    def ensure_client(self, *args: Any, **kwargs: Any) -> int:
        found = self._write("ensure_client", args, kwargs)
        return found if isinstance(found, int) else 0

    def add_artifact(self, *args: Any, **kwargs: Any) -> None:
        self._write("add_artifact", args, kwargs)

    def remove_artifacts(self, *args: Any, **kwargs: Any) -> int:
        removed = self._write("remove_artifacts", args, kwargs)
        return removed if isinstance(removed, int) else 0

    def heartbeat(self, run_id: str) -> None:
        """Stamp the run; nothing to stamp while its rows wait in the journal."""
        if self.unavailable is not None:
            return
        try:
            super().heartbeat(run_id)
        except DatabaseUnavailableError as exc:
            if not self._heartbeat_warned:
                self._heartbeat_warned = True
                log.warning("runwatch: heartbeat not stored: %s", exc)

    def _write(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.unavailable is None:
            try:
                return getattr(Store, method)(self, *args, **kwargs)
            except DatabaseUnavailableError as exc:
                self.unavailable = str(exc)
                log.warning(
                    "runwatch: %s; run metadata goes to %s until `runwatch sync` stores it",
                    exc,
                    self.journal,
                )
        when = WHEN_ARGUMENT.get(method)
        if when is not None and kwargs.get(when) is None:
            kwargs = {**kwargs, when: utc_now()}
        self._hold_live_lock()
        append_entry(self.journal, {"method": method, "args": args, "kwargs": kwargs})
        self.journaled += 1
        return None

    def _hold_live_lock(self) -> None:
        """Tell replays the run may still write (released when this process ends, however)."""
        if self._live_fd is not None:
            return
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        self._live_fd = os.open(
            self.journal.with_suffix(LIVE_SUFFIX), os.O_RDWR | os.O_CREAT, 0o600
        )
        fcntl.flock(self._live_fd, fcntl.LOCK_SH)


def append_entry(path: Path, entry: Mapping[str, Any]) -> None:
    """One JSON line, written with a single ``write`` to a file opened for appending."""
    line = json.dumps(entry, default=_encode, ensure_ascii=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line.encode("utf-8", "surrogatepass"))
        os.fsync(fd)
    finally:
        os.close(fd)


def _encode(value: object) -> object:
    if isinstance(value, datetime):
        return {_DATETIME_KEY: value.isoformat()}
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"cannot journal a {type(value).__name__}")


def _decode(obj: dict[str, Any]) -> object:
    if set(obj) == {_DATETIME_KEY}:
        return datetime.fromisoformat(obj[_DATETIME_KEY])
    return obj


# -- replay --------------------------------------------------------------------------------


@dataclass
class Replay:
    run_id: str
    replayed: int = 0
    pending: int = 0
    error: str | None = None
    finished: bool = False
    """The journal held the run's completion, had no live writer, and was removed."""


def replay_journals(settings: Settings, run_id: str | None = None) -> list[Replay]:
    """Store every journaled write not replayed yet, oldest first, one transaction each.

    A replay stops at its run's first failure (the rest stays for the next sync). Two syncs
    at once never replay the same entry: each holds the journal's lock while it works.
    """
    directory = journal_dir(settings)
    paths = sorted(directory.glob("*" + JOURNAL_SUFFIX)) if directory.is_dir() else []
    if run_id is not None:
        paths = [p for p in paths if p == journal_path(settings, run_id)]
    if not paths:
        return []
    store = Store.from_settings(settings)
    try:
        return [_replay_one(store, path) for path in paths]
    finally:
        store.dispose()


def _replay_one(store: Store, path: Path) -> Replay:
    result = Replay(decode_run_id(path.name.removesuffix(JOURNAL_SUFFIX)))
    with _locked(path) as locked:
        if not locked:
            result.error = "another `runwatch sync` is replaying it"
            return result
        ack_path = path.with_suffix(ACK_SUFFIX)
        offset = _read_ack(ack_path)
        data = path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        for raw in complete[offset:].splitlines(keepends=True):
            if result.error is not None:
                result.pending += 1
                continue
            try:
                _apply(store, json.loads(raw, object_hook=_decode))
            except (DatabaseUnavailableError, RunwatchError, ValueError, TypeError) as exc:
                result.error = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
                result.pending += 1
                continue
            offset += len(raw)
            ack_path.write_text(str(offset), encoding="ascii")
            result.replayed += 1
        completed = b'"method": "complete_run"' in data
        live_path = path.with_suffix(LIVE_SUFFIX)
        if result.error is None and offset == len(data) and completed and not _live(live_path):
            for done in (path, ack_path, live_path):
                done.unlink(missing_ok=True)
            result.finished = True
    return result


def _apply(store: Store, entry: Mapping[str, Any]) -> None:
    method = entry["method"]
    if method not in JOURNALED_WRITES:
        raise ValueError(f"not a journaled write: {method!r}")
    with contextlib.suppress(RunExistsError):  # created before the database went away
        getattr(store, method)(*entry["args"], **entry["kwargs"])


def _live(live_path: Path) -> bool:
    """Whether a process that writes the journal still runs (holds the shared lock)."""
    try:
        fd = os.open(live_path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _read_ack(path: Path) -> int:
    try:
        return int(path.read_text(encoding="ascii").strip() or 0)
    except (OSError, ValueError):
        return 0


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[bool]:
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def describe_pending(settings: Settings, run_id: str) -> str | None:
    """One line for a user when the run's metadata waits in its journal, else None."""
    path = journal_path(settings, run_id)
    if not path.exists():
        return None
    return (
        f"run metadata not stored: the database {mask_url(settings.db_url)} was unavailable; "
        f"it is kept in {path} and `runwatch sync` stores it once the database answers"
    )
