"""Shared plumbing for server fixtures: find a binary, pick a port, start, wait, stop by PID."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import pytest


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_binary(name: str, *fallbacks: str) -> str:
    """Path of a server binary. Missing: skip locally, fail under CI=true."""
    found = shutil.which(name)
    if found:
        return found
    for candidate in fallbacks:
        for path in sorted(Path("/").glob(candidate.lstrip("/")), reverse=True):
            if os.access(path, os.X_OK):
                return str(path)
    message = f"{name} not found on PATH (install it: see .ci/run)"
    if under_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A server started in its own process group, logging to a file, stopped by PID."""

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            user=user,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_http(self, url: str, timeout: float = 30.0, ok: Sequence[int] = (200, 204)) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.argv[0]} exited early:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status in ok:
                        return
            except urllib.error.HTTPError as exc:
                if exc.code in ok:
                    return
                last = exc
            except OSError as exc:
                last = exc
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"{self.argv[0]} not ready at {url} after {timeout}s ({last}):\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
        self._log.close()
