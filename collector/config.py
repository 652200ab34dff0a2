"""Settings, read once from the environment (and a git-ignored ``.env``) into a frozen object.

Variables (the InfluxDB ones use influxdb-client's own names):

- ``RUNWATCH_HOME``: spool files and the default SQLite database (default ``~/.runwatch``)
- ``RUNWATCH_DB_URL``: any SQLAlchemy URL (default ``sqlite:///<RUNWATCH_HOME>/runs.db``)
- ``INFLUXDB_V2_URL``, ``INFLUXDB_V2_ORG``, ``INFLUXDB_V2_TOKEN``, ``INFLUXDB_V2_BUCKET``
  (bucket default ``training``); no URL means spool only, ship later with ``runwatch sync``.
  ``INFLUXDB_V2_TOKEN_FILE``: a file holding the token, read when ``INFLUXDB_V2_TOKEN`` is unset
  (the compose stack's trainer reads its write-only token so). A token still at .env.example's
  ``change-me`` placeholder is refused.
- ``RUNWATCH_PROMETHEUS_ADDR`` (default ``127.0.0.1``), ``RUNWATCH_PROMETHEUS_PORT``
  (default 9464; 0 disables the exporter)
- ``RUNWATCH_HEARTBEAT_S`` (default 30): how often a training stamps its run row;
  ``RUNWATCH_STALE_AFTER_S`` (default 4 heartbeats): an ``in_progress`` run whose last stamp is
  older is shown as ``crashed`` (its process died without finishing it)

Secrets (the token, passwords inside URLs) never appear in ``repr`` or in ``describe()``.
A malformed value raises ``ConfigError``: one line naming the variable and what is wrong (the
CLI prints it and exits 2).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from collector.errors import ConfigError

SETTING_GROUPS: Mapping[str, tuple[str, ...]] = {
    "influx": ("INFLUXDB_V2_", "RUNWATCH_INFLUX_"),
    "prometheus": ("RUNWATCH_PROMETHEUS_",),
}
"""Settings a command may leave unread, by the prefixes of their variables."""
INFLUX_GZIP_CHOICES = ("auto", "on", "off")
PLACEHOLDER_MARK = "change-me"
"""What every secret in .env.example holds until the user replaces it."""
DEFAULT_BUCKET = "training"
DEFAULT_PROMETHEUS_PORT = 9464
DEFAULT_HEARTBEAT_S = 30.0
STALE_HEARTBEATS = 4
"""A run whose heartbeat is this many intervals old (by default) is seen as crashed."""
SQLITE_FILE_URL = re.compile(r"sqlite(?:\+pysqlite)?:///(?P<path>[^?%]+)")
"""A SQLite file URL that SQLAlchemy reads as the path as it is: no percent-escapes, no query
options. Such a URL is valid without importing SQLAlchemy to parse it."""


@dataclass(frozen=True)
class Settings:
    home: Path
    db_url: str = field(repr=False)
    influx_url: str | None = field(default=None, repr=False)
    influx_org: str | None = None
    influx_token: str | None = field(default=None, repr=False)
    influx_bucket: str = DEFAULT_BUCKET
    influx_gzip: bool | None = None
    """Gzip the bodies of writes: None (``auto``) only to a server not on this machine, where
    it saves network; compressing for a loopback server costs both ends CPU for nothing."""
    prometheus_addr: str = "127.0.0.1"
    prometheus_port: int = DEFAULT_PROMETHEUS_PORT
    heartbeat_s: float = DEFAULT_HEARTBEAT_S
    """How often a running training stamps its run row."""
    stale_after_s: float = STALE_HEARTBEATS * DEFAULT_HEARTBEAT_S
    """An ``in_progress`` run whose last heartbeat is older than this has crashed."""

    def __repr__(self) -> str:
        return f"Settings({self.describe()!r})"

    @property
    def spool_dir(self) -> Path:
        return self.home / "spool"

    @property
    def influx_enabled(self) -> bool:
        return bool(self.influx_url)

    @property
    def prometheus_enabled(self) -> bool:
        return self.prometheus_port != 0

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some fields replaced (CLI flags override the environment)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def describe(self) -> dict[str, str]:
        """Every setting as text for humans, secrets masked."""
        return {
            "RUNWATCH_HOME": str(self.home),
            "RUNWATCH_DB_URL": mask_url(self.db_url),
            "INFLUXDB_V2_URL": mask_url(self.influx_url)
            if self.influx_url
            else "(not set: spool only)",
            "INFLUXDB_V2_ORG": self.influx_org or "(not set)",
            "INFLUXDB_V2_TOKEN": mask_secret(self.influx_token),
            "INFLUXDB_V2_BUCKET": self.influx_bucket,
            "RUNWATCH_INFLUX_GZIP": {None: "auto", True: "on", False: "off"}[self.influx_gzip],
            "RUNWATCH_PROMETHEUS_ADDR": self.prometheus_addr,
            "RUNWATCH_PROMETHEUS_PORT": str(self.prometheus_port)
            + ("" if self.prometheus_port else " (disabled)"),
            "RUNWATCH_HEARTBEAT_S": f"{self.heartbeat_s:g}",
            "RUNWATCH_STALE_AFTER_S": f"{self.stale_after_s:g}",
        }


def mask_secret(secret: str | None) -> str:
    if not secret:
        return "(not set)"
    return f"****** ({len(secret)} chars)"


def mask_url(url: str) -> str:
    """Replace a password inside a URL with ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparseable URL)"
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def read_dotenv(path: Path) -> dict[str, str]:
    """Parse ``KEY=VALUE`` lines (optional ``export``, quotes, ``#`` comments)."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def load_settings(
    environ: Mapping[str, str] | None = None,
    dotenv: Path | None = Path(".env"),
    *,
    unused: Collection[str] = (),
) -> Settings:
    """Build settings from the environment; the environment wins over ``.env``.

    ``unused``: groups of ``SETTING_GROUPS`` a caller never uses (``runs list`` talks to
    neither InfluxDB nor Prometheus); their variables are not read, so a malformed one does not
    stop it, and they keep their defaults."""
    env: dict[str, str] = dict(read_dotenv(dotenv)) if dotenv is not None else {}
    env.update(os.environ if environ is None else environ)

    home = Path(env.get("RUNWATCH_HOME") or Path.home() / ".runwatch").expanduser()
    db_url = env.get("RUNWATCH_DB_URL") or f"sqlite:///{home / 'runs.db'}"
    _validate_db_url(db_url)
    prefixes = tuple(prefix for group in unused for prefix in SETTING_GROUPS[group])
    env = {k: v for k, v in env.items() if not k.startswith(prefixes)}
    influx_url = env.get("INFLUXDB_V2_URL") or None
    if influx_url is not None:
        _validate_http_url("INFLUXDB_V2_URL", influx_url)
    heartbeat_s = _parse_seconds("RUNWATCH_HEARTBEAT_S", env, DEFAULT_HEARTBEAT_S)
    stale_after_s = _parse_seconds("RUNWATCH_STALE_AFTER_S", env, STALE_HEARTBEATS * heartbeat_s)
    if stale_after_s <= heartbeat_s:
        raise ConfigError(
            f"RUNWATCH_STALE_AFTER_S ({stale_after_s:g}) must be longer than "
            f"RUNWATCH_HEARTBEAT_S ({heartbeat_s:g}): live runs would be seen as crashed"
        )
    return Settings(
        home=home,
        db_url=db_url,
        influx_url=influx_url,
        influx_org=env.get("INFLUXDB_V2_ORG") or None,
        influx_token=_influx_token(env),
        influx_bucket=env.get("INFLUXDB_V2_BUCKET") or DEFAULT_BUCKET,
        influx_gzip=_parse_gzip(env.get("RUNWATCH_INFLUX_GZIP")),
        prometheus_addr=env.get("RUNWATCH_PROMETHEUS_ADDR") or "127.0.0.1",
        prometheus_port=_parse_port(env.get("RUNWATCH_PROMETHEUS_PORT")),
        heartbeat_s=heartbeat_s,
        stale_after_s=stale_after_s,
    )


def _parse_gzip(text: str | None) -> bool | None:
    choice = (text or "auto").strip().lower()
    if choice not in INFLUX_GZIP_CHOICES:
        raise ConfigError(
            f"RUNWATCH_INFLUX_GZIP must be one of {', '.join(INFLUX_GZIP_CHOICES)}, got {text!r}"
        )
    return None if choice == "auto" else choice == "on"


def _influx_token(env: Mapping[str, str]) -> str | None:
    name, token = "INFLUXDB_V2_TOKEN", env.get("INFLUXDB_V2_TOKEN") or None
    path = env.get("INFLUXDB_V2_TOKEN_FILE") or None
    if token is None and path is not None:
        name = "INFLUXDB_V2_TOKEN_FILE"
        try:
            token = Path(path).read_text(encoding="utf-8").strip() or None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"INFLUXDB_V2_TOKEN_FILE cannot be read: {exc}") from None
    if token is not None and PLACEHOLDER_MARK in token.lower():
        raise ConfigError(
            f"{name} is still the .env.example placeholder: set the real token "
            "(the compose stack's write-only one, see .env.example)"
        )
    return token


def _parse_seconds(name: str, env: Mapping[str, str], default: float) -> float:
    text = env.get(name) or ""
    if not text:
        return default
    try:
        seconds = float(text)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {text!r}") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"{name} must be a positive number of seconds, got {text!r}")
    return seconds


def _validate_db_url(url: str) -> None:
    if SQLITE_FILE_URL.fullmatch(url):  # valid as it is: no need to import SQLAlchemy
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise ConfigError(
            f"RUNWATCH_DB_URL is not a valid SQLAlchemy URL ({mask_url(url)}): {exc}"
        ) from None


def _validate_http_url(name: str, url: str) -> None:
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise ConfigError(
            f"{name} is not a valid URL: it contains whitespace or control characters"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # "Invalid IPv6 URL", "Port out of range 0-65535", ...
        raise ConfigError(f"{name} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name} must be an http(s) URL with a host, got {mask_url(url)!r}")
    if port == 0:
        raise ConfigError(f"{name} has port 0: a server port is 1..65535")


def _parse_port(text: str | None) -> int:
    if text is None or text == "":
        return DEFAULT_PROMETHEUS_PORT
    try:
        port = int(text)
    except ValueError:
        raise ConfigError(f"RUNWATCH_PROMETHEUS_PORT must be an integer, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"RUNWATCH_PROMETHEUS_PORT must be 0..65535, got {port}")
    return port
