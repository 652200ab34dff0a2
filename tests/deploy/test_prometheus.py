"""Prometheus configuration and alert rules: promtool's own checks and unit tests, and the
metric names the rules use against what runwatch's exporter really serves."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from collector.config import DEFAULT_PROMETHEUS_PORT
from collector.prometheus import PrometheusExporter
from tests.deploy._deploy import (
    PROMETHEUS_CONFIG,
    PROMETHEUS_DIR,
    PROMETHEUS_OWN_SERIES,
    RULE_FILES,
    RULE_TESTS,
    RULES_DIR,
    alert_rules,
    exposed_series_names,
    load_yaml,
    metric_names_in,
)
from tests.servers._process import require_binary

REQUIRED_ALERTS = {
    "TrainingStalled",
    "TrainingLossNaN",
    "GradientExplosion",
    "TrainerDown",
    "FederatedRoundStalled",
}


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    binary = require_binary("promtool")
    return subprocess.run(
        [binary, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def exporter_series() -> set[str]:
    exporter = PrometheusExporter("run-1", experiment="exp", mode="federated")
    return exposed_series_names(exporter.render().decode())


class TestPromtool:
    @pytest.mark.integration
    def test_check_config_accepts_prometheus_yml_and_its_rules(self) -> None:
        result = promtool("check", "config", PROMETHEUS_CONFIG.name, cwd=PROMETHEUS_DIR)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"{len(RULE_FILES)} rule files found" in result.stdout + result.stderr

    @pytest.mark.integration
    def test_check_rules(self) -> None:
        result = promtool("check", "rules", *[p.name for p in RULE_FILES], cwd=RULES_DIR)
        assert result.returncode == 0, result.stdout + result.stderr

    @pytest.mark.integration
    @pytest.mark.parametrize("test_file", RULE_TESTS, ids=lambda p: p.name)
    def test_rule_unit_tests_pass(self, test_file: Path) -> None:
        result = promtool("test", "rules", test_file.name, cwd=RULES_DIR)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout

    @pytest.mark.integration
    def test_promtool_fails_a_rule_that_misbehaves(self, tmp_path: Path) -> None:
        """The unit tests can fail: the stall threshold moved to 10 minutes breaks them."""
        for path in [*RULE_FILES, *RULE_TESTS]:
            (tmp_path / path.name).write_text(path.read_text())
        rules = tmp_path / "training.rules.yml"
        text = rules.read_text()
        assert "training_last_step_timestamp_seconds > 300" in text
        rules.write_text(
            text.replace(
                "training_last_step_timestamp_seconds > 300",
                "training_last_step_timestamp_seconds > 600",
            )
        )
        result = promtool("test", "rules", "training_test.yml", cwd=tmp_path)
        assert result.returncode != 0
        assert "TrainingStalled" in result.stdout + result.stderr


class TestRulesMatchTheExporter:
    def test_the_required_alerts_exist(self) -> None:
        assert {rule["alert"] for rule in alert_rules() if "alert" in rule} >= REQUIRED_ALERTS

    def test_every_metric_in_the_rules_is_exported(self, exporter_series: set[str]) -> None:
        for rule in alert_rules():
            used = metric_names_in(rule["expr"])
            assert used, f"{rule['alert']} uses no runwatch metric"
            assert used <= exporter_series, (
                f"{rule['alert']}: not exported: {used - exporter_series}"
            )

    def test_rule_unit_tests_feed_only_exported_series(self, exporter_series: set[str]) -> None:
        known = exporter_series | PROMETHEUS_OWN_SERIES
        for test_file in RULE_TESTS:
            for case in load_yaml(test_file)["tests"]:
                for series in case["input_series"]:
                    name = series["series"].split("{", 1)[0]
                    assert name in known, f"{test_file.name}: {name} is not an exported series"

    def test_every_alert_has_a_unit_test(self) -> None:
        tested = {
            check["alertname"]
            for test_file in RULE_TESTS
            for case in load_yaml(test_file)["tests"]
            for check in case.get("alert_rule_test", [])
            if check["exp_alerts"]
        }
        assert {rule["alert"] for rule in alert_rules() if "alert" in rule} <= tested

    def test_alerts_carry_severity_and_text(self) -> None:
        for rule in alert_rules():
            assert rule["labels"]["severity"] in {"critical", "warning"}
            assert {"summary", "description"} <= set(rule["annotations"])
            assert "{{ $labels.run_id }}" in rule["annotations"]["summary"]

    def test_jobs_named_in_rules_are_scraped(self) -> None:
        jobs = {job["job_name"] for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]}
        for rule in alert_rules():
            for job in re.findall(r'job="([^"]+)"', rule["expr"]):
                assert job in jobs, f"{rule['alert']} selects job {job!r}, which is not scraped"


class TestScrapeConfig:
    def test_runwatch_job_scrapes_the_exporter_default_port(self) -> None:
        [job] = [
            j for j in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"] if j["job_name"] == "runwatch"
        ]
        targets = [t for group in job["static_configs"] for t in group["targets"]]
        assert "trainer:9464" in targets  # the compose service
        assert all(t.endswith(f":{DEFAULT_PROMETHEUS_PORT}") for t in targets)

    def test_file_discovery_targets_are_valid_target_groups(self) -> None:
        [job] = [
            j for j in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"] if j["job_name"] == "runwatch"
        ]
        patterns = [f for sd in job["file_sd_configs"] for f in sd["files"]]
        files = [p for pattern in patterns for p in PROMETHEUS_DIR.glob(pattern)]
        assert files, f"no file matches {patterns}"
        for path in files:
            groups = load_yaml(path)
            assert isinstance(groups, list), path
            for group in groups:
                assert set(group) <= {"targets", "labels"}
                assert all(re.fullmatch(r"[\w.-]+:\d+", t) for t in group["targets"])

    def test_rule_files_pattern_excludes_the_unit_tests(self) -> None:
        patterns = load_yaml(PROMETHEUS_CONFIG)["rule_files"]
        matched = {p for pattern in patterns for p in PROMETHEUS_DIR.glob(pattern)}
        assert matched == set(RULE_FILES)
        assert not matched & set(RULE_TESTS)

    def test_alerts_go_to_the_compose_alertmanager(self) -> None:
        alerting = load_yaml(PROMETHEUS_CONFIG)["alerting"]["alertmanagers"]
        targets = [t for am in alerting for group in am["static_configs"] for t in group["targets"]]
        assert targets == ["alertmanager:9093"]
