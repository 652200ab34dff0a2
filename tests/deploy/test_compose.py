"""docker-compose.yml: `docker-compose config` (Debian's docker-compose; no Docker engine is
needed) accepts it with .env.example as .env, and the resolved stack keeps its promises:
pinned images, only Grafana beyond 127.0.0.1, secrets required, the trainer under a profile."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy._deploy import COMPOSE_FILE, ENV_EXAMPLE, REPO, load_yaml
from tests.servers._process import require_binary
from tests.servers.influxdb2 import pinned_versions

SERVICES = {"influxdb", "prometheus", "alertmanager", "grafana"}
SECRETS = {
    "DOCKER_INFLUXDB_INIT_PASSWORD",
    "DOCKER_INFLUXDB_INIT_ADMIN_TOKEN",
    "GRAFANA_ADMIN_PASSWORD",
    "ALERTMANAGER_WEBHOOK_URL",
    "GRAFANA_ALERT_WEBHOOK_URL",
}
WEBHOOK_URLS = {"ALERTMANAGER_WEBHOOK_URL", "GRAFANA_ALERT_WEBHOOK_URL"}
_COMPOSE_VARIABLE = re.compile(r"\$\{(\w+)(?:[:?-][^}]*)?\}")


def env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            assert key not in values, f"{key} twice in .env.example"
            values[key] = value
    return values


def compose(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    binary = require_binary("docker-compose")
    return subprocess.run(
        [
            binary,
            "--project-directory",
            str(project),
            "-f",
            str(project / COMPOSE_FILE.name),
            *args,
        ],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of what compose reads, with .env.example as .env."""
    shutil.copy(COMPOSE_FILE, tmp_path / COMPOSE_FILE.name)
    shutil.copy(ENV_EXAMPLE, tmp_path / ".env")
    for directory in ("deploy", "grafana"):
        if (REPO / directory).is_dir():
            shutil.copytree(REPO / directory, tmp_path / directory)
    return tmp_path


@pytest.fixture
def resolved(project: Path) -> dict[str, Any]:
    result = compose(project, "--profile", "trainer", "config")
    assert result.returncode == 0, result.stderr
    assert "is not set" not in result.stderr, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


