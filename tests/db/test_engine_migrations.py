"""Engines (URL checks, SQLite settings, query timing) and versioned migrations."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from backtest.db import schema as s
from backtest.db.connect import forget_checks, open_db
from backtest.db.engine import DatabaseError, get_engine, normalise_statement, parse_url, query_log
from backtest.db.migrations import LATEST, current_version, upgrade


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "malformed database URL"),
        ("mysql://u:p@h/db", "unsupported database 'mysql'"),
        ("sqlite://", "names no file"),
        ("sqlite:///:memory:", "names no file"),
        ("postgresql+psycopg://u:p@127.0.0.1:5432", "names no database"),
    ],
)
def test_bad_urls_are_refused_with_one_clear_line(url, message):
    with pytest.raises(DatabaseError, match=message) as info:
        parse_url(url)
    assert "\n" not in str(info.value)


def test_password_never_appears_in_messages():
    with pytest.raises(DatabaseError) as info:
        parse_url("oracle://scott:tiger@host/db")
    assert "tiger" not in str(info.value)


def test_postgresql_means_psycopg3():
    assert parse_url("postgresql://u:p@h/db").drivername == "postgresql+psycopg"


def test_sqlite_connections_use_wal_busy_timeout_normal_sync_and_foreign_keys(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    engine = get_engine(url)
    assert get_engine(url) is engine  # one engine per process and URL
    with engine.connect() as conn:
        pragma = {
            name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("journal_mode", "busy_timeout", "synchronous", "foreign_keys")
        }
    assert pragma == {"journal_mode": "wal", "busy_timeout": 60000, "synchronous": 1, "foreign_keys": 1}


def test_missing_sqlite_folder_is_one_line(tmp_path):
    with pytest.raises(DatabaseError, match="does not exist"):
        open_db(f"sqlite:///{tmp_path / 'nope' / 'a.db'}", create=True)


def test_reading_a_missing_sqlite_file_creates_nothing(tmp_path):
    path = tmp_path / "a.db"
    with pytest.raises(DatabaseError, match="no database at"):
        open_db(f"sqlite:///{path}")
    assert not path.exists()


def test_query_log_folds_in_lists_and_times_every_statement(tmp_path):
    assert normalise_statement("SELECT a FROM t WHERE a IN (?, ?,  ?)") == "SELECT a FROM t WHERE a IN (...)"
    assert normalise_statement("x IN (%(a_1)s, %(a_2)s)") == "x IN (...)"
    engine = open_db(f"sqlite:///{tmp_path / 'q.db'}", create=True)
    mark = query_log().snapshot()
    with engine.connect() as conn:
        for n in (1, 5):
            conn.execute(
                sa.select(s.symbols.c.symbol).where(s.symbols.c.symbol.in_([f"S{i}" for i in range(n)]))
            )
    new = query_log().since(mark)
    selects = [q for q in new if q.statement.startswith("SELECT symbols.symbol")]
    assert len(selects) == 1 and selects[0].calls == 2 and selects[0].total_s > 0


def _tables_and_indexes(engine):
    inspector = sa.inspect(engine)
    tables = set(inspector.get_table_names())
    indexes = {ix["name"] for t in tables for ix in inspector.get_indexes(t)}
    return tables, indexes


def test_an_old_database_upgrades_in_place_keeping_its_data(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = get_engine(url)
    assert upgrade(engine, url, target=1) == [1]
    tables, indexes = _tables_and_indexes(engine)
    assert "portfolio" not in tables and "ix_selections_symbol_run" not in indexes
    with engine.begin() as conn:
        conn.execute(
            sa.insert(s.runs).values(
                strategy="sma_crossover", state="Completed", started_at=sa.func.current_timestamp(), config={}
            )
        )
    with pytest.raises(DatabaseError, match="schema version 1, this program needs"):
        open_db(url)  # a reader does not upgrade behind the user's back
    forget_checks()
    open_db(url, migrate=True)
    tables, indexes = _tables_and_indexes(engine)
    assert "portfolio" in tables and {ix.name for ix in s.INDEXES} <= indexes
    with engine.connect() as conn:
        assert current_version(conn) == LATEST
        assert conn.execute(sa.select(sa.func.count()).select_from(s.runs)).scalar() == 1
    assert upgrade(engine, url) == []  # idempotent


def test_migration_4_adds_the_statistics_of_luck_keeping_the_metrics(tmp_path):
    url = f"sqlite:///{tmp_path / 'v3.db'}"
    engine = get_engine(url)
    assert upgrade(engine, url, target=3) == [1, 2, 3]
    assert "run_overfitting" not in _tables_and_indexes(engine)[0]
    with engine.begin() as conn:
        run_id = conn.execute(
            sa.insert(s.runs).values(
                strategy="sma_crossover", state="Completed", started_at=sa.func.current_timestamp(), config={}
            )
        ).inserted_primary_key[0]
        conn.execute(
            sa.text("INSERT INTO symbol_metrics (run_id, symbol, sharpe, folds) VALUES (:r, 'A', 1.5, 2)"),
            {"r": run_id},
        )
    assert upgrade(engine, url, target=4) == [4]
    assert "run_overfitting" in _tables_and_indexes(engine)[0]
    with engine.connect() as conn:
        row = conn.execute(sa.select(s.symbol_metrics)).one()
    assert (row.symbol, row.sharpe, row.folds, row.psr, row.dsr) == ("A", 1.5, 2, None, None)


def test_migration_5_adds_the_holdings_keeping_the_runs(tmp_path):
    url = f"sqlite:///{tmp_path / 'v4.db'}"
    engine = get_engine(url)
    assert upgrade(engine, url, target=4) == [1, 2, 3, 4]
    assert "holdings" not in _tables_and_indexes(engine)[0]
    with engine.begin() as conn:
        conn.execute(
            sa.insert(s.runs).values(
                strategy="momentum_rank", state="Completed", started_at=sa.func.current_timestamp(), config={}
            )
        )
    assert upgrade(engine, url) == [5]
    assert "holdings" in _tables_and_indexes(engine)[0]
    with engine.connect() as conn:
        assert conn.execute(sa.select(s.runs.c.strategy)).scalar_one() == "momentum_rank"
        assert conn.execute(sa.select(sa.func.count()).select_from(s.holdings)).scalar() == 0


def test_a_newer_database_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "new.db"
    url = f"sqlite:///{path}"
    engine = open_db(url, create=True)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(s.schema_version).values(
                version=LATEST + 1, description="from the future", applied_at=sa.func.current_timestamp()
            )
        )
    forget_checks()
    before = path.read_bytes()
    for migrate in (False, True):
        with pytest.raises(DatabaseError, match=f"schema version {LATEST + 1}, newer than this program"):
            open_db(url, create=True, migrate=migrate)
    assert path.read_bytes() == before


def test_foreign_tables_without_version_are_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'foreign.db'}"
    with get_engine(url).begin() as conn:
        conn.exec_driver_sql("CREATE TABLE prices (x INTEGER)")
    with pytest.raises(DatabaseError, match="no schema_version table"):
        open_db(url, create=True, migrate=True)
