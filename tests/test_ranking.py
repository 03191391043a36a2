"""The cross-sectional study's core: scores, the portfolio kernel's conventions, the walk-forward."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backtest.config import FoldSpec, ParamGrid, StudyConfig
from backtest.data.panel import PricePanel
from backtest.engine.strategies import get_strategy
from backtest.errors import ConfigError, DataError
from backtest.ranking import scores_nb
from backtest.ranking.portfolio import Construction, Market, simulate
from backtest.ranking.study import RankingPlan, run_cross_sectional
from backtest.ranking.universe import membership_mask, read_universe
from tests.panels import random_panel


def market(panel: PricePanel, member: np.ndarray | None = None) -> Market:
    return Market(
        panel.symbols,
        panel.dates,
        panel.close,
        panel.open,
        np.zeros((0, 0), bool) if member is None else member,
    )


def own_bars(close: np.ndarray) -> list[pd.Series]:
    return [pd.Series(row[~np.isnan(row)]) for row in close]


# -- scores ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "params", "reference"),
    [
        ("momentum_rank", {"lookback": 20, "skip": 5}, lambda c: c.shift(5) / c.shift(20) - 1),
        ("reversal_rank", {"lookback": 10}, lambda c: -(c / c.shift(10) - 1)),
        ("low_volatility_rank", {"window": 15}, lambda c: -c.pct_change().rolling(15).std()),
        ("sma_distance_rank", {"window": 12}, lambda c: c / c.rolling(12).mean() - 1),
    ],
)
def test_scores_equal_pandas_on_each_symbols_own_bars(name, params, reference):
    panel = random_panel(6, 400, seed=3)
    scores = get_strategy(name).scores(panel, params)
    assert scores.dtype == np.float32 and scores.shape == panel.close.shape
    for i, bars in enumerate(own_bars(panel.close)):
        mine = scores[i][~np.isnan(panel.close[i])]
        np.testing.assert_allclose(
            mine, reference(bars).to_numpy(np.float32), rtol=2e-6, atol=1e-7, equal_nan=True
        )
    assert np.isnan(scores[np.isnan(panel.close)]).all()


@pytest.mark.parametrize(
    "name", ["momentum_rank", "reversal_rank", "low_volatility_rank", "sma_distance_rank"]
)
def test_a_chunks_scores_in_one_kernel_call_equal_each_combination_on_its_own(name):
    from backtest.ranking.study import chunk_scores

    panel = random_panel(7, 1600, seed=4)
    plan = RankingPlan.create(
        StudyConfig(strategy=name, folds=FoldSpec(2.0, 1.0, 1.0)),
        Construction(),
        pd.Timestamp(panel.dates[0]).date(),
        pd.Timestamp(panel.dates[-1]).date(),
    )
    assert plan.strategy.kernel is not None and len(plan.score_combos) > 1
    batched = chunk_scores(plan, panel)
    one_by_one = np.stack(
        [plan.strategy.scores(panel, plan.score_params(s)) for s in range(len(plan.score_combos))]
    )
    np.testing.assert_array_equal(batched, one_by_one)


def test_own_volatility_is_the_63_bar_std_of_own_returns():
    panel = random_panel(4, 300, seed=4)
    vol = scores_nb.own_volatility_nb(panel.close, scores_nb.VOL_WINDOW)
    for i, bars in enumerate(own_bars(panel.close)):
        expected = bars.pct_change().rolling(63).std().to_numpy()
        np.testing.assert_allclose(vol[i][~np.isnan(panel.close[i])], expected, rtol=1e-9, equal_nan=True)


def test_ranking_strategies_register_and_check_their_grids():
    s = get_strategy("momentum_rank")
    assert s.kind == "ranking" and s.params == ("lookback", "skip")
    with pytest.raises(ConfigError, match="skip"):
        s.combinations(ParamGrid.from_mapping({"lookback": [21], "skip": [21]}))
    assert get_strategy("sma_crossover").kind == "timing"


# -- the portfolio's conventions ----------------------------------------------------------------------------
def flat_panel(n_symbols: int = 5, n_bars: int = 60, seed: int = 0) -> PricePanel:
    rng = np.random.default_rng(seed)
    close = 100 * np.cumprod(1 + rng.normal(0, 0.01, (n_symbols, n_bars)), axis=1)
    dates = np.busday_offset(np.datetime64("2010-01-04"), np.arange(n_bars), roll="forward").astype(
        "datetime64[D]"
    )
    return PricePanel(
        symbols=tuple(f"S{i}" for i in range(n_symbols)),
        dates=dates,
        open=close * 0.999,
        high=close * 1.01,
        low=close * 0.99,
        close=close,
        volume=np.ones_like(close),
    )


def test_drift_between_rebalances_follows_the_design_formula():
    panel = flat_panel()
    scores = np.tile(np.arange(5, dtype=np.float32)[:, None], (1, 60))  # S4 best, then S3
    sim = simulate(
        market(panel), scores, Construction(top=2, rebalance=20), 0.0, False, log_mask=np.ones(60, bool)
    )
    assert sim.first == 0 and list(sim.log_days) == [0, 20, 40]
    np.testing.assert_allclose(sim.log_targets[0], [0, 0, 0, 0.5, 0.5])
    r = panel.close[:, 1:] / panel.close[:, :-1] - 1
    w = np.array([0, 0, 0, 0.5, 0.5])
    for t in range(1, 21):  # no trade between day 0 and day 20's close: the weights drift
        rp = float(w @ r[:, t - 1])
        assert sim.ret[t] == pytest.approx(rp, abs=1e-14)
        w = w * (1 + r[:, t - 1]) / (1 + rp)
    assert sim.turnover[20] == pytest.approx(np.abs(np.array([0, 0, 0, 0.5, 0.5]) - w).sum(), abs=1e-12)


def test_costs_are_paid_on_the_traded_notional():
    panel = flat_panel()
    scores = np.tile(np.arange(5, dtype=np.float32)[:, None], (1, 60))
    free = simulate(market(panel), scores, Construction(top=2, rebalance=20), 0.0, False)
    paid = simulate(market(panel), scores, Construction(top=2, rebalance=20), 0.001, False)
    assert paid.turnover[0] == pytest.approx(1.0) and paid.ret[0] == pytest.approx(-0.001)
    assert free.ret[0] == 0.0
    assert np.prod(1 + paid.ret) < np.prod(1 + free.ret)


def test_ties_are_broken_by_symbol_order():
    panel = flat_panel()
    scores = np.ones((5, 60), np.float32)
    sim = simulate(market(panel), scores, Construction(top=2), 0.0, False, log_mask=np.ones(60, bool))
    np.testing.assert_allclose(sim.log_targets[0], [0.5, 0.5, 0, 0, 0])
    short = simulate(
        market(panel), scores, Construction(top=1, side="long_short"), 0.0, False, log_mask=np.ones(60, bool)
    )
    np.testing.assert_allclose(short.log_targets[0], [0.5, 0, 0, 0, -0.5])


def test_a_day_without_eligible_symbols_is_all_cash():
    panel = flat_panel()
    scores = np.tile(np.arange(5, dtype=np.float32)[:, None], (1, 60))
    scores[:, 20:40] = np.nan  # no score on the second rebalance day
    sim = simulate(market(panel), scores, Construction(top=2, rebalance=20), 0.0, False)
    assert (sim.n_holdings[20:40] == 0).all() and (sim.ret[21:40] == 0).all()
    assert sim.turnover[20] > 0.99 and sim.n_holdings[40] == 2


def test_a_delisted_symbol_is_sold_at_its_last_close_and_a_gap_keeps_its_weight():
    panel = flat_panel()
    close = panel.close.copy()
    close[4, 30:] = np.nan  # the best symbol's history ends on day 29
    close[3, 10:12] = np.nan  # the second best misses two days
    panel = dataclasses.replace(panel, close=close)
    scores = np.tile(np.arange(5, dtype=np.float32)[:, None], (1, 60))
    sim = simulate(
        market(panel), scores, Construction(top=2, rebalance=20), 0.0, False, log_mask=np.ones(60, bool)
    )
    assert sim.n_holdings[29] == 1 and sim.turnover[29] > 0  # sold at day 29's close
    value = np.cumprod(1 + sim.ret)
    p3 = 0.5 * value[20] / close[3, 20]  # S3's shares from day 20's rebalance, the rest cash after day 29
    np.testing.assert_allclose(value[30:40], value[29] + p3 * (close[3, 30:40] - close[3, 29]), rtol=1e-12)
    # day 20: S4 is not eligible on its last day? It still has bars until 29, so it is held from day 20
    np.testing.assert_allclose(sim.log_targets[1], [0, 0, 0, 0.5, 0.5])
    # day 40: S4 is gone, the best two are S3 and S2
    np.testing.assert_allclose(sim.log_targets[2], [0, 0, 0.5, 0.5, 0])
    # the gap: S3 earns nothing on days 10-11, and day 12 carries the move from its last close
    c3 = pd.Series(close[3]).ffill().to_numpy()  # valued at its last close through the gap
    expected = 0.5 * close[4, :20] / close[4, 0] + 0.5 * c3[:20] / c3[0]
    np.testing.assert_allclose(np.cumprod(1 + sim.ret)[:20], expected, rtol=1e-12)


def test_max_weight_caps_and_spreads_the_excess():
    panel = flat_panel(n_symbols=6)
    scores = np.tile(np.arange(6, dtype=np.float32)[:, None], (1, 60))
    sim = simulate(
        market(panel),
        scores,
        Construction(top=4, weighting="score", max_weight=0.3),
        0.0,
        False,
        log_mask=np.ones(60, bool),
    )
    w = sim.log_targets[0]
    # by rank 4:3:2:1 = 0.4, 0.3, 0.2, 0.1; the 0.4 is capped and its excess spread 2:1 over the last two
    np.testing.assert_allclose(w, [0, 0, 0.1 + 0.1 / 3, 0.2 + 0.2 / 3, 0.3, 0.3])
    few = simulate(
        market(panel), scores, Construction(top=2, max_weight=0.3), 0.0, False, log_mask=np.ones(60, bool)
    )
    np.testing.assert_allclose(few.log_targets[0], [0, 0, 0, 0, 0.3, 0.3])  # 2 x 0.3 < 1: the rest is cash


def test_membership_restricts_eligibility(tmp_path):
    panel = flat_panel()
    path = tmp_path / "universe.csv"
    path.write_text(
        "symbol,start,end\nS0,2010-01-01,\nS1,2010-01-01,\nS2,2010-01-01,\nS3,2010-01-01,\n"
        "S4,2010-01-01,2010-01-29\n"
    )
    frame = read_universe(path)
    member = membership_mask(frame, panel.symbols, panel.dates)
    assert member[4].sum() == 20 and member[:4].all()  # January 2010 has 20 weekdays from the 4th
    scores = np.tile(np.arange(5, dtype=np.float32)[:, None], (1, 60))
    sim = simulate(
        market(panel, member),
        scores,
        Construction(top=1, rebalance=20),
        0.0,
        False,
        log_mask=np.ones(60, bool),
    )
    np.testing.assert_allclose(sim.log_targets[0], [0, 0, 0, 0, 1])
    np.testing.assert_allclose(sim.log_targets[1], [0, 0, 0, 1, 0])  # S4 left the universe


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("symbol,begin\nA,2010-01-01\n", "missing start, end"),
        ("symbol,start,end\nA,2010-13-01,\n", "line 2: start '2010-13-01' is not a date"),
        (
            "symbol,start,end\nA,2010-01-01,\nB,2011-01-01,2010-01-01\n",
            "line 3: end 2010-01-01 is before start",
        ),
        ("symbol,start,end\n,2010-01-01,\n", "line 2: the symbol is empty"),
    ],
)
def test_a_bad_universe_file_names_the_file_line_and_problem(tmp_path, text, problem):
    path = tmp_path / "u.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=str(path)) as err:
        read_universe(path)
    assert problem in str(err.value)


@settings(max_examples=15, deadline=None)
@given(cut=st.integers(30, 380), seed=st.integers(0, 1000), next_open=st.booleans())
def test_future_prices_never_change_past_holdings(cut, seed, next_open):
    panel = random_panel(15, 400, seed=seed % 7)
    rng = np.random.default_rng(seed)
    close = panel.close.copy()
    close[:, cut:] *= np.exp(rng.normal(0, 0.05, close[:, cut:].shape))
    changed = dataclasses.replace(panel, close=close)
    build = Construction(top=4, weighting="inverse_vol", rebalance=7)
    runs = []
    for p in (panel, changed):
        scores = get_strategy("momentum_rank").scores(p, {"lookback": 21, "skip": 0})
        runs.append(simulate(market(p), scores, build, 0.001, next_open, log_mask=np.ones(400, bool)))
    a, b = runs
    past = a.log_days < cut
    np.testing.assert_array_equal(a.log_days[past], b.log_days[: past.sum()])
    np.testing.assert_array_equal(a.log_targets[past], b.log_targets[: past.sum()])
    np.testing.assert_array_equal(a.ret[:cut], b.ret[:cut])


# -- the walk-forward ----------------------------------------------------------------------------------------
CONFIG = StudyConfig(
    strategy="momentum_rank",
    grid=ParamGrid.from_mapping({"lookback": [21, 63], "skip": [0, 5], "top": [3, 6]}),
    folds=FoldSpec(2, 1, 1),
    fees_bps=10,
)


@pytest.fixture(scope="module")
def study():
    return run_cross_sectional(CONFIG, Construction(), random_panel(30, 1500, seed=2))


def test_each_test_day_is_the_selected_combinations_whole_history_return(study):
    panel = random_panel(30, 1500, seed=2)
    plan = study.plan
    port = study.portfolio
    for row in study.selections.itertuples():
        if row.combo < 0:
            continue
        build = plan.construction_of(row.combo)
        scores = plan.strategy.scores(panel, plan.score_params(int(plan.score_index[row.combo])))
        whole = simulate(market(panel), scores, build, CONFIG.cost, False)
        days = port[port["fold"] == row.fold]
        idx = np.searchsorted(panel.dates, days["date"].to_numpy().astype("datetime64[D]"))
        np.testing.assert_array_equal(days["ret"].to_numpy()[1:], whole.ret[idx[1:]])
        first = (1 + whole.ret[idx[0]]) * (1 - CONFIG.cost * row.switch_turnover) - 1
        assert days["ret"].iloc[0] == pytest.approx(first, abs=1e-15)


def test_the_study_reports_its_tables_and_the_statistics_of_luck(study, tmp_path):
    sel = study.selections
    assert len(sel) == len(study.plan.folds) and set(sel["basis"]) <= {"validation", "in_sample", "skipped"}
    assert {"param_lookback", "param_skip", "param_top", "param_side", "degradation"} <= set(sel.columns)
    assert study.trials.n_trials == 8 and study.overfitting.trials == 8
    assert 0 <= study.overfitting.cscv.pbo <= 1
    held = study.holdings
    assert set(held.columns) == {"fold", "date", "symbol", "weight"}
    assert held.groupby("date")["weight"].sum().round(12).eq(1.0).all()
    paths = study.save(tmp_path)
    assert set(paths) == {"selections", "portfolio", "holdings", "grid_scores", "trials", "cscv"}
    assert study.figures()["kind"] == "cross_sectional"


def test_a_timing_strategy_cannot_make_a_ranking_plan():
    cfg = dataclasses.replace(CONFIG, strategy="sma_crossover", grid=None)
    with pytest.raises(ConfigError, match="timing strategy"):
        RankingPlan.create(
            cfg, Construction(), pd.Timestamp("2001-01-01").date(), pd.Timestamp("2008-01-01").date()
        )


def test_a_grid_may_name_portfolio_parameters_by_name():
    cfg = dataclasses.replace(
        CONFIG,
        grid=ParamGrid.from_mapping({"lookback": [21], "skip": [0], "side": [0, 1], "quantile": [0.2]}),
    )
    plan = RankingPlan.create(
        cfg, Construction(), pd.Timestamp("2001-01-01").date(), pd.Timestamp("2008-01-01").date()
    )
    builds = [plan.construction_of(k) for k in range(len(plan.combos))]
    assert [(b.side, b.top, b.quantile) for b in builds] == [("long", 0, 0.2), ("long_short", 0, 0.2)]


@settings(max_examples=60, deadline=None)
@given(
    keys=st.lists(st.integers(-3, 3), min_size=1, max_size=120),
    m=st.integers(1, 40),
    last=st.booleans(),
)
def test_the_partial_selection_equals_a_full_stable_sort(keys, m, last):
    from backtest.ranking.portfolio_nb import ends_nb

    key = np.array(keys, dtype=np.float64)  # few distinct values: many ties
    m = min(m, len(key))
    idx = np.arange(100, 100 + len(key), dtype=np.int64)
    order = idx[np.argsort(key, kind="stable")]
    expected = order[:m] if not last else order[len(key) - m :][::-1]
    np.testing.assert_array_equal(ends_nb(idx, key, m, last), expected)
