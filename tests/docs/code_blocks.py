"""Fenced code blocks of a Markdown document, and running its Python ones as a reader would.

A block preceded (on the line just before its fence) by ``<!-- not-run: reason -->`` is
marked as not meant to run on its own; every other ```python block must run as written.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FENCE = re.compile(r'^```(\w+)(?: title="([^"]+)")?\n(.*?)^```$', re.MULTILINE | re.DOTALL)
NOT_RUN = re.compile(r"^<!-- not-run: (.+?) -->$")
SETTINGS_PREFIXES = ("RUNWATCH_", "INFLUXDB_V2_")


@dataclass(frozen=True)
class CodeBlock:
    language: str
    title: str | None
    code: str
    line: int
    """The line of the opening fence (1-based), to name the block in failures."""
    not_run: str | None
    """The reason given by a ``<!-- not-run: ... -->`` marker, None when unmarked."""

    @property
    def name(self) -> str:
        return f"{self.title or self.language} (line {self.line})"


def code_blocks(document: Path, language: str | None = None) -> list[CodeBlock]:
    text = document.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        if language is not None and match.group(1) != language:
            continue
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        marker = NOT_RUN.match(before)
        found.append(
            CodeBlock(
                language=match.group(1),
                title=match.group(2),
                code=match.group(3),
                line=text.count("\n", 0, match.start()) + 1,
                not_run=marker.group(1) if marker else None,
            )
        )
    return found


def isolated_environment(home: Path, user_home: Path) -> dict[str, str]:
    """This process's environment without runwatch's settings, with ``RUNWATCH_HOME`` at
    ``home``, no Prometheus exporter and ``HOME`` at ``user_home`` (so a setting that leaked
    to its default would land there, not in the user's ``~/.runwatch``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTINGS_PREFIXES)}
    env.update(
        RUNWATCH_HOME=str(home),
        RUNWATCH_PROMETHEUS_PORT="0",
        HOME=str(user_home),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        PYTHONWARNINGS="ignore::DeprecationWarning",
    )
    return env


def run_python(
    script: Path, cwd: Path, env: Mapping[str, str], timeout_s: float = 180
) -> subprocess.CompletedProcess[str]:
    """``python script`` in ``cwd``, as a reader would run a pasted file; fails the test with
    the block's output when it does not exit 0."""
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(
            f"{script.name} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        )
    return done
