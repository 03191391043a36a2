"""Slow, obviously-correct reference implementations of the numeric core, written from the specification.

Nothing here calls or copies the numba kernels: every function is a direct transcription of the conventions
of docs/design.md section 2 (and the module docstrings of ``backtest.engine.simulate_nb``), with plain Python
loops, ``math.fsum`` for sums and explicit windows instead of prefix sums or monotonic deques. The tests
compare the kernels against these.

Layouts: a *compact row* is one symbol's own bars (no NaN); a *calendar row* has NaN where the symbol has
no bar.
"""

from __future__ import annotations

import math

import numpy as np

PERIODS = 252

OBJECTIVES = ("sharpe", "sortino", "total_return", "calmar")


# --- indicators on compact rows ----------------------------------------------------------------------------


def sma(close: np.ndarray, n: int) -> np.ndarray:
    """Mean of the last ``n`` closes, NaN before bar ``n - 1``."""
    out = np.full(len(close), np.nan)
    for j in range(n - 1, len(close)):
        out[j] = math.fsum(close[j - n + 1 : j + 1]) / n
    return out


def rolling_std(close: np.ndarray, n: int) -> np.ndarray:
    """Population standard deviation (ddof=0) of the last ``n`` closes, NaN before bar ``n - 1``."""
    out = np.full(len(close), np.nan)
    for j in range(n - 1, len(close)):
        window = close[j - n + 1 : j + 1]
        mean = math.fsum(window) / n
        out[j] = math.sqrt(math.fsum((x - mean) ** 2 for x in window) / n)
    return out


def wilder_rsi(close: np.ndarray, period: int) -> np.ndarray:
    """Wilder's RSI, NaN before bar ``period``.

    The first average gain and loss are plain means of the first ``period`` changes (bars 1..period); then
    ``avg = (avg * (period - 1) + x) / period``. RSI = 100 * gain / (gain + loss), which is 100 when there is
    no loss, and 50 by convention when both averages are 0.
    """
    m = len(close)
    out = np.full(m, np.nan)
    if m <= period:
        return out
    changes = [close[j] - close[j - 1] for j in range(1, m)]  # changes[j - 1] is the change into bar j
    gains = [max(c, 0.0) for c in changes]
    losses = [max(-c, 0.0) for c in changes]
    avg_gain = math.fsum(gains[:period]) / period
    avg_loss = math.fsum(losses[:period]) / period
    for j in range(period, m):
        if j > period:
            avg_gain = (avg_gain * (period - 1) + gains[j - 1]) / period
            avg_loss = (avg_loss * (period - 1) + losses[j - 1]) / period
        if avg_gain == 0.0 and avg_loss == 0.0:
            out[j] = 50.0
        else:
            out[j] = 100.0 * avg_gain / (avg_gain + avg_loss)
    return out


# --- built-in strategies on compact rows -------------------------------------------------------------------


def sma_crossover(close: np.ndarray, fast: int, slow: int, short: bool = False) -> np.ndarray:
    f = sma(close, fast)
    s = sma(close, slow)
    w = np.zeros(len(close))
    for j in range(len(close)):
        if np.isnan(f[j]) or np.isnan(s[j]):
            continue
        w[j] = 1.0 if f[j] > s[j] else (-1.0 if short else 0.0)
    return w


def momentum(close: np.ndarray, lookback: int) -> np.ndarray:
    w = np.zeros(len(close))
    for j in range(lookback, len(close)):
        w[j] = 1.0 if close[j] > close[j - lookback] else 0.0
    return w


def rsi_reversion(close: np.ndarray, period: int, lower: float, upper: float) -> np.ndarray:
    rsi = wilder_rsi(close, period)
    w = np.zeros(len(close))
    state = 0.0
    for j in range(len(close)):
        if np.isnan(rsi[j]):
            continue
        if rsi[j] < lower:
            state = 1.0
        elif rsi[j] > upper:
            state = 0.0
        w[j] = state
    return w


def bollinger_reversion(close: np.ndarray, window: int, k: float) -> np.ndarray:
    mean = sma(close, window)
    std = rolling_std(close, window)
    w = np.zeros(len(close))
    state = 0.0
    for j in range(len(close)):
        if np.isnan(mean[j]):
            continue
        if close[j] < mean[j] - k * std[j]:
            state = 1.0
        elif close[j] > mean[j]:
            state = 0.0
        w[j] = state
    return w


