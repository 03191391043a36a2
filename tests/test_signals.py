"""The built-in strategy kernels (backtest.engine.signals_nb) and their panel wrappers against the references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backtest.data.panel import PricePanel
from backtest.engine import strategies
from backtest.engine.signals_nb import (
    BOLLINGER_REVERSION,
    BUY_AND_HOLD,
    DONCHIAN_BREAKOUT,
    MOMENTUM,
    RSI_REVERSION,
    SMA_CROSSOVER,
    bollinger_reversion_nb,
    donchian_breakout_nb,
    momentum_nb,
    prefix_sums_nb,
    rsi_reversion_nb,
    sma_crossover_nb,
)
from tests import reference as ref

SETTINGS = settings(max_examples=40, deadline=None)

# --- helpers ------------------------------------------------------------------------------------------


def _prefix(close: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prefix = np.empty(len(close) + 1)
    prefix_sq = np.empty(len(close) + 1)
    prefix_sums_nb(close, prefix, prefix_sq)
    return prefix, prefix_sq


def run_kernel(kind: int, params, high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    """Call one strategy kernel directly on a compact row."""
    out = np.full(len(close), np.nan)
    if kind == SMA_CROSSOVER:
        sma_crossover_nb(_prefix(close)[0], int(params[0]), int(params[1]), bool(params[2]), out)
    elif kind == MOMENTUM:
        momentum_nb(close, int(params[0]), out)
    elif kind == RSI_REVERSION:
        rsi_reversion_nb(close, int(params[0]), float(params[1]), float(params[2]), out)
    elif kind == BOLLINGER_REVERSION:
        prefix, prefix_sq = _prefix(close)
        bollinger_reversion_nb(close, prefix, prefix_sq, int(params[0]), float(params[1]), out)
    elif kind == DONCHIAN_BREAKOUT:
        donchian_breakout_nb(high, low, close, int(params[0]), out, np.empty(2 * len(close), np.int64))
    else:
        raise ValueError(kind)
    return out


def assert_weights_match(kind: int, params, high, low, close, got: np.ndarray) -> None:
    """Kernel weights equal the reference's, except at bars too close to call (see reference.ambiguous_bars).

    SMA comparisons via prefix sums can differ from a direct mean at exact ties, so bars where
    |SMA_fast - SMA_slow| < 1e-9 * price level are skipped; Bollinger's band edges and RSI's thresholds
    likewise, but those are state machines, so the comparison stops at the first such bar.
    """
    expected = ref.weights_from_params(kind, params, high, low, close)
    amb = ref.ambiguous_bars(kind, params, high, low, close)
    assert got.shape == expected.shape
    if kind in ref.STATEFUL_KINDS:
        stop = int(np.argmax(amb)) if amb.any() else len(close)
        keep = np.arange(len(close)) < stop
    else:
        keep = ~amb
    bad = np.flatnonzero(keep & (got != expected))
    assert bad.size == 0, (
        f"kind {kind} params {list(params)}: first mismatch at bar {bad[0] if bad.size else None}: "
        f"got {got[bad[:5]]}, expected {expected[bad[:5]]}"
    )


@st.composite
def compact_rows(draw, min_size: int = 1, max_size: int = 250, ticks=(None, None, 0.01, 1.0)):
    """(high, low, close) of one symbol's own bars: a random walk, sometimes on a coarse tick (ties)."""
    n = draw(st.one_of(st.integers(min_size, max_size), st.integers(max_size // 2, max_size)))
    seed = draw(st.integers(0, 2**32 - 1))
    vol = draw(st.sampled_from([0.002, 0.01, 0.03]))
    tick = draw(st.sampled_from(ticks))
    _, high, low, close = ref.random_ohlc(seed, 1, n, vol, tick)
    return high[0], low[0], close[0]


def sma_params():
    return st.tuples(st.integers(1, 40), st.integers(1, 60), st.sampled_from([0.0, 1.0]))


def rsi_params():
    return st.tuples(st.integers(1, 25), st.floats(0.0, 60.0), st.floats(40.0, 100.0)).filter(
        lambda p: p[1] < p[2]
    )


def bollinger_params():
    return st.tuples(st.integers(2, 40), st.floats(0.1, 3.0))


KIND_PARAMS = {
    SMA_CROSSOVER: sma_params(),
    MOMENTUM: st.tuples(st.integers(1, 40)),
    RSI_REVERSION: rsi_params(),
    BOLLINGER_REVERSION: bollinger_params(),
    DONCHIAN_BREAKOUT: st.tuples(st.integers(1, 40)),
    BUY_AND_HOLD: st.just((0.0,)),
}


def any_kind_and_params():
    return st.sampled_from(sorted(KIND_PARAMS)).flatmap(lambda k: st.tuples(st.just(k), KIND_PARAMS[k]))


# --- hand-checked examples (they check the references too) --------------------------------------------


def test_sma_crossover_example():
    close = np.array([1.0, 2, 3, 4, 5, 4, 3, 2, 1, 1])
    long_only = [0, 0, 1, 1, 1, 1, 0, 0, 0, 0]
    long_short = [0, 0, 1, 1, 1, 1, -1, -1, -1, -1]
    for short, expected in ((0.0, long_only), (1.0, long_short)):
        np.testing.assert_array_equal(ref.sma_crossover(close, 2, 3, bool(short)), expected)
        np.testing.assert_array_equal(run_kernel(SMA_CROSSOVER, (2, 3, short), close, close, close), expected)


def test_momentum_example():
    close = np.array([1.0, 2, 1, 1, 3])
    expected = [0, 0, 0, 0, 1]  # 1 > 1 is not a rise
    np.testing.assert_array_equal(ref.momentum(close, 2), expected)
    np.testing.assert_array_equal(run_kernel(MOMENTUM, (2,), close, close, close), expected)


def test_rsi_reversion_example():
    # changes +1 +1 -1 -1 0 +2; period 2: RSI 100, 50, 25, 25, 85 from bar 2
    close = np.array([10.0, 11, 12, 11, 10, 10, 12])
    np.testing.assert_allclose(ref.wilder_rsi(close, 2)[2:], [100, 50, 25, 25, 85])
    expected = [0, 0, 0, 0, 1, 1, 0]
    np.testing.assert_array_equal(ref.rsi_reversion(close, 2, 30, 70), expected)
    np.testing.assert_array_equal(run_kernel(RSI_REVERSION, (2, 30, 70), close, close, close), expected)


def test_rsi_is_50_without_any_change():
    close = np.full(5, 7.0)
    expected = [0, 0, 1, 1, 1]  # RSI 50 < 60 from bar 2
    np.testing.assert_array_equal(ref.rsi_reversion(close, 2, 60, 80), expected)
    np.testing.assert_array_equal(run_kernel(RSI_REVERSION, (2, 60, 80), close, close, close), expected)
    np.testing.assert_array_equal(run_kernel(RSI_REVERSION, (2, 40, 80), close, close, close), 0)


def test_bollinger_reversion_example():
    # window 3, k 1: bar 3 closes 7 < 9 - sqrt(2); bar 4 stays long inside the band; bar 5 closes above SMA
    close = np.array([10.0, 10, 10, 7, 8, 11, 9])
    expected = [0, 0, 0, 1, 1, 0, 0]
    np.testing.assert_array_equal(ref.bollinger_reversion(close, 3, 1.0), expected)
    np.testing.assert_array_equal(run_kernel(BOLLINGER_REVERSION, (3, 1.0), close, close, close), expected)


def test_donchian_breakout_example():
    close = np.array([1.0, 2, 3, 2, 1, 0.5, 4])
    high = close + 0.25
    low = close - 0.25
    # window 2: bar 2 closes 3 > 2.25; bar 3 (2) stays inside [1.75, 3.25]; bar 4 closes 1 < 1.75; bar 6 4 > 1.25
    expected = [0, 0, 1, 1, 0, 0, 1]
    np.testing.assert_array_equal(ref.donchian_breakout(high, low, close, 2), expected)
    np.testing.assert_array_equal(run_kernel(DONCHIAN_BREAKOUT, (2,), high, low, close), expected)


@pytest.mark.parametrize(
    "kind", [SMA_CROSSOVER, MOMENTUM, RSI_REVERSION, BOLLINGER_REVERSION, DONCHIAN_BREAKOUT]
)
def test_kernels_on_short_rows_are_flat(kind):
    """Rows shorter than the warm-up give all-zero weights (including a single bar)."""
    params = {
        SMA_CROSSOVER: (5, 10, 1.0),
        MOMENTUM: (10,),
        RSI_REVERSION: (10, 30, 70),
        BOLLINGER_REVERSION: (10, 1.0),
        DONCHIAN_BREAKOUT: (10,),
    }[kind]
    for n in (1, 2, 9):
        close = np.linspace(10.0, 5.0, n)
        np.testing.assert_array_equal(run_kernel(kind, params, close, close, close), np.zeros(n))


# --- each kernel against its reference on random compact rows ------------------------------------------


@SETTINGS
@given(row=compact_rows(), params=sma_params())
def test_sma_crossover_kernel(row, params):
    assert_weights_match(SMA_CROSSOVER, params, *row, run_kernel(SMA_CROSSOVER, params, *row))


@SETTINGS
@given(row=compact_rows(), params=st.tuples(st.integers(1, 40)))
def test_momentum_kernel(row, params):
    assert_weights_match(MOMENTUM, params, *row, run_kernel(MOMENTUM, params, *row))


@SETTINGS
@given(row=compact_rows(), params=rsi_params())
def test_rsi_reversion_kernel(row, params):
    assert_weights_match(RSI_REVERSION, params, *row, run_kernel(RSI_REVERSION, params, *row))


@SETTINGS
@given(row=compact_rows(), params=bollinger_params())
def test_bollinger_reversion_kernel(row, params):
    assert_weights_match(BOLLINGER_REVERSION, params, *row, run_kernel(BOLLINGER_REVERSION, params, *row))


@SETTINGS
@given(row=compact_rows(), params=st.tuples(st.integers(1, 40)))
def test_donchian_breakout_kernel(row, params):
    assert_weights_match(DONCHIAN_BREAKOUT, params, *row, run_kernel(DONCHIAN_BREAKOUT, params, *row))


# --- the public wrappers on calendar panels with gaps ---------------------------------------------------


def make_panel(open_, high, low, close) -> PricePanel:
    n_sym, n_bars = close.shape
    return PricePanel(
        symbols=tuple(f"S{i}" for i in range(n_sym)),
        dates=np.datetime64("2001-01-01", "D") + np.arange(n_bars),
        open=np.ascontiguousarray(open_),
        high=np.ascontiguousarray(high),
        low=np.ascontiguousarray(low),
        close=np.ascontiguousarray(close),
        volume=np.where(np.isnan(close), np.nan, 1e6),
    )


@st.composite
def gappy_panels(draw, max_sym: int = 4, max_bars: int = 200, tick=None):
    n_sym = draw(st.integers(1, max_sym))
    n_bars = draw(st.one_of(st.integers(1, max_bars), st.integers(max_bars // 2, max_bars)))
    seed = draw(st.integers(0, 2**32 - 1))
    vol = draw(st.sampled_from([0.005, 0.02]))
    p_missing = draw(st.sampled_from([0.0, 0.05, 0.3]))
    arrays = ref.random_ohlc(seed, n_sym, n_bars, vol, tick)
    return make_panel(*ref.with_gaps(seed + 1, arrays, p_missing))


def call_wrapper(panel: PricePanel, kind: int, params) -> np.ndarray:
    if kind == SMA_CROSSOVER:
        return strategies.sma_crossover(panel, fast=int(params[0]), slow=int(params[1]), short=params[2])
    if kind == MOMENTUM:
        return strategies.momentum(panel, lookback=int(params[0]))
    if kind == RSI_REVERSION:
        return strategies.rsi_reversion(panel, period=int(params[0]), lower=params[1], upper=params[2])
    if kind == BOLLINGER_REVERSION:
        return strategies.bollinger_reversion(panel, window=int(params[0]), k=params[1])
    if kind == DONCHIAN_BREAKOUT:
        return strategies.donchian_breakout(panel, window=int(params[0]))
    return strategies.buy_and_hold(panel)


@settings(max_examples=60, deadline=None)
@given(panel=gappy_panels(), kind_params=any_kind_and_params())
def test_wrappers_on_panels_with_gaps(panel, kind_params):
    """Calendar weights = the reference on each symbol's own bars, 0 on the days it has no bar."""
    kind, params = kind_params
    w = call_wrapper(panel, kind, params)
    assert w.shape == (panel.n_symbols, panel.n_bars)
    valid = panel.valid
    np.testing.assert_array_equal(w[~valid], 0.0)
    for i in range(panel.n_symbols):
        ok = valid[i]
        h, lo, c = panel.high[i, ok], panel.low[i, ok], panel.close[i, ok]
        assert_weights_match(kind, params, h, lo, c, w[i, ok])


def test_wrapper_skips_missing_days_in_lookbacks():
    """A gap does not count as a bar: momentum(2) compares with the close two *own* bars back."""
    close = np.array([[10.0, np.nan, 9.0, np.nan, np.nan, 11.0, 12.0]])
    panel = make_panel(close, close, close, close)
    # own bars 10, 9, 11, 12: bar 2 (11) vs 10 -> 1; bar 3 (12) vs 9 -> 1
    np.testing.assert_array_equal(strategies.momentum(panel, lookback=2), [[0, 0, 0, 0, 0, 1, 1]])
    # SMA(1) vs SMA(2) over own bars: 9 < 9.5 -> 0; 11 > 10 -> 1; 12 > 11.5 -> 1
    np.testing.assert_array_equal(strategies.sma_crossover(panel, fast=1, slow=2), [[0, 0, 0, 0, 0, 1, 1]])
    np.testing.assert_array_equal(strategies.buy_and_hold(panel), [[1, 0, 1, 0, 0, 1, 1]])


# --- no look-ahead ----------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    panel=gappy_panels(),
    kind_params=any_kind_and_params(),
    cut=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
    drop_days=st.booleans(),
)
def test_weights_do_not_look_ahead(panel, kind_params, cut, seed, drop_days):
    """Changing prices (or which days exist) after bar t never changes any weight up to t."""
    kind, params = kind_params
    t = int(cut * (panel.n_bars - 1))
    rng = np.random.default_rng(seed)
    factor = np.exp(rng.normal(0.0, 0.1, (panel.n_symbols, panel.n_bars)))
    factor[:, : t + 1] = 1.0
    fields = [getattr(panel, f) * factor for f in ("open", "high", "low", "close")]
    if drop_days:
        gone = rng.random(factor.shape) < 0.2
        gone[:, : t + 1] = False
        fields = [np.where(gone, np.nan, x) for x in fields]
    changed = make_panel(*fields)
    before = call_wrapper(panel, kind, params)
    after = call_wrapper(changed, kind, params)
    np.testing.assert_array_equal(after[:, : t + 1], before[:, : t + 1])
