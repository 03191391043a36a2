"""Opening a database for use: URL and file checks, schema version check, upgrade when asked."""

from __future__ import annotations

import threading

from sqlalchemy.engine import Engine

from backtest.db.engine import (
    DatabaseError,
    connection,
    db_errors,
    describe_url,
    get_engine,
    parse_url,
    sqlite_path,
)
from backtest.db.migrations import LATEST, check_version, upgrade

__all__ = ["open_db"]

_CHECKED: set[str] = set()
_CHECKED_LOCK = threading.Lock()


def open_db(url: str, *, create: bool = False, migrate: bool = False) -> Engine:
    """The engine for ``url`` once the database is known to be usable at the latest schema version.

    ``create`` allows a missing SQLite file to be created (commands that write: ingest, run, upgrade);
    ``migrate`` upgrades an older schema in place. A newer schema is always refused. Nothing is written
    before these checks pass. The check runs once per process and URL (chunk loads call this each time).
    """
    parsed = parse_url(url)
    key = parsed.render_as_string(hide_password=False)
    engine = get_engine(parsed)
    with _CHECKED_LOCK:
        if key in _CHECKED:
            return engine
    path = sqlite_path(parsed)
    if path is not None and not path.exists() and not create:
        raise DatabaseError(
            f"no database at {path}: create it with `backtest db upgrade --db {describe_url(parsed)}` "
            "or fill it with `backtest ingest SOURCE --store DIR --db URL`"
        )
    with db_errors(parsed, "open"), connection(engine) as conn:
        version = check_version(conn, url, require_latest=False)
    if version < LATEST:
        if not migrate and version > 0:
            check_version_error = (
                f"{describe_url(parsed)} has schema version {version}, this program needs {LATEST}: "
                f"run `backtest db upgrade --db {describe_url(parsed)}`"
            )
            raise DatabaseError(check_version_error)
        if not migrate and not create:
            raise DatabaseError(
                f"{describe_url(parsed)} is empty: create its tables with "
                f"`backtest db upgrade --db {describe_url(parsed)}`"
            )
        upgrade(engine, url)
    with _CHECKED_LOCK:
        _CHECKED.add(key)
    return engine


def forget_checks() -> None:
    """Forget which databases were checked (tests that swap a database file under the same URL)."""
    with _CHECKED_LOCK:
        _CHECKED.clear()