def donchian_channel(high: np.ndarray, low: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Highest high and lowest low of the previous ``window`` bars (j-window .. j-1), NaN before ``window``."""
    hh = np.full(len(high), np.nan)
    ll = np.full(len(low), np.nan)
    for j in range(window, len(high)):
        hh[j] = max(high[j - window : j])
        ll[j] = min(low[j - window : j])
    return hh, ll


def donchian_breakout(high: np.ndarray, low: np.ndarray, close: np.ndarray, window: int) -> np.ndarray:
    hh, ll = donchian_channel(high, low, window)
    w = np.zeros(len(close))
    state = 0.0
    for j in range(window, len(close)):
        if close[j] > hh[j]:
            state = 1.0
        elif close[j] < ll[j]:
            state = 0.0
        w[j] = state
    return w


def buy_and_hold(close: np.ndarray) -> np.ndarray:
    return np.ones(len(close))


# kernel kind ids (backtest.engine.signals_nb) -> reference, called with a compact row's (high, low, close) and a
# parameter row in the grid's layout
def weights_from_params(
    kind: int, params, high: np.ndarray, low: np.ndarray, close: np.ndarray
) -> np.ndarray:
    if kind == 0:
        return sma_crossover(close, int(params[0]), int(params[1]), params[2] != 0.0)
    if kind == 1:
        return momentum(close, int(params[0]))
    if kind == 2:
        return rsi_reversion(close, int(params[0]), float(params[1]), float(params[2]))
    if kind == 3:
        return bollinger_reversion(close, int(params[0]), float(params[1]))
    if kind == 4:
        return donchian_breakout(high, low, close, int(params[0]))
    if kind == 5:
        return buy_and_hold(close)
    raise ValueError(kind)


def calendar_weights(kind: int, params, high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    """A built-in on a calendar panel (symbols x days): each symbol's compact row, 0 on missing days."""
    out = np.zeros(close.shape)
    for i in range(close.shape[0]):
        ok = ~np.isnan(close[i])
        if ok.any():
            out[i, ok] = weights_from_params(kind, params, high[i, ok], low[i, ok], close[i, ok])
    return out


# --- returns --------------------------------------------------------------------------------------------


def strategy_returns(
    w: np.ndarray, open_: np.ndarray, close: np.ndarray, cost: float, execution: str
) -> np.ndarray:
    """Daily returns of target weights on a compact row (flat before the first bar)."""
    m = len(close)
    r = np.empty(m)
    for j in range(m):
        w1 = w[j - 1] if j >= 1 else 0.0
        w2 = w[j - 2] if j >= 2 else 0.0
        if execution == "close":
            price = close[j] / close[j - 1] - 1.0 if j >= 1 else 0.0
            r[j] = (1.0 + w1 * price) * (1.0 - cost * abs(w[j] - w1)) - 1.0
        elif execution == "next_open":
            if j == 0:
                r[j] = 0.0
                continue
            overnight = open_[j] / close[j - 1] - 1.0
            intraday = close[j] / open_[j] - 1.0
            r[j] = (1.0 + w2 * overnight) * (1.0 - cost * abs(w1 - w2)) * (1.0 + w1 * intraday) - 1.0
        else:
            raise ValueError(execution)
    return r


def calendar_returns(
    weights: np.ndarray, open_: np.ndarray, close: np.ndarray, cost: float, execution: str
) -> np.ndarray:
    """Returns on a calendar panel: NaN on missing days, weights given on missing days ignored."""
    out = np.full(close.shape, np.nan)
    for i in range(close.shape[0]):
        ok = ~np.isnan(close[i])
        if ok.any():
            out[i, ok] = strategy_returns(weights[i, ok], open_[i, ok], close[i, ok], cost, execution)
    return out


# --- window objectives and trades -----------------------------------------------------------------------


def sharpe(r: np.ndarray) -> float:
    n = len(r)
    if n < 2 or r.max() == r.min():  # identical values: the deviation is exactly 0
        return math.nan
    mean = math.fsum(r) / n
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in r) / (n - 1))
    return mean / std * math.sqrt(PERIODS)


def sortino(r: np.ndarray) -> float:
    n = len(r)
    if n < 2:
        return math.nan
    mean = math.fsum(r) / n
    downside = math.sqrt(math.fsum(min(x, 0.0) ** 2 for x in r) / n)
    if downside == 0.0:
        return math.inf if mean > 0.0 else math.nan
    return mean * PERIODS / (downside * math.sqrt(PERIODS))


