"""docs/recipes.md: every ```flux block is valid Flux as pasted (Explore and `influx query`
recipes declare their own variables; dashboard-panel recipes get Grafana's macros and
variables), one recipe per question, and only schema names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from collector import schema
from tests.flux.checker import GRAFANA_PRELUDE, FluxChecker, substitute_grafana_variables

RECIPES = Path(__file__).resolve().parents[2] / "docs" / "recipes.md"
FLUX_BLOCK = re.compile(r"^```flux\n(.*?)^```$", re.MULTILINE | re.DOTALL)
GRAFANA_SAMPLES = {"run_id": '["20240101T000000Z-aaaa", "20240101T000000Z-bbbb"]'}


def sections() -> dict[str, list[str]]:
    """Flux blocks under each ``## question`` heading."""
    found: dict[str, list[str]] = {}
    for part in re.split(r"^## ", RECIPES.read_text(encoding="utf-8"), flags=re.MULTILINE)[1:]:
        heading = part.splitlines()[0].strip()
        found[heading] = FLUX_BLOCK.findall(part)
    return found


def blocks() -> dict[str, str]:
    return {heading: flux[0] for heading, flux in sections().items() if flux}


def is_dashboard_panel(flux: str) -> bool:
    return "v." in flux or "${" in flux


def test_one_flux_recipe_per_question() -> None:
    found = sections()
    assert len(found) >= 10
    for heading, flux in found.items():
        assert len(flux) == 1, heading
    questions = " ".join(found).lower()
    for topic in ("best recall", "diverge", "drags the federated model down", "gradients"):
        assert topic in questions


@pytest.mark.integration
def test_paste_ready_recipes_are_valid_flux_without_any_prelude(
    flux_checker: FluxChecker,
) -> None:
    standalone = {h: f for h, f in blocks().items() if not is_dashboard_panel(f)}
    assert len(standalone) >= 10
    flux_checker.assert_valid(standalone)


@pytest.mark.integration
def test_dashboard_panel_recipes_are_valid_flux_with_grafana_macros(
    flux_checker: FluxChecker,
) -> None:
    panels = {
        h: substitute_grafana_variables(f, GRAFANA_SAMPLES)
        for h, f in blocks().items()
        if is_dashboard_panel(f)
    }
    assert panels
    flux_checker.assert_valid(panels, prelude=GRAFANA_PRELUDE)


@pytest.mark.integration
def test_the_checker_would_catch_a_broken_recipe(flux_checker: FluxChecker) -> None:
    heading, flux = next(iter(blocks().items()))
    broken = flux.replace("|> group(", "|> groop(", 1)
    assert broken != flux
    assert flux_checker.errors({heading: broken})


def test_recipes_name_only_schema_measurements_fields_tags_and_events() -> None:
    known_fields = {f for m in schema.MEASUREMENTS.values() for f in m.fields}
    known_tags = {*schema.BASE_TAGS, *schema.FEDERATED_TAGS} | {
        t for m in schema.MEASUREMENTS.values() for t in m.tags
    }
    for heading, flux in blocks().items():
        for measurement in re.findall(r'r\._measurement == "(\w+)"', flux):
            assert measurement in schema.MEASUREMENTS, heading
        for field in re.findall(r'r\._field == "(\w+)"', flux):
            assert field in known_fields, (heading, field)
        for tag in re.findall(r'\br\.(\w+) == "', flux):  # compared with text: a tag
            assert tag.startswith("_") or tag in known_tags, (heading, tag)
        for event in re.findall(r'r\.event == "(\w+)"', flux):
            assert event in schema.EVENT_NAMES, heading
