"""The collector core imports neither torch, lightning nor flwr (nor the trainer package)."""

from __future__ import annotations

import json
import subprocess
import sys

CORE_MODULES = (
    "collector",
    "collector.config",
    "collector.ids",
    "collector.errors",
    "collector.schema",
    "collector.points",
    "collector.spool",
    "collector.shipper",
    "collector.recorder",
    "collector.run",
    "collector.prometheus",
    "collector.store",
    "collector.cli",
)
FORBIDDEN = ("torch", "lightning", "pytorch_lightning", "flwr", "trainer")


def test_core_modules_import_no_framework() -> None:
    script = (
        "import importlib, json, sys\n"
        f"for name in {CORE_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        f"found = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(json.dumps(found))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == [], f"collector core pulled in {loaded}"


def test_the_check_would_see_a_framework_import() -> None:
    """The subprocess check is not vacuous: importing the adapter does load lightning."""
    script = (
        "import sys, collector.lightning\n"
        "print('lightning' in sys.modules and 'torch' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "True"
