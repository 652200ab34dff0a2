"""Exceptions raised to callers of runwatch (never into a training loop)."""

from __future__ import annotations


class RunwatchError(Exception):
    """Base class: the CLI prints ``str(error)`` as one line and exits 1."""


class ConfigError(RunwatchError):
    """A setting is missing or malformed; the message names the variable."""


class UnknownRunError(RunwatchError):
    """No run with the given run_id exists in the store."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"unknown run: {run_id!r}")
        self.run_id = run_id


class InvalidRunIdError(RunwatchError, ValueError):
    """A run id that could not name a run's files safely (``collector.ids.validate_run_id``)."""

    def __init__(self, run_id: object, rule: str) -> None:
        shown = ascii(run_id) if len(repr(run_id)) <= 80 else ascii(run_id)[:77] + "..."
        super().__init__(f"invalid run id {shown}: a run id is {rule}")
        self.run_id = run_id


class RunIdInUseError(RunwatchError):
    """A new run was given the id of an earlier run; refused before any point is written.

    The one error telemetry raises into a training on purpose (from its first hook)."""

    def __init__(self, run_id: str, where: str) -> None:
        super().__init__(
            f"run id {run_id!r} is already used by an earlier run ({where}): a new training "
            "needs a new run id (leave it unset to get a fresh one)"
        )
        self.run_id = run_id