def total_return(r: np.ndarray) -> float:
    return math.prod(1.0 + x for x in r) - 1.0


def max_drawdown(r: np.ndarray) -> float:
    """The largest fall from a running peak as a positive fraction, the peak including the start value 1."""
    equity = 1.0
    peak = 1.0
    worst = 0.0
    for x in r:
        equity *= 1.0 + x
        peak = max(peak, equity)
        worst = max(worst, 1.0 - equity / peak)
    return worst


def calmar(r: np.ndarray) -> float:
    n = len(r)
    if n == 0:
        return math.nan
    dd = max_drawdown(r)
    if not dd > 0.0:
        return math.nan
    growth = math.prod(1.0 + x for x in r)
    if growth < 0.0:  # equity below zero: no real CAGR
        return math.nan
    cagr = growth ** (PERIODS / n) - 1.0
    return cagr / dd


def objective(name: str, r: np.ndarray, min_bars: int) -> float:
    """A window's score from its returns (NaN days already dropped)."""
    if len(r) < min_bars:
        return math.nan
    return {"sharpe": sharpe, "sortino": sortino, "total_return": total_return, "calmar": calmar}[name](r)


def window_trades(w_window: np.ndarray) -> int:
    """Bars whose weight differs from the previous bar's, the bar before the window taken as flat."""
    prev = 0.0
    count = 0
    for x in w_window:
        if x != prev:
            count += 1
        prev = x
    return count


def window_bars(seg_bounds: np.ndarray, win_segs: np.ndarray) -> list[tuple[int, int]]:
    """Calendar ranges ``[lo, hi)`` of the windows (half-open ranges of segments)."""
    return [(int(seg_bounds[a]), int(seg_bounds[b])) for a, b in win_segs]


def window_returns(
    rets: np.ndarray, close: np.ndarray, seg_bounds: np.ndarray, win_segs: np.ndarray
) -> list[list[np.ndarray]]:
    """Each symbol's returns inside each window (symbols x windows lists), missing days dropped."""
    bounds = window_bars(seg_bounds, win_segs)
    out = []
    for i in range(close.shape[0]):
        row = []
        for lo, hi in bounds:
            r = rets[i, lo:hi][~np.isnan(close[i, lo:hi])]
            assert not np.isnan(r).any()
            row.append(r)
        out.append(row)
    return out


