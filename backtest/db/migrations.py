"""Versioned schema migrations: numbered steps, a ``schema_version`` table, upgrades in place.

An explicit scheme rather than Alembic's: the schema is small, the steps run from the library (``backtest db
upgrade``, or automatically when a command opens an older database) without an ``alembic.ini`` or a
migrations folder to ship, and each step is a few SQLAlchemy DDL constructs.

Rules:
- Each step runs in one transaction with its ``schema_version`` row (DDL is transactional on SQLite and
  PostgreSQL), so a failed upgrade leaves the database at the previous version.
- A database whose version is newer than ``LATEST`` was written by a newer program: it is refused, never
  "downgraded" or half-used.
- Steps never change once released; a schema change is a new step (when a later step alters a table that
  an earlier step creates from ``schema``, the earlier step must freeze its own copy of the table first).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.schema import CreateIndex, CreateTable

from backtest.db import schema as s
from backtest.db.engine import DatabaseError, db_errors, describe_url, write_txn
from backtest.engine.metrics import METRIC_NAMES

__all__ = ["LATEST", "MIGRATIONS", "Migration", "check_version", "current_version", "upgrade"]


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Connection], None]


def _create_tables(*tables: sa.Table) -> Callable[[Connection], None]:
    def apply(conn: Connection) -> None:
        for table in tables:
            conn.execute(CreateTable(table))

    return apply


#: the runs table as migration 1 created it (frozen: migration 3 adds columns to ``schema.runs``)
_runs_v1 = sa.Table(
    "runs",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("flow_run_id", sa.String(64), nullable=True, unique=True),
    sa.Column("strategy", sa.Text, nullable=False),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("wall_seconds", sa.Double, nullable=True),
    sa.Column("price_source", sa.Text, nullable=False, server_default=""),
    sa.Column("config", sa.JSON, nullable=False),
    sa.Column("summary", sa.JSON, nullable=True),
)


#: symbol_metrics as migration 1 created it (frozen: migration 4 adds psr and dsr to ``schema.symbol_metrics``)
_symbol_metrics_v1 = sa.Table(
    "symbol_metrics",
    _runs_v1.metadata,  # beside the runs table its foreign key names
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("symbol", sa.Text, primary_key=True),
    *(sa.Column(name, sa.Double) for name in METRIC_NAMES),
    sa.Column("folds", sa.Integer, nullable=False),
    sqlite_with_rowid=False,
)


def _v4(conn: Connection) -> None:
    for name in ("psr", "dsr"):
        kind = s.symbol_metrics.c[name].type.compile(dialect=conn.dialect)
        conn.execute(sa.text(f"ALTER TABLE symbol_metrics ADD COLUMN {name} {kind}"))
    conn.execute(CreateTable(s.run_overfitting))


def _v3(conn: Connection) -> None:
    for name in ("results_key", "results_of"):
        column = s.runs.c[name]
        kind = column.type.compile(dialect=conn.dialect)
        conn.execute(sa.text(f"ALTER TABLE runs ADD COLUMN {name} {kind}"))
    for index in s.RESULT_INDEXES:
        conn.execute(CreateIndex(index))


def _v2(conn: Connection) -> None:
    conn.execute(CreateTable(s.portfolio))
    for index in s.INDEXES:
        conn.execute(CreateIndex(index))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "prices, symbols, runs, chunks, selections, metrics, out-of-sample returns",
        _create_tables(
            s.symbols, s.prices, _runs_v1, s.chunks, s.selections, _symbol_metrics_v1, s.oos_returns
        ),
    ),
    Migration(2, "portfolio table; indexes for look-ups by symbol, strategy and run date", _v2),
    Migration(
        3, "runs.results_key and runs.results_of: a warm re-run points at identical earlier results", _v3
    ),
    Migration(4, "statistics of luck: run_overfitting, and psr and dsr per symbol in symbol_metrics", _v4),
    Migration(5, "holdings: the target weights of cross-sectional runs", _create_tables(s.holdings)),
)
LATEST = MIGRATIONS[-1].version
_OURS = frozenset(s.metadata.tables)


def current_version(conn: Connection) -> int:
    """The schema version of the database (0: empty); raises when it holds tables that are not ours."""
    names = set(sa.inspect(conn).get_table_names())
    if "schema_version" not in names:
        if names & _OURS:
            raise DatabaseError(
                "the database has backtest tables but no schema_version table; it was not created by "
                "`backtest db upgrade` and cannot be upgraded safely"
            )
        return 0
    found = conn.execute(sa.select(sa.func.max(s.schema_version.c.version))).scalar()
    return int(found or 0)


def check_version(conn: Connection, url: str, *, require_latest: bool = True) -> int:
    """The version, refusing a database newer than this program (and an older one if ``require_latest``)."""
    version = current_version(conn)
    if version > LATEST:
        raise DatabaseError(
            f"{describe_url(url)} has schema version {version}, newer than this program's {LATEST}: "
            "upgrade backtest to use it"
        )
    if require_latest and version < LATEST:
        raise DatabaseError(
            f"{describe_url(url)} has schema version {version}, this program needs {LATEST}: "
            f"run `backtest db upgrade --db {describe_url(url)}`"
        )
    return version


def upgrade(engine: Engine, url: str, target: int = LATEST) -> list[int]:
    """Apply the missing steps up to ``target``, one transaction each; returns the versions applied.

    The version check and each step happen under the write lock (``BEGIN IMMEDIATE`` on SQLite, a
    transaction-scoped advisory lock on PostgreSQL), so two processes opening a new database at once do not
    both create it.
    """
    if not 0 <= target <= LATEST:
        raise DatabaseError(f"unknown schema version {target}: this program knows 1..{LATEST}")
    applied: list[int] = []
    with db_errors(url, "upgrade"):
        while True:
            with write_txn(engine) as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(0x6261636B74657374)))
                version = check_version(conn, url, require_latest=False)
                if version >= target:
                    return applied
                step = MIGRATIONS[version]
                if version == 0:
                    conn.execute(CreateTable(s.schema_version))
                step.apply(conn)
                conn.execute(
                    sa.insert(s.schema_version).values(
                        version=step.version, description=step.description, applied_at=dt.datetime.now(dt.UTC)
                    )
                )
                applied.append(step.version)
