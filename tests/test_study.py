import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backtest.config import FoldSpec, ParamGrid, StudyConfig
from backtest.engine.persymbol import load_function, run_per_symbol
from backtest.engine.simulate_nb import simulate_nb
from backtest.engine.strategies import get_strategy, register, sma_crossover, strategy_from_function
from backtest.engine.study import StudyPlan, date_range, run_chunk, run_study
from backtest.errors import ConfigError, StrategyError
from tests.panels import random_panel

FOLDS = FoldSpec(train_years=2, validate_years=1, test_years=1)
SMALL_GRID = ParamGrid.from_mapping({"fast": [5, 10, 20], "slow": [40, 60, 100]})


def study(panel, config, chunk_size=1000, workers=1):
    first, last = date_range(panel)
    return run_study(config, panel.symbols, panel.select, first, last, chunk_size=chunk_size, workers=workers)


def assert_same_results(a, b):
    shared = [c for c in a.selections.columns if c in b.selections.columns]
    pd.testing.assert_frame_equal(a.selections[shared], b.selections[shared])
    pd.testing.assert_frame_equal(a.oos_returns, b.oos_returns)
    pd.testing.assert_frame_equal(a.symbol_metrics, b.symbol_metrics)
    pd.testing.assert_frame_equal(a.portfolio, b.portfolio, rtol=1e-12)
    shared = [c for c in a.grid_scores.columns if c in b.grid_scores.columns]
    pd.testing.assert_frame_equal(a.grid_scores[shared], b.grid_scores[shared], rtol=1e-12)
    # the statistics of luck: the same trials' returns, whatever the chunking or the strategy's path
    pd.testing.assert_frame_equal(a.trials.to_frame(), b.trials.to_frame(), rtol=1e-12)
    assert a.overfitting.cscv.pbo == b.overfitting.cscv.pbo


@pytest.fixture(scope="module")
def panel():
    return random_panel(n_symbols=14, n_bars=1300, seed=3)


@settings(max_examples=8, deadline=None)
@given(chunk_size=st.integers(1, 14), workers=st.sampled_from([1, 2]))
def test_chunked_equals_unchunked(panel, chunk_size, workers):
    config = StudyConfig(grid=SMALL_GRID, folds=FOLDS, fees_bps=5, top_k=3)
    whole = study(panel, config)
    assert_same_results(study(panel, config, chunk_size=chunk_size, workers=workers), whole)


@pytest.mark.parametrize("execution", ["close", "next_open"])
def test_future_prices_never_change_past_results(panel, execution):
    """Perturbing every price after a date changes no out-of-sample return on or before that date."""
    config = StudyConfig(grid=SMALL_GRID, folds=FOLDS, fees_bps=3, execution=execution)
    base = study(panel, config)
    cut = 900
    arrays = {}
    rng = np.random.default_rng(1)
    noise = np.exp(rng.normal(0, 0.05, size=(panel.n_symbols, panel.n_bars - cut - 1)))
    for name in ("open", "high", "low", "close"):
        arr = getattr(panel, name).copy()
        arr[:, cut + 1 :] *= noise
        arrays[name] = arr
    changed = type(panel)(panel.symbols, panel.dates, volume=panel.volume, **arrays)
    other = study(changed, config)
    day = panel.dates[cut]
    before_a = base.oos_returns[base.oos_returns["date"] <= day].reset_index(drop=True)
    before_b = other.oos_returns[other.oos_returns["date"] <= day].reset_index(drop=True)
    assert len(before_a) > 1000
    pd.testing.assert_frame_equal(before_a, before_b)
    after_a = base.oos_returns[base.oos_returns["date"] > day]["ret"].to_numpy()
    after_b = other.oos_returns[other.oos_returns["date"] > day]["ret"].to_numpy()
    assert not np.array_equal(after_a, after_b)  # the perturbation did reach the later folds


def test_python_strategy_path_equals_kernel_path(panel):
    def sma_in_python(prices, fast=10, slow=50):
        return sma_crossover(prices, fast=fast, slow=slow)

    register(strategy_from_function(sma_in_python, name="sma_in_python", integer_params=("fast", "slow")))
    for objective in ("sharpe", "sortino", "total_return", "calmar"):
        kernel = study(panel, StudyConfig(grid=SMALL_GRID, folds=FOLDS, fees_bps=4, objective=objective))
        python = study(
            panel, StudyConfig("sma_in_python", SMALL_GRID, FOLDS, fees_bps=4, objective=objective)
        )
        assert_same_results(kernel, python)


