"""Fixtures of the SQL layer's tests: the session's PostgreSQL server (tests/db/pgserver.py) and a small store."""

from __future__ import annotations

from pathlib import Path

import pytest

from backtest.ingest import ingest_folder
from backtest.store import Store
from backtest.synthetic import generate_universe
from tests.db.pgserver import PgServer, pg_server, pg_url

__all__ = ["PgServer", "db_csv", "db_store", "pg_server", "pg_url"]


@pytest.fixture(scope="session")
def db_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 synthetic symbols x 7 years (read-only for tests)."""
    folder = tmp_path_factory.mktemp("db-synthetic")
    generate_universe(folder, 10, 7, seed=11, workers=1)
    return folder


@pytest.fixture(scope="session")
def db_store(db_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Store:
    """The synthetic universe in a Parquet store (read-only for tests)."""
    store = Store(tmp_path_factory.mktemp("db-store") / "store")
    ingest_folder(db_csv, store, workers=1, durable=False)
    return store


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each backend: the same tests run on SQLite and on the real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    return str(request.getfixturevalue("pg_url"))
