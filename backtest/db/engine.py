"""Engines for the SQL layer: URL checks, one engine per process and URL, SQLite settings, query timing.

Why it is shaped like this:
- A URL is checked before anything connects (only SQLite files and PostgreSQL through psycopg 3 are
  supported), and every driver error reaching a caller becomes one ``DatabaseError`` line that names the
  database (password hidden) and the cause, so the CLI can print it without a traceback.
- Engines are cached per process *and* URL: a pool must never be shared across ``fork`` (two processes
  writing on one socket), and creating an engine per query would throw the pool away.
- SQLite runs in WAL mode with a busy timeout, ``synchronous=NORMAL`` and foreign keys on. pysqlite's own
  transaction handling is switched off and transactions are begun explicitly: readers ``BEGIN`` (deferred,
  they never block in WAL), writers ``BEGIN IMMEDIATE``, which takes the write lock up front and so waits in
  the busy handler instead of failing with "database is locked" when a read transaction would have to be
  upgraded after another writer committed.
- Every statement a process sends is timed (cursor events) into one ``QueryLog`` per process, keyed by the
  statement with its IN-lists folded, so a run can report its slowest queries.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from backtest.db.adbc import use_arrow_sqlite
from backtest.errors import BacktestError

__all__ = [
    "DatabaseError",
    "QueryLog",
    "QueryStat",
    "db_errors",
    "describe_url",
    "dispose_engines",
    "get_engine",
    "is_postgres",
    "is_sqlite",
    "parse_url",
    "query_log",
    "read_txn",
    "sqlite_path",
    "write_txn",
]

#: milliseconds a SQLite connection waits for a lock before giving up
SQLITE_BUSY_TIMEOUT_MS = 60_000
_DRIVERS = {
    "sqlite": "sqlite+pysqlite",
    "sqlite+pysqlite": "sqlite+pysqlite",
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
}
_URL_HELP = "expected sqlite:///path/to/file.db or postgresql+psycopg://user:password@host:port/dbname"


class DatabaseError(BacktestError):
    """The database cannot be used as asked: bad URL, unreachable server, refused login, wrong schema."""


def parse_url(url: str | URL) -> URL:
    """A checked URL with its driver made explicit (``postgresql://`` means psycopg 3, not psycopg2)."""
    try:
        parsed = sa.make_url(url) if isinstance(url, str) else url
    except (ArgumentError, ValueError) as exc:
        raise DatabaseError(f"malformed database URL {str(url)!r} ({exc}); {_URL_HELP}") from None
    driver = _DRIVERS.get(parsed.drivername)
    if driver is None:
        raise DatabaseError(
            f"unsupported database {parsed.drivername!r} in {describe_url(parsed)}; {_URL_HELP}"
        )
    parsed = parsed.set(drivername=driver)
    if driver.startswith("sqlite"):
        if not parsed.database or parsed.database == ":memory:" or parsed.database.startswith("file:"):
            raise DatabaseError(
                f"SQLite URL {str(url)!r} names no file (an in-memory database is not shared between "
                f"connections); {_URL_HELP}"
            )
    elif not parsed.database:
        raise DatabaseError(f"PostgreSQL URL {describe_url(parsed)} names no database; {_URL_HELP}")
    return parsed


def describe_url(url: str | URL) -> str:
    """The URL with its password hidden: safe for messages and logs."""
    try:
        parsed = sa.make_url(url) if isinstance(url, str) else url
    except (ArgumentError, ValueError):
        return repr(str(url))
    return parsed.render_as_string(hide_password=True)


def is_sqlite(engine_or_conn: Engine | Connection) -> bool:
    return engine_or_conn.dialect.name == "sqlite"


def is_postgres(engine_or_conn: Engine | Connection) -> bool:
    return engine_or_conn.dialect.name == "postgresql"


def sqlite_path(url: str | URL) -> Path | None:
    """The file of a SQLite URL, None for PostgreSQL."""
    parsed = parse_url(url)
    return Path(parsed.database) if parsed.drivername.startswith("sqlite") else None


# -- query timing ------------------------------------------------------------------------------------------

_PARAM = r"(?:\?|%\([^)]*\)s|\$\d+)"
_IN_LIST = re.compile(rf"\bIN \(\s*{_PARAM}(?:\s*,\s*{_PARAM})*\s*\)", re.IGNORECASE)
_SPACE = re.compile(r"\s+")


def normalise_statement(statement: str) -> str:
    """One key for all executions of a statement: whitespace collapsed, IN-lists of any length folded."""
    return _IN_LIST.sub("IN (...)", _SPACE.sub(" ", statement).strip())[:300]


@dataclass(frozen=True)
class QueryStat:
    """How often one statement ran in this process and how long it took."""

    statement: str
    calls: int
    total_s: float
    max_s: float

    @property
    def mean_s(self) -> float:
        return self.total_s / self.calls if self.calls else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "statement": self.statement,
            "calls": self.calls,
            "total_s": round(self.total_s, 6),
            "mean_s": round(self.mean_s, 6),
            "max_s": round(self.max_s, 6),
        }