@pytest.mark.integration
class TestComposeConfig:
    def test_services(self, resolved: dict[str, Any]) -> None:
        assert set(resolved["services"]) == SERVICES | {"trainer"}

    def test_trainer_only_under_its_profile(self, project: Path, resolved: dict[str, Any]) -> None:
        profiles = compose(project, "config", "--profiles")
        assert profiles.returncode == 0, profiles.stderr
        assert profiles.stdout.split() == ["trainer"]
        in_profiles = {n for n, s in resolved["services"].items() if s.get("profiles")}
        assert in_profiles == {"trainer"}
        assert resolved["services"]["trainer"]["profiles"] == ["trainer"]

    def test_images_are_pinned(self, resolved: dict[str, Any]) -> None:
        for name, service in resolved["services"].items():
            image = service["image"]
            repository, _, tag = image.rpartition(":")
            assert repository and re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name}: {image}"

    def test_influxdb_is_the_version_the_tests_build(self, resolved: dict[str, Any]) -> None:
        version = pinned_versions()["INFLUXD_VERSION"]
        assert resolved["services"]["influxdb"]["image"] == f"influxdb:{version}"

    def test_only_grafana_is_published_beyond_loopback(self, resolved: dict[str, Any]) -> None:
        published: dict[str, list[str | None]] = {}
        for name, service in resolved["services"].items():
            for port in service.get("ports", []):
                if isinstance(port, dict):
                    host_ip = port.get("host_ip")
                else:  # "127.0.0.1:8086:8086/tcp"
                    parts = str(port).split(":")
                    host_ip = parts[0] if len(parts) == 3 else None
                published.setdefault(name, []).append(host_ip)
        assert published.pop("grafana") == [None]
        assert published == {s: ["127.0.0.1"] for s in ("influxdb", "prometheus", "alertmanager")}

    def test_secrets_come_from_env(self, resolved: dict[str, Any]) -> None:
        example = env_example()
        grafana = resolved["services"]["grafana"]["environment"]
        assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == example["GRAFANA_ADMIN_PASSWORD"]
        assert grafana["GF_SECURITY_ADMIN_PASSWORD"] != "admin"
        influxdb = resolved["services"]["influxdb"]["environment"]
        assert influxdb["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
        assert influxdb["DOCKER_INFLUXDB_INIT_BUCKET"] == example["DOCKER_INFLUXDB_INIT_BUCKET"]
        trainer = resolved["services"]["trainer"]["environment"]
        assert trainer["INFLUXDB_V2_URL"] == "http://influxdb:8086"

    def test_only_influxdb_holds_the_operator_token(self, resolved: dict[str, Any]) -> None:
        operator = env_example()["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"]
        holders = {
            name
            for name, service in resolved["services"].items()
            if operator in (service.get("environment") or {}).values()
        }
        assert holders == {"influxdb"}

    def test_trainer_writes_and_grafana_reads_with_their_own_tokens(
        self, resolved: dict[str, Any]
    ) -> None:
        services = resolved["services"]
        influxdb, grafana, trainer = (services[n] for n in ("influxdb", "grafana", "trainer"))
        init_scripts = _mounts(influxdb)
        assert init_scripts["/docker-entrypoint-initdb.d/runwatch-tokens.sh"].endswith(
            "deploy/influxdb/init-tokens.sh"
        )
        env = influxdb["environment"]
        token_dirs = {env["RUNWATCH_TRAINER_TOKEN_DIR"], env["RUNWATCH_GRAFANA_TOKEN_DIR"]}
        assert set(env["RUNWATCH_TOKEN_DIRS"].split()) == token_dirs
        trainer_dir = env["RUNWATCH_TRAINER_TOKEN_DIR"]
        grafana_dir = env["RUNWATCH_GRAFANA_TOKEN_DIR"]
        # Each token's volume is mounted, read-only, into its own service only.
        trainer_volume = init_scripts[trainer_dir]
        grafana_volume = init_scripts[grafana_dir]
        assert _mounts(trainer) == {
            "/home/runwatch/.runwatch": "runwatch-home",
            trainer_dir: trainer_volume,
        }
        assert trainer["environment"]["INFLUXDB_V2_TOKEN_FILE"] == f"{trainer_dir}/token"
        assert "INFLUXDB_V2_TOKEN" not in trainer["environment"]
        assert _mounts(grafana)[grafana_dir] == grafana_volume
        assert grafana_volume not in _mounts(trainer).values()
        assert trainer_volume not in _mounts(grafana).values()
        assert _read_only(trainer, trainer_dir) and _read_only(grafana, grafana_dir)
        assert grafana["environment"]["RUNWATCH_INFLUXDB_TOKEN_FILE"] == f"{grafana_dir}/token"
        assert "INFLUXDB_TOKEN" not in grafana["environment"]

    def test_influxdb_and_grafana_start_through_the_secret_check(
        self, resolved: dict[str, Any]
    ) -> None:
        services = resolved["services"]
        expected = {
            "influxdb": (
                ["/entrypoint.sh"],
                {"DOCKER_INFLUXDB_INIT_PASSWORD", "DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"},
                {"DOCKER_INFLUXDB_INIT_USERNAME"},
            ),
            "grafana": (["/run.sh"], {"GF_SECURITY_ADMIN_PASSWORD"}, {"GF_SECURITY_ADMIN_USER"}),
        }
        for name, (image_entrypoint, secrets, users) in expected.items():
            service = services[name]
            assert service["entrypoint"] == [
                "/bin/sh",
                "/etc/runwatch/check-secrets.sh",
                *image_entrypoint,
            ]
            assert _mounts(service)["/etc/runwatch/check-secrets.sh"].endswith(
                "deploy/check-secrets.sh"
            )
            assert set(service["environment"]["RUNWATCH_SECRETS"].split()) == secrets
            assert set(service["environment"]["RUNWATCH_ADMIN_USERS"].split()) == users
        assert services["influxdb"]["command"] == ["influxd"]  # the image's CMD, kept

    def test_grafana_admin_user_has_no_default(self, project: Path) -> None:
        env = project / ".env"
        lines = env.read_text().splitlines()
        env.write_text("\n".join(x for x in lines if not x.startswith("GRAFANA_ADMIN_USER=")))
        result = compose(project, "config")
        assert result.returncode != 0 and "GRAFANA_ADMIN_USER" in result.stderr

    def test_trainer_exporter_is_what_prometheus_scrapes(self, resolved: dict[str, Any]) -> None:
        trainer = resolved["services"]["trainer"]["environment"]
        assert trainer["RUNWATCH_PROMETHEUS_ADDR"] == "0.0.0.0"
        scrape = load_yaml(REPO / "deploy/prometheus/prometheus.yml")["scrape_configs"]
        targets = {
            t for job in scrape for group in job.get("static_configs", []) for t in group["targets"]
        }
        assert f"trainer:{trainer['RUNWATCH_PROMETHEUS_PORT']}" in targets

    def test_bind_mounts_exist_in_the_repository(
        self, resolved: dict[str, Any], project: Path
    ) -> None:
        for name, service in resolved["services"].items():
            for volume in service.get("volumes", []):
                source = (
                    str(volume).split(":", 1)[0] if isinstance(volume, str) else volume["source"]
                )
                if not source.startswith("/"):
                    continue  # a named volume
                relative = Path(source).relative_to(project)
                assert (REPO / relative).exists(), f"{name} mounts missing {relative}"

    def test_every_secret_is_required(self, project: Path) -> None:
        """Without .env nothing starts: the secrets have no defaults in docker-compose.yml."""
        (project / ".env").unlink()
        result = compose(project, "config")
        assert result.returncode != 0
        assert any(secret in result.stderr for secret in SECRETS), result.stderr


class TestEnvExample:
    def test_documents_every_variable_compose_reads(self) -> None:
        used = set(_COMPOSE_VARIABLE.findall(COMPOSE_FILE.read_text()))
        assert used, "no variable found in docker-compose.yml"
        assert used <= set(env_example()), f"not in .env.example: {used - set(env_example())}"

    def test_secrets_are_required_in_compose(self) -> None:
        text = COMPOSE_FILE.read_text()
        for secret in SECRETS:
            assert re.search(rf"\$\{{{secret}:\?", text), f"{secret} must have no default"

    def test_every_variable_has_a_comment(self) -> None:
        lines = ENV_EXAMPLE.read_text().splitlines()
        for index, line in enumerate(lines):
            if line and not line.startswith("#"):
                block_start = index
                while (
                    block_start > 0
                    and lines[block_start - 1]
                    and not lines[block_start - 1].startswith("#")
                ):
                    block_start -= 1
                assert block_start > 0 and lines[block_start - 1].startswith("#"), line

    def test_placeholders_are_marked_for_change(self) -> None:
        example = env_example()
        for secret in SECRETS - WEBHOOK_URLS:
            assert example[secret].startswith("change-me"), secret
        assert example["GRAFANA_ADMIN_PASSWORD"] != "admin"


class TestTrainerImage:
    def test_dockerfile_installs_cpu_torch_before_runwatch(self) -> None:
        text = (REPO / "deploy/Dockerfile").read_text()
        torch = text.index("pip install torch==")
        assert "--index-url https://download.pytorch.org/whl/cpu" in text[torch:].splitlines()[0]
        assert torch < text.index('pip install ".[lightning,flower]"')
        assert re.search(r"^FROM python:\d+\.\d+\.\d+-slim", text, re.MULTILINE)
        assert re.search(r"^USER (?!root)\w+", text, re.MULTILINE)

    def test_dockerfile_copies_only_what_exists(self) -> None:
        text = (REPO / "deploy/Dockerfile").read_text()
        for sources in re.findall(r"^COPY (.+) \S+$", text, re.MULTILINE):
            for source in sources.split():
                assert (REPO / source).exists(), source

    def test_build_context_never_sends_env_or_venv(self) -> None:
        lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
        rules = [line for line in lines if line and not line.startswith("#")]
        assert rules[0] == "*"
        assert not any(
            rule.startswith("!") and (".env" in rule or ".venv" in rule) for rule in rules
        )


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of a resolved service's volumes."""
    found: dict[str, str] = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            found[volume["target"]] = str(volume["source"])
        else:
            source, target = str(volume).split(":")[:2]
            found[target] = source
    return found


def _read_only(service: dict[str, Any], target: str) -> bool:
    for volume in service.get("volumes", []):
        if isinstance(volume, dict) and volume["target"] == target:
            return bool(volume.get("read_only"))
        if isinstance(volume, str) and volume.split(":")[1] == target:
            return volume.endswith(":ro")
    raise AssertionError(f"{target} is not mounted")
