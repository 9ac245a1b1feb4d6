"""The real-Home-Assistant tests run only when asked for (``make test-ha``).

Without ``EDGE_AGENT_TEST_HA=1`` every test here is reported as skipped with the reason,
so ``make test`` neither runs them nor counts them as passed. With it, a missing Home
Assistant venv is an error, never a skip: ``make test-ha`` cannot pass without running.
"""

from __future__ import annotations

import os

import pytest

from tests.ha.core import available

REQUESTED = os.environ.get("EDGE_AGENT_TEST_HA") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="needs a real Home Assistant: run `make test-ha`")
    for item in items:
        if item.get_closest_marker("ha") is not None and not REQUESTED:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ha_venv() -> None:
    problem = available()
    if problem is not None:
        pytest.fail(problem)
