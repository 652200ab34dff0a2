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
