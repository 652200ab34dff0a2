"""Fixture for the Flux checker: Node running InfluxData's Flux language server.

Register as a pytest plugin (``tests.servers.flux`` in conftest's ``pytest_plugins``).
Missing Node or a missing ``npm ci`` in tests/flux: skip locally, fail under CI=true.
"""

from __future__ import annotations

import pytest

from tests.flux.checker import FluxChecker, checker_unavailable_reason
from tests.servers._process import require_binary, under_ci


@pytest.fixture(scope="session")
def flux_checker() -> FluxChecker:
    require_binary("node")
    reason = checker_unavailable_reason()
    if reason is not None:
        if under_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return FluxChecker()
