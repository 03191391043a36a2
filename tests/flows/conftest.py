"""One Prefect test server for every flow test of the run (starting one costs about ten seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from backtest.ingest import ingest_folder
from backtest.store import Store
from backtest.synthetic import generate_universe


@pytest.fixture(scope="session", autouse=True)
def prefect_server(prefect_test_server):
    """The session's test server (tests/conftest.py), shared with the benchmark test."""
    yield


@pytest.fixture(scope="session")
def synthetic_csv(tmp_path_factory) -> Path:
    """24 synthetic symbols x 7 years, generated once for the session (read-only for tests)."""
    folder = tmp_path_factory.mktemp("synthetic")
    generate_universe(folder, 24, 7, seed=7, workers=1)
    return folder


@pytest.fixture
def store(synthetic_csv, tmp_path) -> Store:
    """A fresh store (and so a cold cache) per test."""
    s = Store(tmp_path / "store")
    ingest_folder(synthetic_csv, s, workers=1, durable=False)
    return s
