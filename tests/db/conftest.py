"""Fixtures of the SQL layer's tests: the session's PostgreSQL server (tests/db/pgserver.py) and a small store."""

from __future__ import annotations

from pathlib import Path

import pytest

from backtest.config import FoldSpec, ParamGrid, StudyConfig
from backtest.data.ingest import ingest_folder
from backtest.data.store import Store
from backtest.data.synthetic import generate_universe
from backtest.db import results as r
from backtest.engine.planning import make_plan, resolve_universe
from backtest.engine.study import run_chunk
from backtest.results.chunkio import chunk_to_bytes
from tests.db.pgserver import PgServer, pg_server, pg_url

__all__ = ["PgServer", "chunk_results", "db_csv", "db_store", "db_url", "pg_server", "pg_url"]


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


CHUNK_CONFIG = StudyConfig(
    strategy="sma_crossover",
    grid=ParamGrid.from_mapping({"fast": [5, 10], "slow": [40, 60]}),
    folds=FoldSpec(3.0, 1.0, 1.0, False),
)


@pytest.fixture(scope="session")
def chunk_plan(db_store):
    """The plan of ``chunk_results``."""
    return make_plan(CHUNK_CONFIG, resolve_universe(db_store.catalog()))


@pytest.fixture(scope="session")
def chunk_results(db_store, chunk_plan, tmp_path_factory):
    """Two chunks of the small universe computed for real, persisted as the flow persists them."""
    universe = resolve_universe(db_store.catalog())
    plan = chunk_plan
    folder = tmp_path_factory.mktemp("chunk-results")
    out = []
    for i, symbols in enumerate((universe.symbols[:5], universe.symbols[5:])):
        result = run_chunk(db_store.load(symbols, end=plan.last_date), plan)
        path = folder / f"chunk-{i}"
        path.write_bytes(chunk_to_bytes(result))
        out.append((r.ChunkRecord(i, f"key-{i}", tuple(symbols), "Completed", None, str(path)), result))
    return out
