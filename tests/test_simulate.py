"""Returns, window scores and trade counts of backtest.engine.simulate_nb against the references."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from backtest.config import FoldSpec
from backtest.engine.folds import FoldLayout, make_folds
from backtest.engine.metrics import series_metrics
from backtest.engine.signals_nb import (
    BOLLINGER_REVERSION,
    BUY_AND_HOLD,
    DONCHIAN_BREAKOUT,
    MOMENTUM,
    RSI_REVERSION,
    SMA_CROSSOVER,
)
from backtest.engine.simulate_nb import builtin_weights_nb, grid_scores_nb, simulate_nb, weights_scores_nb
from tests import reference as ref

EXECUTIONS = ("close", "next_open")
OBJECTIVE_IDS = {name: i for i, name in enumerate(ref.OBJECTIVES)}  # the kernels' OBJ_* order

# small grids per built-in, rows in the kernels' parameter layout
GRIDS = {
    "sma_crossover": (SMA_CROSSOVER, [[3, 10, 0], [5, 20, 0], [2, 8, 1]]),
    "momentum": (MOMENTUM, [[5], [20]]),
    "rsi_reversion": (RSI_REVERSION, [[5, 30, 70], [14, 40, 60]]),
    "bollinger_reversion": (BOLLINGER_REVERSION, [[10, 1.0], [20, 2.0]]),
    "donchian_breakout": (DONCHIAN_BREAKOUT, [[5], [20]]),
    "buy_and_hold": (BUY_AND_HOLD, [[0.0]]),
}


def assert_same(got: np.ndarray, expected: np.ndarray, rtol: float = 1e-9, atol: float = 0.0, what: str = ""):
    """Equal to ``rtol`` (plus ``atol``), NaN and infinities in the same places."""
    got = np.asarray(got, dtype=float)
    expected = np.asarray(expected, dtype=float)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected), err_msg=f"{what}: NaN positions differ")
    np.testing.assert_array_equal(np.isinf(got), np.isinf(expected), err_msg=f"{what}: inf positions differ")
    fin = np.isfinite(expected)
    np.testing.assert_array_equal(got[~fin & ~np.isnan(expected)], expected[~fin & ~np.isnan(expected)])
    if np.isfinite(rtol):
        np.testing.assert_allclose(got[fin], expected[fin], rtol=rtol, atol=atol, err_msg=what)


def score_tolerance(objective: str, r: np.ndarray) -> tuple[float, float]:
    """(rtol, atol) for a kernel score of a window with returns ``r`` against the reference.

    The kernels build window statistics from differences of running sums (docs/design.md section 4), so beyond
    rtol 1e-9 they carry the conditioning of that method: the one-pass variance loses relative accuracy by
    its condition number 1 + mean^2/var = 1 + sharpe^2/252 (only near-constant returns, |sharpe| in the
    thousands, make that matter), and differences of running sums leave an absolute error of a few ulps of
    the running totals, which matters only for scores near 0 (mean, total return or CAGR close to 0).
    """
    n = len(r)
    if objective == "sharpe":
        s = ref.sharpe(r)
        return (1e-9 * (1.0 + s * s / 252.0), 1e-10) if np.isfinite(s) else (1e-9, 0.0)
    if objective == "sortino":
        return 1e-9, 1e-10
    if objective == "total_return":
        return 1e-9, 1e-12 * (1.0 + abs(ref.total_return(r)))
    dd = ref.max_drawdown(r)
    growth = ref.total_return(r) + 1.0
    if n == 0 or dd <= 0.0 or growth < 0.0:
        return 1e-9, 0.0
    return 1e-9, 1e-12 * (252.0 / n) * growth ** (252.0 / n) / dd


def assert_scores_close(got, expected, objective, per_window, what=""):
    """Scores (symbols x windows) equal the reference's: NaN and inf in the same places, finite values to
    the tolerance of :func:`score_tolerance`."""
    assert_same(got, expected, rtol=np.inf, what=what)  # NaN / inf positions and infinite values
    for i, row in enumerate(per_window):
        for k, r in enumerate(row):
            if np.isfinite(expected[i, k]):
                rtol, atol = score_tolerance(objective, r)
                assert abs(got[i, k] - expected[i, k]) <= atol + rtol * abs(expected[i, k]), (
                    f"{what} {objective}: symbol {i} window {k} ({len(r)} returns): "
                    f"got {got[i, k]!r}, expected {expected[i, k]!r}"
                )


@st.composite
def gappy_prices(draw, max_sym: int = 3, min_bars: int = 1, max_bars: int = 160):
    """(open, high, low, close) on a calendar, NaN where a symbol has no bar (continuous prices: no ties)."""
    n_sym = draw(st.integers(1, max_sym))
    n_bars = draw(st.one_of(st.integers(min_bars, max_bars), st.integers(max_bars // 2, max_bars)))
    seed = draw(st.integers(0, 2**32 - 1))
    vol = draw(st.sampled_from([0.005, 0.02]))
    p_missing = draw(st.sampled_from([0.0, 0.05, 0.3]))
    return ref.with_gaps(seed + 1, ref.random_ohlc(seed, n_sym, n_bars, vol), p_missing)


@st.composite
def layouts(draw, n_bars: int):
    """Segment boundaries (calendar indices) and every window made of consecutive segments.

    All (start, end) segment pairs: overlapping windows, nested windows and windows sharing a start, as the
    rolling and anchored train windows of the folds do.
    """
    bounds = sorted(draw(st.lists(st.integers(0, n_bars), min_size=2, max_size=7, unique=True)))
    n_seg = len(bounds) - 1
    win = [(a, b) for a in range(n_seg) for b in range(a + 1, n_seg + 1)]
    return np.array(bounds, np.int64), np.array(win, np.int64).reshape(-1, 2)


# --- simulate_nb ------------------------------------------------------------------------------------------


def _simulate(w, o, c, cost, execution):
    return simulate_nb(np.ascontiguousarray(w), o, c, cost, execution == "next_open")


def test_simulate_example_close():
    c = np.array([[10.0, 11.0, 12.1, 12.1]])
    w = np.array([[1.0, 1.0, 0.0, -0.5]])
    rets, traded, held = _simulate(w, c, c, 0.01, "close")
    expected = [-0.01, 0.1, 1.1 * 0.99 - 1.0, -0.005]  # the first bar pays for entering
    np.testing.assert_allclose(rets[0], expected, rtol=1e-12)
    np.testing.assert_array_equal(traded[0], [1, 0, 1, 0.5])
    np.testing.assert_array_equal(held[0], [1, 1, 0, -0.5])


def test_simulate_example_next_open():
    o = np.array([[10.0, 10.5, 12.0, 11.0]])
    c = np.array([[10.0, 11.0, 12.1, 12.1]])
    w = np.array([[1.0, 1.0, 0.0, 0.0]])
    rets, traded, held = _simulate(w, o, c, 0.01, "next_open")
    expected = [
        0.0,  # decided at bar 0's close, nothing filled yet
        0.99 * (11.0 / 10.5) - 1.0,  # filled at bar 1's open, paying 1%, then the day's move
        12.1 / 11.0 - 1.0,  # held overnight and through the day
        (11.0 / 12.1) * 0.99 - 1.0,  # the gap down, then sold at the open
    ]
    np.testing.assert_allclose(rets[0], expected, rtol=1e-12)
    np.testing.assert_array_equal(traded[0], [0, 1, 0, 1])
    np.testing.assert_array_equal(held[0], [0, 1, 1, 0])


def test_simulate_gap_spans_from_last_close():
    c = np.array([[10.0, np.nan, np.nan, 12.0, 13.2]])
    w = np.array([[1.0, -1.0, 0.0, 1.0, 1.0]])  # weights on missing days are ignored
    rets, traded, held = _simulate(w, c, c, 0.0, "close")
    np.testing.assert_allclose(rets[0, [0, 3, 4]], [0.0, 0.2, 0.1], rtol=1e-12)
    assert np.isnan(rets[0, 1:3]).all()
    np.testing.assert_array_equal(traded[0], [1, 0, 0, 0, 0])
    np.testing.assert_array_equal(held[0], [1, 0, 0, 1, 1])


@settings(max_examples=60, deadline=None)
@given(
    prices=gappy_prices(),
    seed=st.integers(0, 2**32 - 1),
    cost=st.sampled_from([0.0, 0.0005, 0.01]),
    execution=st.sampled_from(EXECUTIONS),
)
def test_simulate_matches_reference(prices, seed, cost, execution):
    o, _, _, c = prices
    w = ref.random_weights(seed, c.shape)  # non-zero on missing days too: must be ignored
    rets, traded, held = _simulate(w, o, c, cost, execution)
    assert_same(rets, ref.calendar_returns(w, o, c, cost, execution), rtol=1e-12, atol=1e-15, what="returns")
    exp_traded, exp_held = ref.positions(w, c, execution)
    np.testing.assert_array_equal(traded, exp_traded)
    np.testing.assert_array_equal(held, exp_held)


@settings(max_examples=60, deadline=None)
@given(
    prices=gappy_prices(),
    kind=st.sampled_from(sorted(g[0] for g in GRIDS.values())),
    cut=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
    execution=st.sampled_from(EXECUTIONS),
)
def test_returns_do_not_look_ahead(prices, kind, cut, seed, execution):
    """Changing prices after bar t never changes the returns (of a built-in's weights) up to t."""
    params = {g[0]: np.array(g[1][0], float) for g in GRIDS.values()}[kind]
    o, h, lo, c = prices
    t = int(cut * (c.shape[1] - 1))
    factor = np.exp(np.random.default_rng(seed).normal(0.0, 0.1, c.shape))
    factor[:, : t + 1] = 1.0

    def returns(o, h, lo, c):
        rows = np.tile(params, (c.shape[0], 1))
        w = builtin_weights_nb(kind, rows, h, lo, c)
        return _simulate(w, o, c, 0.001, execution)[0]

    before = returns(o, h, lo, c)
    after = returns(*(np.ascontiguousarray(x * factor) for x in (o, h, lo, c)))
    np.testing.assert_array_equal(after[:, : t + 1], before[:, : t + 1])


# --- window scores -----------------------------------------------------------------------------------------


def reference_grid(kind, params, o, h, lo, c, seg_bounds, win_segs, cost, execution, objective, min_bars):
    """Reference weights -> reference returns -> reference window objective, per combination."""
    n_sym = c.shape[0]
    scores = np.full((n_sym, len(params), len(win_segs)), np.nan)
    trades = np.zeros_like(scores)
    per_window = []
    for k, row in enumerate(params):
        w = ref.calendar_weights(kind, row, h, lo, c)
        r = ref.calendar_returns(w, o, c, cost, execution)
        scores[:, k], trades[:, k] = ref.window_scores(w, r, c, seg_bounds, win_segs, objective, min_bars)
        per_window.append(ref.window_returns(r, c, seg_bounds, win_segs))
    return scores, trades, per_window


#: the kernels' optional outputs left empty: no trials' returns wanted
NO_TRIALS, NO_FULL = np.zeros((0, 0)), np.zeros((0, 0, 0))
NO_ROW = (np.zeros(0), np.zeros((0, 0)))


def assert_trials_match(kind, params, o, h, lo, c, seg_bounds, cost, execution, trials, full):
    """The trials' returns the grid kernel adds up in passing equal the reference's calendar returns, summed
    over symbols, on the days between the first and last segment boundary (elsewhere: 0)."""
    span = np.zeros(c.shape[1], dtype=bool)
    span[seg_bounds[0] : seg_bounds[-1]] = True
    for k, row in enumerate(params):
        w = builtin_weights_nb(kind, np.tile(row, (c.shape[0], 1)), h, lo, c)
        r = np.where(span, ref.calendar_returns(w, o, c, cost, execution), np.nan)
        np.testing.assert_allclose(trials[k], np.nansum(r, axis=0), rtol=1e-12, atol=1e-15)
        expected = np.stack([np.isfinite(r).sum(1), np.nansum(r, 1), np.nansum(r * r, 1)], axis=1)
        np.testing.assert_allclose(full[:, k], expected, rtol=1e-10, atol=1e-15)


def no_ties(kind, params, h, lo, c) -> bool:
    """True when no bar is too close to call (see reference.ambiguous_bars); continuous prices: always."""
    for row in params:
        for i in range(c.shape[0]):
            ok = ~np.isnan(c[i])
            if ref.ambiguous_bars(kind, row, h[i, ok], lo[i, ok], c[i, ok]).any():
                return False
    return True


@pytest.mark.parametrize("name", list(GRIDS))
@settings(max_examples=15, deadline=None)
@given(
    data=st.data(),
    prices=gappy_prices(min_bars=2),
    cost=st.sampled_from([0.0, 0.001]),
    execution=st.sampled_from(EXECUTIONS),
    min_bars=st.sampled_from([1, 2, 3, 10]),
)
def test_grid_scores_match_reference(name, data, prices, cost, execution, min_bars):
    kind, grid = GRIDS[name]
    params = np.array(grid, dtype=float)
    o, h, lo, c = prices
    seg_bounds, win_segs = data.draw(layouts(c.shape[1]))
    assume(no_ties(kind, params, h, lo, c))
    for objective, obj_id in OBJECTIVE_IDS.items():
        trials = np.zeros((len(params), c.shape[1]))
        full = np.zeros((c.shape[0], len(params), 3))
        scores, trades = grid_scores_nb(
            kind,
            params,
            o,
            h,
            lo,
            c,
            seg_bounds,
            win_segs,
            cost,
            execution == "next_open",
            obj_id,
            min_bars,
            trials,
            full,
        )
        assert_trials_match(kind, params, o, h, lo, c, seg_bounds, cost, execution, trials, full)
        exp_scores, exp_trades, per_window = reference_grid(
            kind, params, o, h, lo, c, seg_bounds, win_segs, cost, execution, objective, min_bars
        )
        for k in range(len(params)):
            assert_scores_close(scores[:, k], exp_scores[:, k], objective, per_window[k], what=f"combo {k}")
        np.testing.assert_array_equal(trades, exp_trades)
        # the path of Python strategies: the same weights, given as an array, score the same
        for k in range(len(params)):
            w = builtin_weights_nb(kind, np.tile(params[k], (c.shape[0], 1)), h, lo, c)
            w_trials, w_full = np.zeros(c.shape[1]), np.zeros((c.shape[0], 3))
            w_scores, w_trades = weights_scores_nb(
                w,
                o,
                c,
                seg_bounds,
                win_segs,
                cost,
                execution == "next_open",
                obj_id,
                min_bars,
                w_trials,
                w_full,
            )
            np.testing.assert_array_equal(w_trials, trials[k])
            np.testing.assert_array_equal(w_full, full[:, k])
            np.testing.assert_array_equal(w_scores, scores[:, k])
            np.testing.assert_array_equal(w_trades, trades[:, k])


def test_grid_scores_on_fold_layout():
    """The layout the study builds (rolling train windows from make_folds) on a business-day calendar."""
    dates = np.arange(np.datetime64("2010-01-04"), np.datetime64("2013-01-01"), dtype="datetime64[D]")
    dates = dates[np.is_busday(dates)]
    folds = make_folds(dt.date(2010, 1, 4), dt.date(2012, 12, 31), FoldSpec(1.0, 0.5, 0.25))
    layout = FoldLayout.build(folds, dates)
    assert len(folds) >= 4
    arrays = ref.random_ohlc(7, 3, len(dates), 0.015)
    o, h, lo, c = ref.with_gaps(8, arrays, 0.02)
    kind, grid = GRIDS["sma_crossover"]
    params = np.array(grid, dtype=float)
    for objective, obj_id in OBJECTIVE_IDS.items():
        for execution in EXECUTIONS:
            scores, trades = grid_scores_nb(
                kind,
                params,
                o,
                h,
                lo,
                c,
                layout.seg_bounds,
                layout.win_segs,
                0.001,
                execution == "next_open",
                obj_id,
                20,
                NO_TRIALS,
                NO_FULL,
            )
            exp_scores, exp_trades, per_window = reference_grid(
                kind, params, o, h, lo, c, layout.seg_bounds, layout.win_segs, 0.001, execution, objective, 20
            )
            for k in range(len(params)):
                assert_scores_close(scores[:, k], exp_scores[:, k], objective, per_window[k], what=execution)
            np.testing.assert_array_equal(trades, exp_trades)


# --- trades per window --------------------------------------------------------------------------------------


def test_trades_example():
    """An already-open position counts as one trade; a gap at the window's start is not a bar."""
    c = np.array([[10.0, 10.0, np.nan, 10.0, 10.0, 10.0]])
    w = np.array([[1.0, 1.0, 0.0, 1.0, 0.0, 0.0]])
    seg_bounds = np.array([0, 1, 2, 3, 6], np.int64)
    win_segs = np.array([[0, 4], [1, 4], [2, 4], [3, 4], [1, 2]], np.int64)
    _, trades = weights_scores_nb(w, c, c, seg_bounds, win_segs, 0.0, False, 0, 1, *NO_ROW)
    # [0,6): enter, (bar 1 holds), bar 4 exits -> 2; [1,6): open at bar 1 -> 1, exit -> 2;
    # [2,6): first own bar is 3 (holding) -> 1, exit -> 2; [3,6): same; [1,2): the open position -> 1
    np.testing.assert_array_equal(trades[0], [2, 2, 2, 2, 1])


@settings(max_examples=60, deadline=None)
@given(data=st.data(), prices=gappy_prices(min_bars=2), seed=st.integers(0, 2**32 - 1))
def test_trades_per_window_match_reference(data, prices, seed):
    o, _, _, c = prices
    seg_bounds, win_segs = data.draw(layouts(c.shape[1]))
    w = ref.random_weights(seed, c.shape)
    r = ref.calendar_returns(w, o, c, 0.0, "close")
    _, exp_trades = ref.window_scores(w, r, c, seg_bounds, win_segs, "total_return", 1)
    for next_open in (False, True):
        _, trades = weights_scores_nb(w, o, c, seg_bounds, win_segs, 0.0, next_open, 2, 1, *NO_ROW)
        np.testing.assert_array_equal(trades, exp_trades)


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    prices=gappy_prices(min_bars=2),
    seed=st.integers(0, 2**32 - 1),
    cost=st.sampled_from([0.0, 0.002]),
    execution=st.sampled_from(EXECUTIONS),
    min_bars=st.sampled_from([1, 2, 5]),
)
def test_weights_scores_match_reference(data, prices, seed, cost, execution, min_bars):
    """Arbitrary weights in [-1, 1] (shorts, partial positions), every objective."""
    o, _, _, c = prices
    seg_bounds, win_segs = data.draw(layouts(c.shape[1]))
    w = ref.random_weights(seed, c.shape)
    r = ref.calendar_returns(w, o, c, cost, execution)
    for objective, obj_id in OBJECTIVE_IDS.items():
        scores, _ = weights_scores_nb(
            w, o, c, seg_bounds, win_segs, cost, execution == "next_open", obj_id, min_bars, *NO_ROW
        )
        exp_scores, _ = ref.window_scores(w, r, c, seg_bounds, win_segs, objective, min_bars)
        assert_scores_close(scores, exp_scores, objective, ref.window_returns(r, c, seg_bounds, win_segs))