def window_scores(
    weights: np.ndarray,
    rets: np.ndarray,
    close: np.ndarray,
    seg_bounds: np.ndarray,
    win_segs: np.ndarray,
    objective_name: str,
    min_bars: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores and trades (symbols x windows) from calendar weights and full-history calendar returns."""
    bounds = window_bars(seg_bounds, win_segs)
    per_window = window_returns(rets, close, seg_bounds, win_segs)
    scores = np.full((close.shape[0], len(bounds)), np.nan)
    trades = np.zeros((close.shape[0], len(bounds)))
    for i in range(close.shape[0]):
        for k, (lo, hi) in enumerate(bounds):
            trades[i, k] = window_trades(weights[i, lo:hi][~np.isnan(close[i, lo:hi])])
            scores[i, k] = objective(objective_name, per_window[i][k], min_bars)
    return scores, trades


# --- series metrics (for the few that empyrical does not have) ----------------------------------------------


def activity_metrics(rets: np.ndarray, traded: np.ndarray, held: np.ndarray) -> dict[str, float]:
    """Trades, turnover, exposure and win rate of one calendar row, NaN days skipped."""
    ok = ~np.isnan(rets)
    n = int(ok.sum())
    r, tr, h = rets[ok], traded[ok], held[ok]
    nonzero = r[r != 0.0]
    return {
        "days": float(n),
        "trades": float((tr > 0).sum()),
        "turnover": math.fsum(tr) / (n / PERIODS) if n else math.nan,
        "exposure": float((h != 0).sum()) / n if n else math.nan,
        "win_rate": float((nonzero > 0).sum()) / len(nonzero) if len(nonzero) else math.nan,
    }


def positions(weights: np.ndarray, close: np.ndarray, execution: str) -> tuple[np.ndarray, np.ndarray]:
    """Traded weight and position held at the close, calendar layout (0 on missing days).

    At the close (``execution="close"``) bar j trades |w[j] - w[j-1]| and holds w[j]; at the next open it
    trades |w[j-1] - w[j-2]| (filled at bar j's open) and holds w[j-1].
    """
    traded = np.zeros(close.shape)
    held = np.zeros(close.shape)
    for i in range(close.shape[0]):
        days = np.flatnonzero(~np.isnan(close[i]))
        w = [float(weights[i, t]) for t in days]
        for j, t in enumerate(days):
            w0 = w[j]
            w1 = w[j - 1] if j >= 1 else 0.0
            w2 = w[j - 2] if j >= 2 else 0.0
            if execution == "close":
                traded[i, t], held[i, t] = abs(w0 - w1), w0
            else:
                traded[i, t], held[i, t] = abs(w1 - w2), w1
    return traded, held


# --- ties: bars where a float comparison of an indicator is too close to call -------------------------------
#
# The kernels compute rolling means from prefix sums and RSI in a different (equally valid) order, so an
# indicator can differ from these references by a few ulps of the price level. Where a comparison is that
# close (an exact tie in real arithmetic), either answer is right: the tests skip those bars (stateless
# strategies) or stop comparing there (state machines, whose later bars inherit the decision).

STATEFUL_KINDS = frozenset({2, 3})  # rsi_reversion, bollinger_reversion


def ambiguous_bars(kind: int, params, high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    m = len(close)
    amb = np.zeros(m, dtype=bool)
    if m == 0:
        return amb
    tol = 1e-9 * float(np.max(np.abs(close)))
    with np.errstate(invalid="ignore"):
        if kind == 0:
            amb = np.abs(sma(close, int(params[0])) - sma(close, int(params[1]))) < tol
        elif kind == 2:
            rsi = wilder_rsi(close, int(params[0]))
            amb = (np.abs(rsi - params[1]) < 1e-8) | (np.abs(rsi - params[2]) < 1e-8)
        elif kind == 3:
            n, k = int(params[0]), float(params[1])
            mean, std = sma(close, n), rolling_std(close, n)
            amb = (np.abs(close - (mean - k * std)) < tol) | (np.abs(close - mean) < tol)
    return amb


# --- random test data -----------------------------------------------------------------------------------


def random_ohlc(
    seed: int, n_sym: int, n_bars: int, vol: float = 0.02, tick: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random walks of positive OHLC prices (symbols x bars), optionally rounded to a tick (many ties)."""
    rng = np.random.default_rng(seed)
    shape = (n_sym, n_bars)
    start = rng.uniform(5.0, 300.0, (n_sym, 1))
    drift = rng.normal(0.0, vol / 5.0, (n_sym, 1))
    close = start * np.exp(np.cumsum(rng.normal(drift, vol, shape), axis=1))
    prev = np.concatenate([start, close[:, :-1]], axis=1)
    open_ = prev * np.exp(rng.normal(0.0, vol / 2.0, shape))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, vol / 2.0, shape)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, vol / 2.0, shape)))
    if tick:
        open_, high, low, close = (
            np.maximum(np.round(x / tick), 1.0) * tick for x in (open_, high, low, close)
        )
        high = np.maximum(high, np.maximum(open_, close))
        low = np.minimum(low, np.minimum(open_, close))
    return tuple(np.ascontiguousarray(x) for x in (open_, high, low, close))


def with_gaps(seed: int, arrays: tuple[np.ndarray, ...], p_missing: float = 0.1) -> tuple[np.ndarray, ...]:
    """NaN in every field where a symbol has no bar: late listings, early delistings, missing days."""
    rng = np.random.default_rng(seed)
    n_sym, n_bars = arrays[0].shape
    missing = rng.random((n_sym, n_bars)) < p_missing
    for i in range(n_sym):
        if rng.random() < 0.5:
            missing[i, : rng.integers(0, n_bars // 2 + 1)] = True  # listed late
        if rng.random() < 0.5:
            missing[i, n_bars - rng.integers(0, n_bars // 2 + 1) :] = True  # delisted early
    if n_sym > 2 and rng.random() < 0.3:
        missing[rng.integers(0, n_sym)] = True  # a symbol with no bar at all
    return tuple(np.ascontiguousarray(np.where(missing, np.nan, x)) for x in arrays)


def random_weights(seed: int, shape: tuple[int, int], levels=(-1.0, -0.5, 0.0, 0.0, 0.25, 1.0)) -> np.ndarray:
    """Target weights that mostly persist (so windows see open positions) and sometimes switch."""
    rng = np.random.default_rng(seed)
    w = np.empty(shape)
    for i in range(shape[0]):
        current = 0.0
        for t in range(shape[1]):
            if rng.random() < 0.3:
                current = float(rng.choice(levels))
            w[i, t] = current
    return w
