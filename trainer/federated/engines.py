"""Running the Flower app: a private SuperLink (and SuperNodes) on 127.0.0.1, then ``flwr run``.

Both engines go through Flower's own runtime, the way users run Flower apps:

- ``simulation``: ``flower-superlink --simulation``; ``flwr run`` asks it for
  ``num-supernodes`` virtual clients, which Flower's simulation engine (ray) runs.
- ``deployment``: ``flower-superlink`` plus one ``flower-supernode`` per client, each with
  its own ``partition-id`` / ``num-partitions`` node config.

Every process binds 127.0.0.1 on a free port, runs in its own process group, and is stopped
by PID (group first, then any descendant left over) when the runtime closes, so nothing is
left behind. ``FLWR_HOME`` points into the run's work directory (Flower's config, FABs and
logs stay there), and Flower's runtime dependency installation is disabled: the app's
dependencies are this environment's (otherwise it would ``uv sync`` them, CUDA torch and all).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import psutil

from collector.errors import RunwatchError
from collector.run import Heartbeat
from trainer.federated.config import ENGINES

log = logging.getLogger("trainer.federated")

CONNECTION_NAME = "runwatch"
APP_DIR = Path(__file__).resolve().parent / "app"
COMPLETED = "finished:completed"
_STARTED_RUN = re.compile(r"Successfully started run (\d+)")
_READY_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 15.0


class FlowerRuntimeError(RunwatchError):
    """The Flower runtime could not be started, or a run did not finish."""


def flower_binary(name: str) -> str:
    """A Flower console script: next to this interpreter first (the venv), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FlowerRuntimeError(f"{name} not found: install runwatch[flower]")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def _running(process: psutil.Process) -> bool:
    """Still the same process (psutil compares the start time, so a reused PID is not it)."""
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    known_descendants: dict[int, psutil.Process] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def remember_descendants(self) -> None:
        for child in _descendants(self.pid):
            self.known_descendants.setdefault(child.pid, child)

    def stop(self) -> None:
        """SIGTERM the process group, wait, SIGKILL what is left, then stray descendants."""
        self.remember_descendants()
        if self.popen.poll() is None:
            _signal_group(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _signal_group(self.pid, signal.SIGKILL)
                self.popen.wait(_STOP_TIMEOUT_S)
        _signal_group(self.pid, signal.SIGKILL)  # group members that outlived their leader
        # Descendants that left the group (Flower detaches its SuperExec, ray its daemons).
        for child in self.known_descendants.values():
            if _running(child):
                with suppress(psutil.Error):
                    child.kill()
        psutil.wait_procs(list(self.known_descendants.values()), timeout=_STOP_TIMEOUT_S)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class _DescendantWatcher(Heartbeat):
    """Notes every process started under the runtime while it runs, so that those that get
    orphaned (a killed ServerApp's ray workers) can still be stopped by PID afterwards."""

    def __init__(self, processes: list[_Process], interval_s: float = 1.0) -> None:
        super().__init__(self._remember_descendants, interval_s, name="runwatch-flower-watcher")
        self._processes = processes

    def _remember_descendants(self) -> None:
        for process in list(self._processes):
            process.remember_descendants()


@dataclass(frozen=True)
class FlowerRunResult:
    engine: str
    flower_run_id: str | None
    status: str
    log_path: Path
    elapsed_s: float

    @property
    def ok(self) -> bool:
        return self.status == COMPLETED


class FlowerRuntime:
    """A private Flower runtime for one engine; a context manager that always cleans up."""

    def __init__(
        self,
        workdir: Path,
        *,
        engine: str = "simulation",
        num_clients: int = 2,
        env: Mapping[str, str] | None = None,
        client_env: Sequence[Mapping[str, str]] | None = None,
        client_node_config: Sequence[Mapping[str, str]] | None = None,
    ) -> None:
        """``client_env`` / ``client_node_config``: per SuperNode (by partition), more
        environment and more ``--node-config`` entries (deployment engine)."""
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        self.workdir = workdir
        self.engine = engine
        self.num_clients = num_clients
        self.flwr_home = workdir / "flwr-home"
        self.port: int | None = None
        self._extra_env = dict(env or {})
        self._client_env = [dict(e) for e in client_env] if client_env else None
        self._client_node_config = [dict(c) for c in client_node_config or ()]
        self._processes: list[_Process] = []
        self._watcher: _DescendantWatcher | None = None
        self.seen_processes: list[psutil.Process] = []
        """After ``stop``: every process that ran under this runtime (for leak checks)."""

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> FlowerRuntime:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self._extra_env)
        # Flower's processes start each other by name (flower-superexec, flwr-serverapp, ...).
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
        env["FLWR_HOME"] = str(self.flwr_home)
        env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
        env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
        env["FLWR_TELEMETRY_ENABLED"] = "0"
        env["RAY_DISABLE_USAGE_STATS"] = "1"
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        env.setdefault("OMP_NUM_THREADS", "1")
        return env

    @property
    def processes(self) -> list[psutil.Process]:
        """Every process this runtime started or saw started under it (for checks)."""
        found: dict[int, psutil.Process] = {}
        for process in self._processes:
            process.remember_descendants()
            with suppress(psutil.Error):
                found.setdefault(process.pid, psutil.Process(process.pid))
            found.update(process.known_descendants)
        return list(found.values())

    def start(self) -> None:
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self._write_flower_config()
        self._watcher = _DescendantWatcher(self._processes)
        self._watcher.start()
        self._start_superlink()
        if self.engine == "deployment":
            for partition_id in range(self.num_clients):
                self._start_supernode(partition_id)

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        self.seen_processes.extend(self.processes)
        # SuperNodes first (they would keep reconnecting), the SuperLink last.
        for process in reversed(self._processes):
            try:
                process.stop()
            except Exception as exc:  # keep stopping the others
                log.warning(
                    "runwatch: stopping %s (pid %s) failed: %s", process.name, process.pid, exc
                )
        self._processes.clear()

    def _write_flower_config(self) -> None:
        (self.flwr_home / "config.toml").write_text(
            "[superlink]\n"
            f'default = "{CONNECTION_NAME}"\n\n'
            f"[superlink.{CONNECTION_NAME}]\n"
            f'address = "127.0.0.1:{self.port}"\n'
            "insecure = true\n",
            encoding="utf-8",
        )

    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> _Process:
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "ab") as log_file:
            popen = subprocess.Popen(
                argv,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else self.env,
                cwd=self.workdir,
                start_new_session=True,
            )
        process = _Process(name, popen, log_path)
        self._processes.append(process)
        return process

    def _start_superlink(self) -> None:
        argv = [
            flower_binary("flower-superlink"),
            "--insecure",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--database",
            str(self.flwr_home / "superlink-state.db"),
            "--disable-runtime-dependency-installation",
        ]
        if self.engine == "simulation":
            argv.append("--simulation")
        process = self._spawn("superlink", argv)
        self._wait_http(process, f"http://127.0.0.1:{self.port}/health")

    def _start_supernode(self, partition_id: int) -> None:
        env = self.env
        if self._client_env is not None and partition_id < len(self._client_env):
            env.update(self._client_env[partition_id])
        argv = [
            flower_binary("flower-supernode"),
            "--insecure",
            "--superlink",
            f"127.0.0.1:{self.port}",
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
            "--node-config",
            self._node_config(partition_id),
        ]
        self._spawn(f"supernode-{partition_id}", argv, env)

    def _node_config(self, partition_id: int) -> str:
        """Flower's ``--node-config``: space-separated ``key=value``, values in TOML."""
        entries = [f"partition-id={partition_id}", f"num-partitions={self.num_clients}"]
        if partition_id < len(self._client_node_config):
            for key, value in self._client_node_config[partition_id].items():
                entries.append(f"{key}={json.dumps(value)}")  # a JSON string is a TOML one
        return " ".join(entries)

    def _wait_http(self, process: _Process, url: str) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.popen.poll() is not None:
                raise FlowerRuntimeError(
                    f"{process.name} exited with code {process.popen.returncode}; "
                    f"see {process.log_path}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our URL
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise FlowerRuntimeError(f"{process.name} not ready after {_READY_TIMEOUT_S:.0f}s")

    # -- running an app ----------------------------------------------------------------

    def run_app(
        self, run_config_file: Path, *, app_dir: Path = APP_DIR, timeout_s: float = 1800.0
    ) -> FlowerRunResult:
        """``flwr run`` the app, stream its logs to a file until it finishes; its outcome."""
        argv = [
            flower_binary("flwr"),
            "run",
            str(app_dir),
            CONNECTION_NAME,
            "--run-config",
            str(run_config_file),
            "--stream",
        ]
        if self.engine == "simulation":
            argv += [
                "--federation-config",
                f"num-supernodes={self.num_clients} client-resources-num-cpus=1",
            ]
        log_path = self.workdir / "flwr-run.log"
        started = time.monotonic()
        with open(log_path, "ab") as log_file:
            try:
                subprocess.run(
                    argv,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    cwd=self.workdir,
                    timeout=timeout_s,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                log.warning("runwatch: flwr run did not finish within %.0f s", timeout_s)
        elapsed = time.monotonic() - started
        flower_run_id = _started_run_id(log_path)
        status = self.run_status(flower_run_id) if flower_run_id else "not-started"
        return FlowerRunResult(self.engine, flower_run_id, status, log_path, elapsed)

    def run_status(self, flower_run_id: str) -> str:
        """Flower's status of a run (``finished:completed``, ``finished:failed``, …)."""
        argv = [
            flower_binary("flwr"),
            "ls",
            CONNECTION_NAME,
            "--run-id",
            flower_run_id,
            "--format",
            "json",
        ]
        done = subprocess.run(
            argv, capture_output=True, env=self.env, cwd=self.workdir, timeout=120, check=False
        )
        try:
            runs = json.loads(done.stdout.decode("utf-8", "replace")).get("runs", [])
        except ValueError:
            return "unknown"
        for run in runs:
            if str(run.get("run-id")) == flower_run_id:
                return str(run.get("status", "unknown"))
        return "unknown"


def _started_run_id(log_path: Path) -> str | None:
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    found = _STARTED_RUN.findall(text)
    return found[-1] if found else None
