"""``runwatch train`` and ``runwatch demo`` (registered through the runwatch.commands entry point)."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    """Placeholder until the trainer lands; adds no commands."""
