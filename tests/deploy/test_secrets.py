"""The stack's secret handling: deploy/check-secrets.sh refuses .env.example's placeholders (the
entrypoint of InfluxDB and Grafana), deploy/influxdb/init-tokens.sh creates a write-only and a
read-only token on a real InfluxDB 2, and runwatch itself refuses a placeholder token."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from collector.config import load_settings
from collector.errors import ConfigError
from tests.deploy._deploy import DEPLOY, ENV_EXAMPLE
from tests.deploy.test_compose import env_example
from tests.servers.influxdb2 import InfluxDB2

CHECK = DEPLOY / "check-secrets.sh"
INIT_TOKENS = DEPLOY / "influxdb" / "init-tokens.sh"
INFLUXDB_CHECK = {
    "RUNWATCH_SECRETS": "DOCKER_INFLUXDB_INIT_PASSWORD DOCKER_INFLUXDB_INIT_ADMIN_TOKEN",
    "RUNWATCH_ADMIN_USERS": "DOCKER_INFLUXDB_INIT_USERNAME",
}
GRAFANA_CHECK = {
    "RUNWATCH_SECRETS": "GF_SECURITY_ADMIN_PASSWORD",
    "RUNWATCH_ADMIN_USERS": "GF_SECURITY_ADMIN_USER",
}


def _check(env: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", str(CHECK), *(command or ("echo", "started"))],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _grafana_env(values: dict[str, str]) -> dict[str, str]:
    return {
        **GRAFANA_CHECK,
        "GF_SECURITY_ADMIN_USER": values["GRAFANA_ADMIN_USER"],
        "GF_SECURITY_ADMIN_PASSWORD": values["GRAFANA_ADMIN_PASSWORD"],
    }


def test_the_example_placeholders_are_refused_in_one_line() -> None:
    example = env_example()
    for env in ({**INFLUXDB_CHECK, **example}, _grafana_env(example)):
        result = _check(env)
        assert result.returncode == 2 and result.stdout == ""
        [line] = result.stderr.splitlines()
        assert line.startswith("runwatch: refusing to start:")
        for name in env["RUNWATCH_SECRETS"].split():
            assert f"{name} is still the .env.example placeholder" in line
        assert "change-me" not in line  # names, never values


@pytest.mark.parametrize("user", ["admin", "root", "ADMIN", ""])
def test_an_admin_user_named_admin_or_unset_is_refused(user: str) -> None:
    env = _grafana_env({"GRAFANA_ADMIN_USER": user, "GRAFANA_ADMIN_PASSWORD": "s3cret-enough"})
    result = _check(env)
    assert result.returncode == 2 and "GF_SECURITY_ADMIN_USER" in result.stderr


def test_real_values_start_the_service_with_its_arguments() -> None:
    env = {
        **INFLUXDB_CHECK,
        "DOCKER_INFLUXDB_INIT_USERNAME": "ops",
        "DOCKER_INFLUXDB_INIT_PASSWORD": "a-real-password",
        "DOCKER_INFLUXDB_INIT_ADMIN_TOKEN": "0123456789abcdef",
    }
    result = _check(env, "sh", "-c", 'echo "started $0"', "influxd")
    assert (result.returncode, result.stdout, result.stderr) == (0, "started influxd\n", "")


def test_grafana_gets_the_read_token_from_its_file(tmp_path: Path) -> None:
    token = tmp_path / "token"
    env = {
        **_grafana_env({"GRAFANA_ADMIN_USER": "ops", "GRAFANA_ADMIN_PASSWORD": "s3cret-enough"}),
        "RUNWATCH_INFLUXDB_TOKEN_FILE": str(token),
    }
    missing = _check(env, "sh", "-c", 'echo "$INFLUXDB_TOKEN"')
    assert missing.returncode == 2 and "no InfluxDB token" in missing.stderr
    token.write_text("read-token-value\n")
    result = _check(env, "sh", "-c", 'echo "$INFLUXDB_TOKEN"')
    assert (result.returncode, result.stdout) == (0, "read-token-value\n")


def test_runwatch_refuses_the_placeholder_token(tmp_path: Path) -> None:
    example = env_example()
    with pytest.raises(
        ConfigError, match=r"INFLUXDB_V2_TOKEN is still the \.env\.example placeholder"
    ):
        load_settings({"INFLUXDB_V2_TOKEN": example["INFLUXDB_V2_TOKEN"]}, dotenv=None)
    with pytest.raises(ConfigError, match="INFLUXDB_V2_TOKEN is still"):
        load_settings({"RUNWATCH_HOME": str(tmp_path)}, dotenv=ENV_EXAMPLE)
    token_file = tmp_path / "token"
    token_file.write_text("real-write-token\n")
    settings = load_settings({"INFLUXDB_V2_TOKEN_FILE": str(token_file)}, dotenv=None)
    assert settings.influx_token == "real-write-token"
    with pytest.raises(ConfigError, match="INFLUXDB_V2_TOKEN_FILE cannot be read"):
        load_settings({"INFLUXDB_V2_TOKEN_FILE": str(tmp_path / "none")}, dotenv=None)


# -- init-tokens.sh on a real InfluxDB 2 ------------------------------------------------------

# `influx auth create ... --hide-headers` as the influx CLI does it (the CLI is not installed
# here): the same API call with the operator token, the same tab-separated row.
INFLUX_SHIM = textwrap.dedent(
    """\
    import json, sys, urllib.request
    args = sys.argv[1:]
    assert args[:2] == ["auth", "create"] and "--hide-headers" in args, args
    option = {args[i]: args[i + 1] for i in range(2, len(args) - 1) if args[i].startswith("--")}
    [action] = [a for a in ("read", "write") if f"--{a}-bucket" in option]
    body = {
        "orgID": option["--org-id"],
        "description": option["--description"],
        "permissions": [{"action": action, "resource": {
            "type": "buckets", "id": option[f"--{action}-bucket"], "orgID": option["--org-id"]}}],
    }
    request = urllib.request.Request(
        "@URL@/api/v2/authorizations", json.dumps(body).encode(),
        {"Authorization": "Token @TOKEN@", "Content-Type": "application/json"}, method="POST")
    created = json.load(urllib.request.urlopen(request))
    print("\\t".join([created["id"], created["description"], created["token"], "ops", "x", "y"]))
    """
)


@pytest.mark.integration
def test_init_tokens_creates_a_write_only_and_a_read_only_token(
    influxdb2: InfluxDB2, tmp_path: Path
) -> None:
    bucket_id = influxdb2.create_bucket("compose-tokens")
    bin_dir, trainer_dir, grafana_dir = (tmp_path / d for d in ("bin", "trainer", "grafana"))
    for directory in (bin_dir, trainer_dir, grafana_dir):
        directory.mkdir()
    shim = INFLUX_SHIM.replace("@URL@", influxdb2.url).replace("@TOKEN@", influxdb2.operator_token)
    (bin_dir / "influx.py").write_text(shim)
    (bin_dir / "influx").write_text(f'#!/bin/sh\nexec {sys.executable} {bin_dir}/influx.py "$@"\n')
    (bin_dir / "influx").chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "DOCKER_INFLUXDB_INIT_ORG_ID": influxdb2.org_id,
        "DOCKER_INFLUXDB_INIT_BUCKET_ID": bucket_id,
        "DOCKER_INFLUXDB_INIT_BUCKET": "compose-tokens",
        "RUNWATCH_TRAINER_TOKEN_DIR": str(trainer_dir),
        "RUNWATCH_GRAFANA_TOKEN_DIR": str(grafana_dir),
    }
    result = subprocess.run(
        ["/bin/sh", str(INIT_TOKENS)], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    write_token = (trainer_dir / "token").read_text().strip()
    read_token = (grafana_dir / "token").read_text().strip()
    assert write_token not in result.stdout + result.stderr
    assert oct((grafana_dir / "token").stat().st_mode & 0o777) == "0o644"

    line = b"m,run_id=r v=1 1700000000000000000"
    assert influxdb2.write("compose-tokens", line, token=write_token).status == 204
    assert influxdb2.write("compose-tokens", line, token=read_token).status in (401, 403, 404)
    assert influxdb2.write("training", line, token=write_token).status in (401, 403, 404)
    query = {"query": 'from(bucket: "compose-tokens") |> range(start: 0)', "type": "flux"}
    path = f"/api/v2/query?orgID={influxdb2.org_id}"
    assert influxdb2.request("POST", path, query, token=read_token).status == 200
    assert influxdb2.request("POST", path, query, token=write_token).status in (401, 403, 404)
    descriptions = {
        a["description"]
        for a in json.loads(influxdb2.request("GET", "/api/v2/authorizations").text)[
            "authorizations"
        ]
    }
    assert {"runwatch trainers: write compose-tokens", "runwatch Grafana: read compose-tokens"} <= (
        descriptions
    )
