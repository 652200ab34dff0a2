"""Every configuration error: one line naming the variable, exit 2, no traceback unless -v; a
command that does not use the setting keeps working. Through the installed console script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from collector.config import load_settings
from collector.errors import ConfigError

BAD_INFLUX_URLS = {
    "http://[::1": "Invalid IPv6 URL",
    "http://127.0.0.1:abc": "Port could not be cast",
    "http://127.0.0.1:99999": "Port out of range",
    "http://127.0.0.1:0": "port 0",
    "http://exa mple:8086": "whitespace",
    "ftp://example": "http(s) URL",
}


def runwatch(home: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("INFLUXDB_", "RUNWATCH_"))}
    return subprocess.run(
        [sys.executable, "-m", "collector", *argv],
        env={**clean, "RUNWATCH_HOME": str(home), "RUNWATCH_PROMETHEUS_PORT": "0", **env},
        cwd=home.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _one_config_line(result: subprocess.CompletedProcess[str], variable: str, why: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"runwatch: error: {variable}") and why in line


@pytest.mark.parametrize(("url", "why"), BAD_INFLUX_URLS.items())
def test_a_malformed_influxdb_url_is_one_line_and_exit_2(
    tmp_path: Path, url: str, why: str
) -> None:
    for command in (["doctor"], ["sync"]):
        result = runwatch(tmp_path / "home", *command, INFLUXDB_V2_URL=url)
        _one_config_line(result, "INFLUXDB_V2_URL", why)


@pytest.mark.parametrize("url", ["http://[::1", "http://127.0.0.1:abc"])
def test_commands_that_do_not_use_influxdb_keep_working(tmp_path: Path, url: str) -> None:
    result = runwatch(tmp_path / "home", "runs", "list", INFLUXDB_V2_URL=url)
    assert (result.returncode, result.stderr) == (0, "")
    assert "no runs" in result.stdout
    port = runwatch(tmp_path / "home", "runs", "list", "--json", RUNWATCH_PROMETHEUS_PORT="abc")
    assert (port.returncode, port.stdout.strip()) == (0, "[]")


@pytest.mark.parametrize(
    ("variable", "value", "why"),
    [
        ("RUNWATCH_PROMETHEUS_PORT", "abc", "integer"),
        ("RUNWATCH_PROMETHEUS_PORT", "99999", "0..65535"),
        ("RUNWATCH_DB_URL", "nonsense", "not a valid SQLAlchemy URL"),
        ("RUNWATCH_HEARTBEAT_S", "-1", "positive"),
    ],
)
def test_other_malformed_settings_are_one_line_and_exit_2(
    tmp_path: Path, variable: str, value: str, why: str
) -> None:
    _one_config_line(runwatch(tmp_path / "home", "doctor", **{variable: value}), variable, why)


def test_verbose_adds_the_traceback(tmp_path: Path) -> None:
    result = runwatch(tmp_path / "home", "-v", "doctor", INFLUXDB_V2_URL="http://[::1")
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("runwatch: error: INFLUXDB_V2_URL")


def test_a_dotenv_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_bytes(b"RUNWATCH_HOME=\xff\xfe\n")
    with pytest.raises(ConfigError, match=r"cannot read .*\.env"):
        load_settings({}, dotenv=dotenv)