def test_phases_follow_their_definitions(panel):
    config = StudyConfig(grid=SMALL_GRID, folds=FOLDS, fees_bps=10, top_k=3, min_trades=2)
    first, last = date_range(panel)
    plan = StudyPlan.create(config, first, last)
    result = run_chunk(panel, plan)
    sel = result.selections
    chosen = sel[sel["basis"] != "skipped"]
    assert len(chosen) > 20
    strategy = get_strategy("sma_crossover")
    from backtest.engine.folds import FoldLayout
    from backtest.engine.simulate_nb import weights_scores_nb

    layout = FoldLayout.build(plan.folds, panel.dates)
    all_scores = []
    for k in range(len(plan.combos)):
        w = strategy.weights(panel, plan.combo_params(k))
        all_scores.append(
            weights_scores_nb(
                w,
                panel.open,
                panel.close,
                layout.seg_bounds,
                layout.win_segs,
                config.cost,
                False,
                0,
                20,
                np.zeros(0),
                np.zeros((0, 0)),
            )
        )
    for row in chosen.itertuples():
        i = panel.symbols.index(row.symbol)
        train = np.array([s[0][i, 3 * row.fold] for s in all_scores])
        trades = np.array([s[1][i, 3 * row.fold] for s in all_scores])
        valid = np.array([s[0][i, 3 * row.fold + 1] for s in all_scores])
        eligible = np.isfinite(train) & (trades >= 2)
        order = sorted(np.flatnonzero(eligible), key=lambda k: (-train[k], k))[:3]
        assert row.combo in order  # phase 1: among the top K
        assert row.is_score == train[row.combo]
        if row.basis == "validation":  # phase 2: best validation score among the K
            assert row.val_score == np.nanmax(valid[order])
        # phase 3: every test day but the first is the full-history return of the selected parameters
        w = strategy.weights(panel.select([row.symbol]), plan.combo_params(row.combo))
        sub = panel.select([row.symbol])
        full, _, _ = simulate_nb(w, sub.open, sub.close, config.cost, False)
        full = pd.Series(full[0], index=sub.dates)
        days = result.oos_returns[
            (result.oos_returns["symbol"] == row.symbol) & (result.oos_returns["fold"] == row.fold)
        ]
        got = days["ret"].to_numpy()[1:]
        want = full.loc[days["date"].to_numpy()[1:]].to_numpy()
        np.testing.assert_array_equal(got, want)


def test_user_strategy_by_module_path(tmp_path, panel, monkeypatch):
    (tmp_path / "my_strats.py").write_text(
        textwrap.dedent(
            """
            import numpy as np

            def reversal(prices, lookback=5):
                c = prices.close
                past = np.roll(c, int(lookback), axis=1)
                w = np.where(c < past, 1.0, 0.0)
                w[:, : int(lookback)] = 0.0
                return np.nan_to_num(w)

            def bad_shape(prices, n=1):
                return np.zeros((1, 1))

            def too_big(prices, n=1):
                return np.full(prices.close.shape, 2.0)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    result = study(
        panel, StudyConfig("my_strats:reversal", ParamGrid.from_mapping({"lookback": [3, 5, 10]}), FOLDS)
    )
    assert set(result.selections["param_lookback"].dropna()) <= {3.0, 5.0, 10.0}
    assert result.symbol_metrics["days"].sum() > 0
    with pytest.raises(StrategyError, match=r"returned shape \(1, 1\), expected"):
        study(panel, StudyConfig("my_strats:bad_shape", folds=FOLDS))
    with pytest.raises(StrategyError, match=r"must lie in \[-1, 1\]"):
        study(panel, StudyConfig("my_strats:too_big", folds=FOLDS))
    sys.modules.pop("my_strats", None)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (StudyConfig("no_such_strategy"), "unknown strategy 'no_such_strategy'"),
        (
            StudyConfig(grid=ParamGrid.from_mapping({"fast": [50], "slow": [20]})),
            "fast .* must be below slow",
        ),
        (StudyConfig(grid=ParamGrid.from_mapping({"speed": [1]})), "has no parameter speed"),
        (StudyConfig(grid=ParamGrid.from_mapping({"fast": [2.5], "slow": [20]})), "whole numbers"),
        (StudyConfig(folds=FoldSpec(0.5, 1, 1)), "slowest indicator"),
        (
            StudyConfig(
                grid=ParamGrid.from_mapping({"fast": list(range(1, 1001)), "slow": list(range(1001, 2001))})
            ),
            "1,000,000 combinations",
        ),
    ],
)
def test_bad_configurations_are_refused_before_any_work(panel, config, message):
    first, last = date_range(panel)
    with pytest.raises(ConfigError, match=message):
        StudyPlan.create(config, first, last)


def test_portfolio_is_equal_weight_of_symbols_with_a_return(panel):
    result = study(panel, StudyConfig(grid=SMALL_GRID, folds=FOLDS))
    by_day = result.oos_returns.groupby("date")["ret"].agg(["mean", "count"])
    port = result.portfolio.set_index("date")
    np.testing.assert_allclose(port["ret"].to_numpy(), by_day["mean"].to_numpy(), rtol=1e-12)
    np.testing.assert_array_equal(port["n_symbols"].to_numpy(), by_day["count"].to_numpy())
    np.testing.assert_allclose(port["equity"].to_numpy(), np.cumprod(1 + by_day["mean"].to_numpy()))
    assert result.portfolio_metrics["days"] == len(port)


def test_per_symbol_function_records_errors_per_symbol(tmp_path, monkeypatch):
    (tmp_path / "seed_style.py").write_text(
        textwrap.dedent(
            """
            def summary(symbol, frame):
                if symbol == "S001":
                    raise ValueError("no luck")
                return {"mean_close": float(frame["close"].mean()), "first": str(frame.index[0].date())}
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    panel = random_panel(4, 300, seed=2)
    out = run_per_symbol(panel, load_function("seed_style:summary"))
    assert list(out["symbol"]) == list(panel.symbols)
    assert out.loc[1, "error"].startswith("ValueError: no luck")
    ok = out[out["error"].isna()]
    for row in ok.itertuples():
        assert row.mean_close == pytest.approx(np.nanmean(panel.close[panel.symbols.index(row.symbol)]))
    with pytest.raises(ConfigError, match=r"package\.module:function"):
        load_function("nocolon")
    sys.modules.pop("seed_style", None)
