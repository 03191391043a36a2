"""The query-plan check fails loudly when an index the system relies on is missing."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from backtest.db.connect import open_db
from backtest.db.engine import dispose_engines, is_sqlite
from backtest.db.optimize import QueryPlanError, check_query_plans, optimize
from backtest.db.prices import sync_prices
from tests.db.persisting import persist


def test_every_system_query_uses_an_index_even_after_analyze(db_store, db_url):
    sync_prices(db_store, db_url)
    engine = open_db(db_url)
    optimize(
        engine, full=True
    )  # with statistics of tiny tables the planner would scan: the check still holds
    checks = check_query_plans(engine)
    assert checks and all(c.uses_index for c in checks)


def test_a_dropped_index_is_named_with_its_plan(db_url):
    engine = open_db(db_url, create=True)
    with engine.begin() as conn:
        conn.execute(sa.schema.DropIndex(sa.Index("ix_selections_symbol_run")))
    with pytest.raises(QueryPlanError, match="selections of a symbol across runs") as info:
        check_query_plans(engine)
    message = str(info.value)
    assert "1 system query scans a table" in message
    assert ("selections_pkey" in message and "FULL" in message) or "SCAN selections" in message
    assert "metrics of a symbol across runs" not in str(info.value)


def test_light_maintenance_refreshes_the_statistics_of_the_result_tables(chunk_results, db_url):
    # on the fresh connection maintenance opens, SQLite's PRAGMA optimize (before 3.46) looked only at the
    # tables that connection had queried: none, so the statistics were never made; a sampled ANALYZE is
    persist(db_url, [c for c, _ in chunk_results], flow_run_id="flow-stats")
    dispose_engines()  # no connection left that has queried anything
    engine = open_db(db_url)
    statements = optimize(engine)
    assert any("selections" in st for st in statements)
    with engine.connect() as conn:
        if is_sqlite(engine):
            analysed = conn.execute(sa.text("SELECT DISTINCT tbl FROM sqlite_stat1")).scalars().all()
        else:
            analysed = (
                conn.execute(
                    sa.text("SELECT relname FROM pg_stat_user_tables WHERE last_analyze IS NOT NULL")
                )
                .scalars()
                .all()
            )
    assert {"selections", "symbol_metrics", "runs", "chunks"} <= set(analysed)