# --- a wiped-out position -------------------------------------------------------------------------------------


def _wipe_out_case():
    """A short through a doubling: bar 2 returns exactly -100%; later segments trade normally."""
    c = np.array([[10.0, 10.0, 20.0, 20.0, 21.0, 22.0, 21.5, 23.0, 24.0, 22.0]])
    w = np.array([[0.0, -1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0]])
    seg_bounds = np.array([0, 4, 7, 10], np.int64)
    win_segs = np.array([[0, 1], [1, 2], [2, 3], [1, 3], [0, 3]], np.int64)
    return w, c, seg_bounds, win_segs


@pytest.mark.parametrize("objective", ["total_return", "calmar", "sharpe"])
def test_window_scores_after_a_wipe_out(objective):
    """A window's score depends only on the returns inside it, even after an earlier -100% day."""
    w, c, seg_bounds, win_segs = _wipe_out_case()
    r = ref.calendar_returns(w, c, c, 0.0, "close")
    assert r[0, 2] == -1.0
    expected, _ = ref.window_scores(w, r, c, seg_bounds, win_segs, objective, 1)
    scores, _ = weights_scores_nb(
        w, c, c, seg_bounds, win_segs, 0.0, False, OBJECTIVE_IDS[objective], 1, *NO_ROW
    )
    assert_scores_close(scores, expected, objective, ref.window_returns(r, c, seg_bounds, win_segs))


