"""Text for a terminal: user strings (experiment names, hosts, metric names, paths) are shown
with every non-printable character escaped, so a name cannot move the cursor, recolour or clear
the terminal, or break a table's line. JSON output is never passed through here: it stays
exact (``json.dumps`` escapes control characters itself)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def printable(text: object) -> str:
    """``text`` with each non-printable character as its Python escape (``\\n``, ``\\x1b``,
    ``\\u202e``, ``\\ud800``); printable text comes back unchanged."""
    shown = text if isinstance(text, str) else str(text)
    if shown.isprintable():
        return shown
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in shown)


def _escape(ch: str) -> str:
    return ch.encode("unicode_escape").decode("ascii")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Left-aligned columns, two spaces apart, every cell made printable; one write."""
    table = [list(headers), *([printable(cell) for cell in row] for row in rows)]
    widths = [max(map(len, column)) for column in zip(*table, strict=True)]
    lines = (
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in table
    )
    sys.stdout.write("\n".join(lines) + "\n")
