"""A run's results in the database: one transaction per chunk, idempotent rewrites, read-back, pruning."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from backtest.db import results as r
from backtest.db import schema as s
from backtest.db.connect import open_db
from backtest.db.engine import DatabaseError, connection, query_log
from backtest.db.optimize import maintain, prune_runs, vacuum
from tests.db.persisting import persist


def _count(engine, table, **where) -> int:
    query = sa.select(sa.func.count()).select_from(table)
    for name, value in where.items():
        query = query.where(table.c[name] == value)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar() or 0)


def test_results_round_trip_and_rewrites_replace(chunk_results, db_url):
    records = [c for c, _ in chunk_results]
    mark = query_log().snapshot()
    report = persist(db_url, records)
    # a new run holds no rows: nothing is deleted before its chunks are written
    assert not [q.statement for q in query_log().since(mark) if q.statement.startswith("DELETE")]
    engine = open_db(db_url)
    expected_sel = sum(len(res.selections) for _, res in chunk_results)
    expected_oos = sum(len(res.oos_returns) for _, res in chunk_results)
    assert (report.selections, report.oos_rows) == (expected_sel, expected_oos)
    assert _count(engine, s.oos_returns) == expected_oos and _count(engine, s.chunks) == 2

    # the same flow run persisted again (a retried flow): same run row, rows replaced, not doubled
    again = persist(db_url, records)
    assert again.run_id == report.run_id
    assert _count(engine, s.selections) == expected_sel and _count(engine, s.oos_returns) == expected_oos
    assert _count(engine, s.runs) == 1

    run = r.read_run(db_url, "flow-1")
    assert run.state == "Completed" and run.summary["nan"] is None and run.config["grid"] == {"fast": [5, 10]}
    first, result = chunk_results[0]
    symbol = first.symbols[0]
    metrics = r.read_metrics(db_url, run.id)
    expected = pd.concat([res.symbol_metrics for _, res in chunk_results], ignore_index=True)
    assert metrics["symbol"].tolist() == expected["symbol"].tolist()
    np.testing.assert_array_equal(metrics["sharpe"].to_numpy(float), expected["sharpe"].to_numpy(float))
    sel = r.read_selections(db_url, symbol=symbol)
    mine = result.selections[result.selections["symbol"] == symbol]
    assert sel["fold"].tolist() == mine["fold"].tolist()
    np.testing.assert_array_equal(sel["val_score"].to_numpy(float), mine["val_score"].to_numpy(float))
    params = json.loads(sel["params"].iloc[0])
    assert params["fast"] == mine["param_fast"].iloc[0] and params["slow"] == mine["param_slow"].iloc[0]
    assert sel["test_start"].iloc[0] == mine["test_start"].iloc[0].date()


def test_a_failing_chunk_leaves_the_others_and_nothing_of_itself(chunk_results, db_url, monkeypatch):
    records = [c for c, _ in chunk_results]
    persist(db_url, records[:1])
    engine = open_db(db_url)
    before = {t.name: _count(engine, t) for t in (s.selections, s.symbol_metrics, s.oos_returns, s.chunks)}
    real = r.bulk_insert

    def crash_on_oos(conn, table, columns):
        if table is s.oos_returns:
            raise OSError("disk full")  # after selections and metrics of the chunk were inserted
        return real(conn, table, columns)

    monkeypatch.setattr(r, "bulk_insert", crash_on_oos)
    run_id = r.read_run(db_url, "flow-1").id
    with pytest.raises(OSError), connection(engine, backtest_write=True) as conn:
        r.write_chunk(conn, run_id, records[1], include_oos=True)
    after = {t.name: _count(engine, t) for t in (s.selections, s.symbol_metrics, s.oos_returns, s.chunks)}
    assert after == before  # the whole chunk rolled back, chunk 0 untouched


def test_failed_chunks_are_recorded_with_their_error(chunk_results, db_url):
    ok, _ = chunk_results[0]
    failed = r.ChunkRecord(1, "key-1", chunk_results[1][0].symbols, "Failed", "ValueError: boom", None)
    report = persist(db_url, [ok, failed], state="Failed")
    engine = open_db(db_url)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(s.chunks.c.chunk, s.chunks.c.state, s.chunks.c.error).order_by("chunk")
        ).all()
    assert [tuple(x) for x in rows] == [(0, "Completed", None), (1, "Failed", "ValueError: boom")]
    assert r.read_run(db_url).state == "Failed" and report.oos_rows == len(chunk_results[0][1].oos_returns)


def test_result_lookups_are_cached_for_a_while(chunk_results, db_url):
    persist(db_url, [chunk_results[0][0]], include_oos=False)
    first = r.read_metrics(db_url)
    assert r.read_metrics(db_url) is first  # served from the TTL cache
    r.clear_result_cache()
    assert r.read_metrics(db_url) is not first
    with pytest.raises(DatabaseError, match="no run with id 999"):
        r.read_run(db_url, 999)


def test_prune_removes_old_runs_with_their_results_then_vacuum_reclaims(chunk_results, db_url):
    records = [c for c, _ in chunk_results]
    persist(db_url, records, flow_run_id="old")
    persist(db_url, records[:1], flow_run_id="new", include_oos=False)
    engine = open_db(db_url)
    old = r.read_run(db_url, "old").id
    with engine.begin() as conn:
        conn.execute(
            sa.update(s.runs)
            .where(s.runs.c.id == old)
            .values(started_at=dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
        )
    assert prune_runs(engine, retention_days=30) == 1
    assert _count(engine, s.oos_returns) == 0 and _count(engine, s.runs) == 1
    assert _count(engine, s.selections, run_id=old) == 0 and _count(engine, s.chunks, run_id=old) == 0
    done = vacuum(engine, force=True)
    assert done["vacuumed"]
    report = maintain(engine, db_url, light=False, retention_days=30)
    assert report.ok and report.stats["tables"]


def test_nothing_is_written_for_an_unreadable_chunk_file(tmp_path, db_url):
    bad = tmp_path / "bad"
    pd.DataFrame({"x": [1]}).to_parquet(bad)
    record = r.ChunkRecord(0, "k", ("A",), "Completed", None, str(bad))
    with pytest.raises(Exception, match=r"not a chunk result|x"):
        persist(db_url, [record])
    assert _count(open_db(db_url), s.selections) == 0


def test_results_path_is_a_path(chunk_results):
    assert Path(chunk_results[0][0].result_path).exists()


def test_statistics_of_luck_are_stored_with_the_run(chunk_results, chunk_plan, db_url):
    """The run's PBO, deflated Sharpe, SPA p-value and their inputs in run_overfitting; each symbol's PSR and
    DSR beside its metrics; a re-persisted run keeps one row."""
    from backtest.engine.study import combine
    from backtest.results.outputs import study_figures

    results = [res for _, res in chunk_results]
    study = combine(chunk_plan, results)
    luck = study_figures(study)["overfitting"]
    summary = {"state": "Completed", "wall_seconds": 2.0, "figures": {"overfitting": luck}}
    records = [c for c, _ in chunk_results]
    for _ in range(2):
        report = persist(db_url, records, flow_run_id="flow-luck", summary=summary)
    run = r.read_run(db_url, "flow-luck")
    assert run.overfitting is not None and run.overfitting["run_id"] == report.run_id
    assert run.overfitting["trials"] == luck["trials"] == 4
    for name in ("pbo", "dsr", "psr", "spa_pvalue", "degradation_slope", "sharpe_variance"):
        assert run.overfitting[name] == pytest.approx(luck[name], rel=1e-12, nan_ok=True), name
    assert run.overfitting["observations"] == luck["inputs"]["T"] and run.overfitting["blocks"] == 16
    assert run.overfitting["verdict"] == luck["verdict"]
    assert _count(open_db(db_url), s.run_overfitting, run_id=report.run_id) == 1
    metrics = r.read_metrics(db_url, run.id)
    expected = pd.concat([res.symbol_metrics for res in results], ignore_index=True)
    for name in ("psr", "dsr"):
        np.testing.assert_allclose(metrics[name].to_numpy(float), expected[name].to_numpy(float), rtol=1e-12)
    # and `backtest results` prints them in the command's own luck line
    from typer.testing import CliRunner

    from cli.app import app

    shown = CliRunner().invoke(app, ["results", "--db", db_url, "--run", "flow-luck"])
    assert shown.exit_code == 0, shown.output
    assert "luck: 4 trials, PBO" in shown.output and luck["verdict"][:20] in shown.output.replace("\n", " ")
    # a failed run has no statistics of luck
    persist(db_url, records[:1], flow_run_id="flow-failed", state="Failed", summary=summary)
    assert r.read_run(db_url, "flow-failed").overfitting is None