def test_sharpe_of_identical_returns_is_nan():
    """Buy and hold on 1, 1.01, 1.01^2, 1.01^3: three identical returns (bit for bit), so std = 0 and the
    window's Sharpe is NaN, not the ratio to a rounding residue of the running sums.

    The closes are built by repeated multiplication (correctly rounded everywhere): numpy's vectorised power
    differs between CPUs in the last bit (on an AMD EPYC here ``1.01 ** 3.0`` is 1.030301, one ulp below
    Python's), which made the three returns differ and this test fail on such machines."""
    closes = [1.0]
    for _ in range(3):
        closes.append(closes[-1] * 1.01)
    c = np.array(closes)[None, :]
    r = ref.calendar_returns(np.ones_like(c), c, c, 0.0, "close")[0, 1:]
    assert r[0] == r[1] == r[2] != 0.0
    seg_bounds = np.array([1, 4], np.int64)
    win_segs = np.array([[0, 1]], np.int64)
    scores, _ = weights_scores_nb(np.ones_like(c), c, c, seg_bounds, win_segs, 0.0, False, 0, 1, *NO_ROW)
    assert np.isnan(scores[0, 0]), f"sharpe of three returns of {r[0]!r}: got {scores[0, 0]!r}, expected NaN"


def test_total_return_when_equity_goes_below_zero():
    """A short through a 150% rise returns -150% that day; the window's total return is prod(1 + r) - 1
    (as series_metrics reports it), not clipped at -100%."""
    c = np.array([[10.0, 10.0, 25.0, 25.0, 26.0]])
    w = np.array([[0.0, -1.0, 0.0, 1.0, 1.0]])
    r = ref.calendar_returns(w, c, c, 0.0, "close")
    np.testing.assert_allclose(r[0], [0.0, 0.0, -1.5, 0.0, 0.04], atol=1e-15)
    seg_bounds = np.array([0, 2, 5], np.int64)
    win_segs = np.array([[0, 2], [1, 2]], np.int64)
    expected, _ = ref.window_scores(w, r, c, seg_bounds, win_segs, "total_return", 1)
    np.testing.assert_allclose(expected[0], [-0.5 * 1.04 - 1.0] * 2, rtol=1e-12)
    assert series_metrics(r[0])["total_return"] == pytest.approx(expected[0, 0], rel=1e-12)
    scores, _ = weights_scores_nb(
        w, c, c, seg_bounds, win_segs, 0.0, False, OBJECTIVE_IDS["total_return"], 1, *NO_ROW
    )
    assert_scores_close(scores, expected, "total_return", ref.window_returns(r, c, seg_bounds, win_segs))
