"""One Prefect test server for every flow test of the run (starting one is slow)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def prefect_server(prefect_test_server):
    """The session's test server (tests/conftest.py), shared with the benchmark test."""
    yield
