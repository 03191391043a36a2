"""A cross-sectional run in the database: one selection row per fold, the holdings, the portfolio, the luck."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from backtest.config import FoldSpec, ParamGrid, StudyConfig
from backtest.db import results as r
from backtest.db import schema as s
from backtest.db.connect import open_db
from backtest.ranking.portfolio import Construction
from backtest.ranking.study import run_cross_sectional
from cli.app import app


@pytest.fixture(scope="module")
def ranking_out(db_store, tmp_path_factory):
    """A small cross-sectional study's output folder and its summary, as the flow writes them."""
    config = StudyConfig(
        strategy="momentum_rank",
        grid=ParamGrid.from_mapping({"lookback": [21, 63], "skip": [0], "top": [2, 4]}),
        folds=FoldSpec(3.0, 1.0, 1.0),
        fees_bps=5,
    )
    result = run_cross_sectional(
        config, Construction(weighting="inverse_vol"), db_store.load(db_store.symbols())
    )
    out = tmp_path_factory.mktemp("ranking-out")
    result.save(out)
    summary = {
        "kind": "cross_sectional",
        "state": "Completed",
        "wall_seconds": 2.5,
        "config": {"strategy": "momentum_rank"},
        "figures": {**result.figures(), "overfitting": result.overfitting.to_dict()},
    }
    return out, summary, result


def _persist(url, out, summary, flow_run_id="rank-1", state="Completed", key=None):
    return r.persist_ranking_run(
        url,
        flow_run_id=flow_run_id,
        strategy="momentum_rank",
        config={"strategy": "momentum_rank", "grid": {"top": [2, 4]}},
        price_source="test",
        started_at=dt.datetime.now(dt.UTC),
        state=state,
        summary={**summary, "state": state},
        out=out,
        collected_key=key,
    )


def _count(url, table) -> int:
    with open_db(url).connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar() or 0)


def test_a_ranking_run_round_trips_and_a_rewrite_replaces(ranking_out, db_url):
    out, summary, result = ranking_out
    report = _persist(db_url, out, summary)
    n_folds, n_hold, n_days = len(result.selections), len(result.holdings), len(result.portfolio)
    assert (report.selections, report.holdings, report.portfolio_rows) == (n_folds, n_hold, n_days)
    assert n_hold > 0 and report.to_dict()["holdings"] == n_hold

    again = _persist(db_url, out, summary)  # the same flow run persisted again: replaced, not doubled
    assert again.run_id == report.run_id
    assert (_count(db_url, s.selections), _count(db_url, s.holdings)) == (n_folds, n_hold)
    assert _count(db_url, s.portfolio) == n_days and _count(db_url, s.run_overfitting) == 1

    run = r.read_run(db_url, "rank-1")
    assert run.state == "Completed" and run.summary["kind"] == "cross_sectional"
    assert run.overfitting["trials"] == 4 and run.overfitting["pbo"] == pytest.approx(
        result.overfitting.to_dict()["pbo"]
    )
    sel = r.read_selections(db_url, run.id, s.PORTFOLIO_SYMBOL)
    assert sel["fold"].tolist() == result.selections["fold"].tolist()
    np.testing.assert_allclose(
        sel["test_score"].to_numpy(float), result.selections["test_score"].to_numpy(float), equal_nan=True
    )
    chosen = result.selections[result.selections["combo"] >= 0].iloc[0]
    params = json.loads(sel.loc[sel["fold"] == chosen["fold"], "params"].iloc[0])
    # numbers stay numbers, the choices are stored by name
    assert params["top"] == chosen["param_top"] and params["weighting"] == "inverse_vol"
    holdings = r.read_holdings(db_url, run.id)
    expected = result.holdings.sort_values(["fold", "date", "symbol"], ignore_index=True)
    assert holdings["symbol"].tolist() == expected["symbol"].tolist()
    np.testing.assert_allclose(holdings["weight"].to_numpy(float), expected["weight"].to_numpy(float))


def test_a_warm_re_run_points_at_the_identical_results_and_survives_their_run(ranking_out, db_url):
    from backtest.db.optimize import prune_runs

    out, summary, result = ranking_out
    first = _persist(db_url, out, summary, flow_run_id="cold", key="collected-abc")
    again = _persist(db_url, out, summary, flow_run_id="warm", key="collected-abc")
    assert first.results_of is None and again.results_of == first.run_id
    assert (again.selections, again.holdings) == (first.selections, first.holdings) > (0, 0)
    assert _count(db_url, s.holdings) == len(result.holdings)  # written once
    warm = r.read_run(db_url, "warm")
    assert len(r.read_holdings(db_url, warm.id)) == len(result.holdings)
    assert len(r.read_selections(db_url, warm.id, s.PORTFOLIO_SYMBOL)) == len(result.selections)
    # the cold run pruned: its rows move to the run that points at them
    with open_db(db_url).begin() as conn:
        conn.execute(
            sa.update(s.runs).where(s.runs.c.flow_run_id == "cold").values(started_at=dt.datetime(2000, 1, 1))
        )
    assert prune_runs(open_db(db_url), 30.0) == 1
    r.clear_result_cache()
    assert len(r.read_holdings(db_url, warm.id)) == len(result.holdings)


def test_a_failed_ranking_run_keeps_its_row_without_results(ranking_out, db_url):
    out, summary, _ = ranking_out
    report = _persist(db_url, out, summary, flow_run_id="rank-failed", state="Failed")
    assert (report.selections, report.holdings, report.portfolio_rows) == (0, 0, 0)
    assert r.read_run(db_url, "rank-failed").state == "Failed"
    assert _count(db_url, s.run_overfitting) == 0


def test_deleting_a_ranking_run_takes_its_holdings(ranking_out, db_url):
    from backtest.db.optimize import prune_runs

    out, summary, _ = ranking_out
    _persist(db_url, out, summary, flow_run_id="old")
    before = _count(db_url, s.holdings)
    assert before > 0
    assert prune_runs(open_db(db_url), 1.0, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=2)) == 1
    assert (_count(db_url, s.holdings), _count(db_url, s.selections), _count(db_url, s.runs)) == (0, 0, 0)


def test_backtest_results_shows_a_ranking_run_as_the_portfolio(ranking_out, tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    out, summary, result = ranking_out
    _persist(url, out, summary)
    shown = CliRunner().invoke(app, ["results", "--db", url])
    assert shown.exit_code == 0, shown.output
    assert "Out-of-sample portfolio (cross-sectional)" in shown.output
    assert "Selections of the portfolio, per fold" in shown.output
    last = result.holdings["date"].max()
    assert f"Holdings decided on {last:%Y-%m-%d}" in shown.output
    assert all(sym in shown.output for sym in result.holdings.loc[result.holdings["date"] == last, "symbol"])
    assert "luck: 4 trials" in shown.output
    assert "Out-of-sample metrics" not in shown.output  # a ranking run has no per-symbol metrics
    as_json = CliRunner().invoke(app, ["results", "--db", url, "--json"])
    assert as_json.exit_code == 0, as_json.output
    doc = json.loads(as_json.output)
    assert len(doc["selections"]) == len(result.selections)
    assert len(doc["holdings"]) == len(result.holdings) and "metrics" not in doc