class QueryLog:
    """Timings of every statement sent by this process (thread-safe; engines feed it from cursor events)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats: dict[str, list[float]] = {}

    def record(self, statement: str, seconds: float) -> None:
        key = normalise_statement(statement)
        with self._lock:
            entry = self._stats.get(key)
            if entry is None:
                self._stats[key] = [1, seconds, seconds]
            else:
                entry[0] += 1
                entry[1] += seconds
                entry[2] = max(entry[2], seconds)

    @contextlib.contextmanager
    def timed(self, statement: str) -> Iterator[None]:
        """Time work done outside SQLAlchemy's cursor (COPY, raw executemany) under ``statement``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.record(statement, time.perf_counter() - t0)

    def snapshot(self) -> dict[str, QueryStat]:
        with self._lock:
            return {k: QueryStat(k, int(v[0]), v[1], v[2]) for k, v in self._stats.items()}

    def since(self, before: dict[str, QueryStat]) -> list[QueryStat]:
        """What ran after ``before`` was taken (max_s is the maximum over the whole process life)."""
        out = []
        for key, now in self.snapshot().items():
            old = before.get(key)
            calls = now.calls - (old.calls if old else 0)
            if calls > 0:
                out.append(QueryStat(key, calls, now.total_s - (old.total_s if old else 0.0), now.max_s))
        return out

    def slowest(self, n: int = 10, stats: list[QueryStat] | None = None) -> list[QueryStat]:
        rows = list(self.snapshot().values()) if stats is None else stats
        return sorted(rows, key=lambda s: s.total_s, reverse=True)[:n]

    def clear(self) -> None:
        with self._lock:
            self._stats.clear()


_QUERY_LOG = QueryLog()


def query_log() -> QueryLog:
    """This process's query timings."""
    return _QUERY_LOG


# -- engines -----------------------------------------------------------------------------------------------

_ENGINES: dict[tuple[int, str], Engine] = {}
_ENGINES_LOCK = threading.Lock()


