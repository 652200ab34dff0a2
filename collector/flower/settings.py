"""runwatch's settings from Flower's run config and node config, beside the environment.

A federated run's processes are Flower's (the SuperLink's ServerApp, each SuperNode's
ClientApps): a variable exported only in the shell of ``flwr run`` reaches none of them. So
the settings can also travel in Flower's own configuration:

- the run config (``[tool.flwr.app.config]`` or ``flwr run --run-config``): read by the
  ServerApp (``context.run_config``) and by every ClientApp of the run;
- the node config (``flower-supernode --node-config``, or the simulation's federation
  config): read by the ClientApps of that node (``context.node_config``), and winning over the
  run config there.

Keys are the variables' names in Flower's kebab case, under ``runwatch-``:

==================================  ===========================
key                                 variable
==================================  ===========================
``runwatch-home``                   ``RUNWATCH_HOME``
``runwatch-db-url``                 ``RUNWATCH_DB_URL``
``runwatch-influxdb-url``           ``INFLUXDB_V2_URL``
``runwatch-influxdb-org``           ``INFLUXDB_V2_ORG``
``runwatch-influxdb-bucket``        ``INFLUXDB_V2_BUCKET``
``runwatch-influxdb-token-file``    ``INFLUXDB_V2_TOKEN_FILE``
``runwatch-prometheus-addr``        ``RUNWATCH_PROMETHEUS_ADDR``
``runwatch-prometheus-port``        ``RUNWATCH_PROMETHEUS_PORT``
``runwatch-heartbeat-s``            ``RUNWATCH_HEARTBEAT_S``
``runwatch-stale-after-s``          ``RUNWATCH_STALE_AFTER_S``
==================================  ===========================

A key wins over the variable; an empty value leaves the variable as it is (``flwr run``
takes only run config keys the app declares in ``[tool.flwr.app.config]``, so an app
declares those it wants with ``""``). Secrets never travel in Flower's configuration (Flower logs and
stores it): the token comes from the environment, ``.env`` or the file that
``runwatch-influxdb-token-file`` names; a ``runwatch-influxdb-token`` key and a database URL
holding a password are ignored with one warning each.

This module imports no framework; it reads plain mappings.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final, Protocol
from urllib.parse import urlsplit

from collector.config import Settings, load_settings, mask_url

log = logging.getLogger("collector.flower")

KEY_PREFIX: Final = "runwatch-"
CONFIG_KEYS: Final[Mapping[str, str]] = {
    "runwatch-home": "RUNWATCH_HOME",
    "runwatch-db-url": "RUNWATCH_DB_URL",
    "runwatch-influxdb-url": "INFLUXDB_V2_URL",
    "runwatch-influxdb-org": "INFLUXDB_V2_ORG",
    "runwatch-influxdb-bucket": "INFLUXDB_V2_BUCKET",
    "runwatch-influxdb-token-file": "INFLUXDB_V2_TOKEN_FILE",
    "runwatch-prometheus-addr": "RUNWATCH_PROMETHEUS_ADDR",
    "runwatch-prometheus-port": "RUNWATCH_PROMETHEUS_PORT",
    "runwatch-heartbeat-s": "RUNWATCH_HEARTBEAT_S",
    "runwatch-stale-after-s": "RUNWATCH_STALE_AFTER_S",
}
SECRET_KEYS: Final = ("runwatch-influxdb-token",)

ConfigValue = object
_warned: set[str] = set()


def settings_from_config(
    *configs: Mapping[str, ConfigValue],
    environ: Mapping[str, str] | None = None,
    dotenv: Path | None = Path(".env"),
) -> Settings:
    """Settings from the environment (and ``.env``) with ``runwatch-*`` keys of ``configs``
    over them; of two configs, the later wins (run config, then node config). A malformed
    value raises ``ConfigError`` naming the key's variable."""
    env = dict(os.environ if environ is None else environ)
    for config in configs:
        env.update(config_variables(config))
    return load_settings(env, dotenv)


class _HasConfigs(Protocol):
    @property
    def run_config(self) -> Mapping[str, ConfigValue]: ...

    @property
    def node_config(self) -> Mapping[str, ConfigValue]: ...


def server_settings(context: _HasConfigs) -> Settings:
    """A ServerApp's settings: the environment with the run config's ``runwatch-*`` keys."""
    return settings_from_config(context.run_config)


def client_settings(context: _HasConfigs) -> Settings:
    """A ClientApp's settings: the environment, the run config's ``runwatch-*`` keys over it,
    this node's node config's over those."""
    return settings_from_config(context.run_config, context.node_config)


def config_variables(config: Mapping[str, ConfigValue]) -> dict[str, str]:
    """The environment variables the ``runwatch-*`` keys of one Flower config stand for."""
    variables: dict[str, str] = {}
    for key, value in config.items():
        if not key.startswith(KEY_PREFIX):
            continue
        if key in SECRET_KEYS:
            _warn_once(
                key,
                f"runwatch: ignoring {key}: Flower logs its config; set the token "
                "in the environment, .env, or runwatch-influxdb-token-file",
            )
            continue
        variable = CONFIG_KEYS.get(key)
        if variable is None:
            _warn_once(
                key,
                f"runwatch: unknown setting {key!r} in the Flower config; ignored "
                f"(known: {', '.join(CONFIG_KEYS)})",
            )
            continue
        text = _text(value)
        if not text:
            continue  # declared in the app's config without a value: the environment decides
        if variable == "RUNWATCH_DB_URL" and _has_password(text):
            _warn_once(
                key,
                f"runwatch: ignoring {key} ({mask_url(text)}): it holds a password "
                "and Flower logs its config; set RUNWATCH_DB_URL in the environment",
            )
            continue
        variables[variable] = text
    return variables


def destinations(settings: Settings) -> str:
    """Where a run's records go, in one line without secrets."""
    influx = (
        f"InfluxDB {mask_url(settings.influx_url)} bucket {settings.influx_bucket}"
        if settings.influx_url
        else "no InfluxDB (spool only; `runwatch sync` ships it later)"
    )
    return f"run store {mask_url(settings.db_url)}, {influx}, spool {settings.spool_dir}"


def _text(value: ConfigValue) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value).strip()


def _has_password(url: str) -> bool:
    try:
        return urlsplit(url).password is not None
    except ValueError:
        return False


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message)
