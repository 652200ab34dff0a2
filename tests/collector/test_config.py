from __future__ import annotations

from pathlib import Path

import pytest

from collector.config import Settings, load_settings, mask_url, read_dotenv
from collector.errors import ConfigError


def test_defaults_point_into_runwatch_home(tmp_path: Path) -> None:
    settings = load_settings({"RUNWATCH_HOME": str(tmp_path)}, dotenv=None)
    assert settings.home == tmp_path
    assert settings.db_url == f"sqlite:///{tmp_path / 'runs.db'}"
    assert settings.spool_dir == tmp_path / "spool"
    assert settings.influx_bucket == "training"
    assert not settings.influx_enabled
    assert settings.prometheus_addr == "127.0.0.1"
    assert settings.prometheus_enabled


def test_environment_wins_over_dotenv(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "# comment\nexport INFLUXDB_V2_BUCKET='from-file'\nINFLUXDB_V2_ORG=\"org-file\"\n"
        "RUNWATCH_PROMETHEUS_PORT=0\n"
    )
    settings = load_settings({"INFLUXDB_V2_BUCKET": "from-env"}, dotenv=dotenv)
    assert settings.influx_bucket == "from-env"
    assert settings.influx_org == "org-file"
    assert not settings.prometheus_enabled


def test_read_dotenv_missing_file_is_empty(tmp_path: Path) -> None:
    assert read_dotenv(tmp_path / "absent") == {}


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"RUNWATCH_DB_URL": "not a url"}, "RUNWATCH_DB_URL"),
        ({"RUNWATCH_DB_URL": "://nohost"}, "RUNWATCH_DB_URL"),
        ({"INFLUXDB_V2_URL": "localhost:8086"}, "INFLUXDB_V2_URL"),
        ({"RUNWATCH_PROMETHEUS_PORT": "abc"}, "RUNWATCH_PROMETHEUS_PORT"),
        ({"RUNWATCH_PROMETHEUS_PORT": "70000"}, "RUNWATCH_PROMETHEUS_PORT"),
        ({"RUNWATCH_INFLUX_GZIP": "yes"}, "RUNWATCH_INFLUX_GZIP"),
    ],
)
def test_malformed_values_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable) as info:
        load_settings(env, dotenv=None)
    assert "\n" not in str(info.value)


def test_secrets_are_masked_everywhere(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "RUNWATCH_HOME": str(tmp_path),
            "RUNWATCH_DB_URL": "postgresql://user:hunter2@db:5432/runs",
            "INFLUXDB_V2_URL": "http://influx:8086",
            "INFLUXDB_V2_TOKEN": "s3cr3t-token",
        },
        dotenv=None,
    )
    shown = repr(settings) + str(settings.describe())
    assert "hunter2" not in shown
    assert "s3cr3t-token" not in shown
    assert "postgresql://user:***@db:5432/runs" in settings.describe()["RUNWATCH_DB_URL"]


def test_mask_url_leaves_urls_without_password() -> None:
    assert mask_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


def test_with_overrides_ignores_none(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, db_url="sqlite://")
    assert settings.with_overrides(influx_bucket=None).influx_bucket == "training"
    assert settings.with_overrides(influx_bucket="b").influx_bucket == "b"


def test_heartbeat_and_stale_bound_default_and_follow_each_other(tmp_path: Path) -> None:
    defaults = load_settings({"RUNWATCH_HOME": str(tmp_path)}, dotenv=None)
    assert (defaults.heartbeat_s, defaults.stale_after_s) == (30.0, 120.0)
    faster = load_settings({"RUNWATCH_HOME": str(tmp_path), "RUNWATCH_HEARTBEAT_S": "2"}, None)
    assert (faster.heartbeat_s, faster.stale_after_s) == (2.0, 8.0)
    assert faster.describe()["RUNWATCH_STALE_AFTER_S"] == "8"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RUNWATCH_HEARTBEAT_S": "soon"}, "RUNWATCH_HEARTBEAT_S must be a number"),
        ({"RUNWATCH_HEARTBEAT_S": "-1"}, "RUNWATCH_HEARTBEAT_S must be a positive"),
        ({"RUNWATCH_STALE_AFTER_S": "nan"}, "RUNWATCH_STALE_AFTER_S must be a positive"),
        (
            {"RUNWATCH_HEARTBEAT_S": "60", "RUNWATCH_STALE_AFTER_S": "30"},
            "RUNWATCH_STALE_AFTER_S (30) must be longer than RUNWATCH_HEARTBEAT_S (60)",
        ),
    ],
)
def test_bad_heartbeat_settings_are_one_line_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(env, dotenv=None)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_gzip_is_auto_unless_set_and_a_command_without_influxdb_never_reads_it() -> None:
    def gzip(value: str | None) -> bool | None:
        env = {} if value is None else {"RUNWATCH_INFLUX_GZIP": value}
        return load_settings(env, dotenv=None).influx_gzip

    assert [gzip(v) for v in (None, "auto", "", "on", " OFF ")] == [None, None, None, True, False]
    assert load_settings({}, dotenv=None).describe()["RUNWATCH_INFLUX_GZIP"] == "auto"
    unread = load_settings({"RUNWATCH_INFLUX_GZIP": "yes"}, dotenv=None, unused=("influx",))
    assert unread.influx_gzip is None