def _sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # We begin transactions ourselves (see the "begin" listener): pysqlite's implicit BEGIN is deferred and
    # skips DDL, neither of which suits a database with concurrent writers.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        _switch_to_wal(cursor)
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _switch_to_wal(cursor: Any) -> None:
    """``PRAGMA journal_mode = WAL``, waiting out a concurrent switch instead of failing.

    On a new file the switch writes the header from inside a read transaction, and SQLite never runs the busy
    handler for such an upgrade (it could deadlock): two processes creating one database at once (two
    studies started together on a new store) saw one of them fail at once with "database is locked" now
    and then. Once one switch has committed, the retry finds the file in WAL mode already.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.002
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _sqlite_begin(conn: Connection) -> None:
    options = conn.get_execution_options()
    if options.get("isolation_level") == "AUTOCOMMIT":
        return  # VACUUM, ANALYZE, PRAGMA optimize: each statement is its own transaction
    conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get("backtest_write", False) else "BEGIN")


def _before_execute(conn: Connection, cursor: Any, statement: str, *args: Any) -> None:
    conn.info.setdefault("backtest_query_start", []).append(time.perf_counter())


def _after_execute(conn: Connection, cursor: Any, statement: str, *args: Any) -> None:
    starts = conn.info.get("backtest_query_start")
    if starts:
        _QUERY_LOG.record(statement, time.perf_counter() - starts.pop())


_FILE_LOCKS: dict[str, threading.RLock] = {}
_FILE_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def one_sqlite_library(database: str | None) -> Iterator[None]:
    """While one SQLite library in this process uses the database file ``database``, the other waits.

    Arrow's ADBC SQLite driver (the fast price reads, ``sqlio.sqlite_arrow``) bundles its own copy of SQLite
    beside Python's ``sqlite3``. The two copies' POSIX locks on one file do not see each other (such locks
    belong to the process), so a connection opened by one copy can take itself for the first and reset the
    shared-memory WAL index that the other copy has mapped: the process dies of SIGBUS (it happened in
    ``tests/db/test_concurrency.py``, readers and writers in threads), or one closes the WAL file under the
    other ("disk I/O error"). So the two never have one file open at once in this process: every connection
    (``connection``, under every transaction) and every ADBC read of one SQLite file holds this process's lock
    for that file while it is open, and the engine keeps no idle connection (``NullPool``). Other processes are ordered by SQLite's own locks as ever. Without ADBC
    there is one copy, and no lock is taken.
    """
    if not database or database == ":memory:" or not use_arrow_sqlite():
        yield
        return
    key = os.path.realpath(database)
    with _FILE_LOCKS_GUARD:
        lock = _FILE_LOCKS.setdefault(key, threading.RLock())
    with lock:
        yield


def _create_engine(url: URL) -> Engine:
    if url.drivername.startswith("sqlite"):
        folder = Path(url.database or ".").parent
        if not folder.is_dir():
            raise DatabaseError(f"cannot open {describe_url(url)}: folder {folder} does not exist")
        if use_arrow_sqlite():
            # no idle connection may keep the file open while the other SQLite library opens it (see
            # one_sqlite_library): each transaction connects and closes (a whole read transaction so: still
            # cheap)
            engine = sa.create_engine(url, poolclass=NullPool)
        else:
            engine = sa.create_engine(url, pool_size=8, max_overflow=16, pool_timeout=120)
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
    else:
        engine = sa.create_engine(
            url,
            pool_size=4,
            max_overflow=8,
            pool_pre_ping=True,
            connect_args={"connect_timeout": 10, "application_name": "backtest"},
        )
    event.listen(engine, "before_cursor_execute", _before_execute)
    event.listen(engine, "after_cursor_execute", _after_execute)
    return engine


def get_engine(url: str | URL) -> Engine:
    """The process's engine for ``url`` (created on first use; a forked child gets its own)."""
    parsed = parse_url(url)
    key = (os.getpid(), parsed.render_as_string(hide_password=False))
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            try:
                engine = _create_engine(parsed)
            except NoSuchModuleError as exc:
                raise DatabaseError(f"no driver for {describe_url(parsed)}: {exc}") from None
            except ModuleNotFoundError as exc:
                raise DatabaseError(
                    f"the driver for {describe_url(parsed)} is not installed ({exc.name}); "
                    "install the postgres extra: pip install 'prefect-walkforward-backtest[postgres]'"
                ) from None
            _ENGINES[key] = engine
    return engine


def dispose_engines() -> None:
    """Close the pools of this process's engines (tests and servers that are shutting down)."""
    with _ENGINES_LOCK:
        mine = [k for k in _ENGINES if k[0] == os.getpid()]
        for key in mine:
            _ENGINES.pop(key).dispose()


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(orig).__name__


@contextlib.contextmanager
def db_errors(url: str | URL, doing: str = "use") -> Iterator[None]:
    """Turn driver errors into one ``DatabaseError`` line naming the database and the cause."""
    try:
        yield
    except DatabaseError:
        raise
    except DBAPIError as exc:
        what = "connect to" if exc.connection_invalidated or _is_connect_error(exc) else doing
        raise DatabaseError(f"cannot {what} {describe_url(url)}: {_first_line(exc)}") from exc
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot {doing} {describe_url(url)}: {_first_line(exc)}") from exc


def _is_connect_error(exc: DBAPIError) -> bool:
    text = str(exc.orig).lower()
    return any(
        s in text
        for s in ("connection refused", "could not connect", "connection failed", "authentication failed")
    )


@contextlib.contextmanager
def connection(engine: Engine, **options: Any) -> Iterator[Connection]:
    """A connection of ``engine`` (with execution ``options``), the only way this package opens one: on a
    SQLite file it is held under ``one_sqlite_library``'s lock for as long as it is open."""
    database = engine.url.database if is_sqlite(engine) else None
    with one_sqlite_library(database), engine.connect() as conn:
        yield conn.execution_options(**options) if options else conn


@contextlib.contextmanager
def write_txn(engine: Engine) -> Iterator[Connection]:
    """One write transaction (``BEGIN IMMEDIATE`` on SQLite): committed on success, rolled back on error."""
    with connection(engine, backtest_write=True) as conn, conn.begin():
        yield conn


@contextlib.contextmanager
def read_txn(engine: Engine) -> Iterator[Connection]:
    """One read transaction: every query in it sees the same snapshot (WAL on SQLite, MVCC on PostgreSQL)."""
    with connection(engine) as conn, conn.begin():
        yield conn
