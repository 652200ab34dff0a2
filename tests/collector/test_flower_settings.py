"""runwatch's settings from Flower's run config and node config (collector.flower.settings)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from collector.errors import ConfigError
from collector.flower import FederatedRun
from collector.flower.settings import destinations, settings_from_config

ENV = {"RUNWATCH_HOME": "/from/env", "INFLUXDB_V2_TOKEN": "s3cret-token"}


def test_run_config_keys_win_over_the_environment_and_node_config_over_both(
    tmp_path: Path,
) -> None:
    run_config = {
        "runwatch-home": str(tmp_path / "run"),
        "runwatch-influxdb-url": "http://influx.example:8086",
        "runwatch-influxdb-bucket": "flower",
        "num-server-rounds": 3,  # the app's own keys are not runwatch's
    }
    node_config = {"partition-id": 0, "runwatch-home": str(tmp_path / "node")}
    server = settings_from_config(run_config, environ=ENV, dotenv=None)
    client = settings_from_config(run_config, node_config, environ=ENV, dotenv=None)
    assert server.home == tmp_path / "run" and client.home == tmp_path / "node"
    assert server.influx_url == "http://influx.example:8086" and server.influx_bucket == "flower"
    assert server.influx_token == "s3cret-token"  # secrets stay in the environment
    assert server.db_url == f"sqlite:///{tmp_path / 'run' / 'runs.db'}"


def test_empty_values_leave_the_environment_as_it_is() -> None:
    declared = {"runwatch-home": "", "runwatch-influxdb-url": ""}
    settings = settings_from_config(declared, environ=ENV, dotenv=None)
    assert settings.home == Path("/from/env") and settings.influx_url is None


def test_secrets_in_flowers_config_are_ignored_with_one_warning(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n", encoding="utf-8")
    config = {
        "runwatch-influxdb-token": "leaked",
        "runwatch-db-url": "postgresql://user:pw@db/runs",
        "runwatch-influxdb-token-file": str(token_file),
    }
    with caplog.at_level(logging.WARNING, logger="collector.flower"):
        settings = settings_from_config(config, environ={}, dotenv=None)
    assert settings.influx_token == "from-file"
    assert "pw" not in settings.db_url and settings.db_url.startswith("sqlite:")
    assert "leaked" not in caplog.text and ":pw@" not in caplog.text
    assert "runwatch-influxdb-token" in caplog.text and "runwatch-db-url" in caplog.text


def test_a_malformed_value_names_its_variable() -> None:
    with pytest.raises(ConfigError, match="RUNWATCH_PROMETHEUS_PORT"):
        settings_from_config({"runwatch-prometheus-port": "http"}, environ={}, dotenv=None)


def test_destinations_say_where_without_secrets(tmp_path: Path) -> None:
    settings = settings_from_config(
        {"runwatch-home": str(tmp_path), "runwatch-influxdb-url": "http://i:8086"},
        environ={"RUNWATCH_DB_URL": "postgresql://u:hidden@db/runs", "INFLUXDB_V2_TOKEN": "t0k"},
        dotenv=None,
    )
    line = destinations(settings)
    assert "hidden" not in line and "t0k" not in line
    assert "postgresql://u:***@db/runs" in line and "http://i:8086" in line
    assert str(tmp_path / "spool") in line


def _server_context(run_config: dict[str, bool | float | int | str]) -> Context:
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)


def test_federated_run_takes_its_settings_from_the_serverapps_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNWATCH_HOME", str(tmp_path / "env"))
    context = _server_context({"runwatch-home": str(tmp_path / "run"), "num-server-rounds": 2})
    assert FederatedRun("e", context=context).settings.home == tmp_path / "run"
    given = settings_from_config(environ={"RUNWATCH_HOME": str(tmp_path / "given")}, dotenv=None)
    assert FederatedRun("e", context=context, settings=given).settings.home == tmp_path / "given"


def test_a_malformed_run_config_key_falls_back_to_the_environment_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("RUNWATCH_HOME", str(tmp_path / "env"))
    context = _server_context({"runwatch-prometheus-port": "not-a-port"})
    with caplog.at_level(logging.WARNING, logger="collector.flower"):
        run = FederatedRun("e", context=context)
    assert run.settings.home == tmp_path / "env"
    assert [r for r in caplog.records if "RUNWATCH_PROMETHEUS_PORT" in r.getMessage()]
