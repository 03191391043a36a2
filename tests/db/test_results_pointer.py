"""Identical results are stored once: a run whose collected key an earlier completed run holds points at its
rows; readers follow the pointer; retention pruning moves pointed-at rows to a surviving run."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import sqlalchemy as sa

from backtest.db import results as r
from backtest.db import schema as s
from backtest.db.connect import open_db
from backtest.db.optimize import prune_runs


def _persist(url, chunks, flow_run_id, key, *, include_oos=False, state="Completed"):
    return r.persist_run(
        url,
        flow_run_id=flow_run_id,
        strategy="sma_crossover",
        config={"strategy": "sma_crossover"},
        price_source="test",
        started_at=dt.datetime.now(dt.UTC),
        chunks=chunks,
        state=state,
        summary={"state": state, "wall_seconds": 1.0},
        include_oos=include_oos,
        collected_key=key,
    )


def _rows(url, table, run_id) -> int:
    with open_db(url).connect() as conn:
        query = sa.select(sa.func.count()).select_from(table).where(table.c.run_id == run_id)
        return int(conn.execute(query).scalar() or 0)


def test_same_results_point_other_results_and_failed_runs_write(chunk_results, db_url):
    chunks = [c for c, _ in chunk_results]
    first = _persist(db_url, chunks, "f1", "collected-a")
    assert first.results_of is None and first.selections > 0
    second = _persist(db_url, chunks, "f2", "collected-a")
    assert second.results_of == first.run_id
    assert (second.selections, second.metrics) == (first.selections, first.metrics)
    assert _rows(db_url, s.selections, second.run_id) == 0
    # asking for oos returns is other results (the earlier run has none): written in full
    third = _persist(db_url, chunks, "f3", "collected-a", include_oos=True)
    assert third.results_of is None and _rows(db_url, s.oos_returns, third.run_id) > 0
    # a failed run never points (nor is pointed at); another key writes its own rows
    failed = _persist(db_url, chunks, "f4", "collected-a", state="Failed")
    other = _persist(db_url, chunks, "f5", "collected-b")
    assert failed.results_of is None and other.results_of is None
    assert _rows(db_url, s.selections, other.run_id) == first.selections
    r.clear_result_cache()
    assert r.read_run(db_url, "f4").results_key is None
    # persisting the pointing run again (a retried flow run) keeps it a pointer, without rows of its own
    again = _persist(db_url, chunks, "f2", "collected-a")
    assert again.run_id == second.run_id and again.results_of == first.run_id
    assert _rows(db_url, s.selections, second.run_id) == 0


def test_pruning_the_run_holding_results_moves_them_to_the_run_pointing_at_them(chunk_results, db_url):
    chunks = [c for c, _ in chunk_results]
    old = _persist(db_url, chunks, "old", "collected-a")
    mid = _persist(db_url, chunks, "mid", "collected-a")
    new = _persist(db_url, chunks, "new", "collected-a")
    assert mid.results_of == new.results_of == old.run_id
    r.clear_result_cache()
    before = r.read_selections(db_url, new.run_id).drop(columns="run_id")
    engine = open_db(db_url)
    with engine.begin() as conn:
        conn.execute(
            sa.update(s.runs)
            .where(s.runs.c.id == old.run_id)
            .values(started_at=dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
        )
    assert prune_runs(engine, retention_days=30) == 1
    r.clear_result_cache()
    # the newest pointing run now holds the rows, the other points at it; nothing was lost
    assert r.read_run(db_url, "new").results_of is None and r.read_run(db_url, "mid").results_of == new.run_id
    assert _rows(db_url, s.selections, new.run_id) == len(before) > 0
    for run in ("mid", "new"):
        got = r.read_selections(db_url, run)
        pd.testing.assert_frame_equal(got.drop(columns="run_id"), before)
    assert _rows(db_url, s.selections, old.run_id) == 0
