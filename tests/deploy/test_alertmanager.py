"""Alertmanager: the configuration template, rendered by the container's entrypoint with the
webhook URL from the environment, passes `amtool check-config`; bad URLs are refused."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy._deploy import ALERTMANAGER_ENTRYPOINT, ALERTMANAGER_TEMPLATE, load_yaml
from tests.servers._process import require_binary

URL = "https://hooks.example.com:8443/alerts?team=ml&token=a%27b\\c"


def render(
    tmp_path: Path, url: str | None, *command: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run the entrypoint as the container does, with `command` instead of Alertmanager."""
    config = tmp_path / "alertmanager.yml"
    env = {k: v for k, v in os.environ.items() if k != "ALERTMANAGER_WEBHOOK_URL"}
    env |= {"ALERTMANAGER_TEMPLATE": str(ALERTMANAGER_TEMPLATE), "ALERTMANAGER_CONFIG": str(config)}
    if url is not None:
        env["ALERTMANAGER_WEBHOOK_URL"] = url
    result = subprocess.run(
        ["/bin/sh", str(ALERTMANAGER_ENTRYPOINT), *(command or ("true",))],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result, config


def webhook_urls(config: Path) -> list[str]:
    return [
        hook["url"]
        for receiver in load_yaml(config)["receivers"]
        for hook in receiver.get("webhook_configs", [])
    ]


def test_entrypoint_puts_the_url_in_every_webhook_verbatim(tmp_path: Path) -> None:
    result, config = render(tmp_path, URL)
    assert result.returncode == 0, result.stderr
    assert webhook_urls(config) == [URL]
    assert "${" not in config.read_text()


@pytest.mark.integration
def test_rendered_config_passes_amtool_check_config(tmp_path: Path) -> None:
    amtool = require_binary("amtool")
    result, config = render(
        tmp_path, URL, amtool, "check-config", str(tmp_path / "alertmanager.yml")
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert config.exists()


@pytest.mark.integration
def test_amtool_rejects_the_unrendered_template(tmp_path: Path) -> None:
    """The placeholder is not a URL: the template cannot be used by mistake without rendering."""
    amtool = require_binary("amtool")
    template = tmp_path / "template.yml"
    shutil.copy(ALERTMANAGER_TEMPLATE, template)
    result = subprocess.run(
        [amtool, "check-config", str(template)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        (None, "is not set"),
        ("", "is not set"),
        ("hooks.example.com/alerts", "must start with http"),
        ("https://hooks.example.com/a'b", "quote, space or newline"),
        ("https://hooks.example.com/a b", "quote, space or newline"),
        ("https://hooks.example.com/a\nroute: {}", "quote, space or newline"),
    ],
)
def test_entrypoint_refuses_a_missing_or_unsafe_url(
    tmp_path: Path, url: str | None, complaint: str
) -> None:
    result, config = render(tmp_path, url)
    assert result.returncode == 1
    assert complaint in result.stderr
    assert not config.exists()
    if url:
        assert url not in result.stderr  # may hold a token


def test_critical_alerts_skip_the_group_wait() -> None:
    route = load_yaml(ALERTMANAGER_TEMPLATE)["route"]
    [critical] = [r for r in route["routes"] if 'severity="critical"' in r["matchers"]]
    assert critical["group_wait"] == "0s"
    assert "run_id" in route["group_by"]
