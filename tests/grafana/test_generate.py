"""The committed dashboards and alerting files are exactly what grafana/ generates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from grafana import generate
from tests.grafana._grafana import ALERTING_DIR, DASHBOARDS_DIR

EXPECTED_DASHBOARDS = {
    "training-overview",
    "batches-gradients",
    "federated",
    "run-comparison",
    "live",
}
EXPECTED_ALERTING = {"rules", "contact-points", "policies"}


def test_committed_files_match_the_generator() -> None:
    outdated = generate.differences()
    assert outdated == [], f"run `make dashboards` and commit: {outdated}"


def test_generation_is_deterministic() -> None:
    assert generate.generated_files() == generate.generated_files()


def test_generates_the_five_dashboards_and_the_alerting_files() -> None:
    names = {path.stem for path in generate.generated_files()}
    assert names == EXPECTED_DASHBOARDS | EXPECTED_ALERTING
    assert {p.stem for p in DASHBOARDS_DIR.glob("*.json")} == EXPECTED_DASHBOARDS
    assert {p.stem for p in ALERTING_DIR.glob("*.yml")} == EXPECTED_ALERTING


def test_dashboard_json_is_canonical() -> None:
    for path in DASHBOARDS_DIR.glob("*.json"):
        text = path.read_text()
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n", path.name


@pytest.fixture
def copied_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """The committed output copied to tmp_path, with the generator pointed at the copy."""
    dashboards, alerting = tmp_path / "dashboards", tmp_path / "alerting"
    shutil.copytree(DASHBOARDS_DIR, dashboards)
    shutil.copytree(ALERTING_DIR, alerting)
    monkeypatch.setattr(generate, "DASHBOARDS_DIR", dashboards)
    monkeypatch.setattr(generate, "ALERTING_DIR", alerting)
    return dashboards, alerting


def test_check_reports_an_edited_a_missing_and_a_stale_file(
    copied_output: tuple[Path, Path],
) -> None:
    dashboards, alerting = copied_output
    assert generate.differences() == []
    edited = dashboards / "live.json"
    edited.write_text(edited.read_text().replace("runwatch / Live", "Live (edited)"))
    (alerting / "policies.yml").unlink()
    stale = dashboards / "old.json"
    stale.write_text("{}\n")
    assert generate.differences() == sorted([edited, alerting / "policies.yml", stale])
    assert generate.main(["--check"]) == 1


def test_write_restores_the_generated_files(copied_output: tuple[Path, Path]) -> None:
    dashboards, _ = copied_output
    (dashboards / "federated.json").write_text("{}\n")
    (dashboards / "old.json").write_text("{}\n")
    changed = generate.write()
    assert set(changed) == {dashboards / "federated.json", dashboards / "old.json"}
    assert generate.differences() == []
    assert generate.main(["--check"]) == 0
