"""The tests' PostgreSQL fixtures: one real server per session (backtest.db.pgtemp), one new database per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from backtest.db.pgtemp import PgServer, PgUnavailable, temporary_postgres

__all__ = ["PgServer", "pg_server", "pg_url"]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    try:
        with temporary_postgres() as server:
            yield server
    except PgUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A new, empty database on the session's server."""
    return pg_server.create_database()
