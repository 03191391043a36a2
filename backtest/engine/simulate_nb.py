"""Numba kernels that turn target weights into daily returns, window scores and metrics.

Accounting (docs/design.md section 2), for one symbol over its own bars ``j`` (compact: no missing days):

* ``execution="close"``: the weight decided at the close of bar j is filled at that close, so
  ``r[j] = (1 + w[j-1] * (c[j] / c[j-1] - 1)) * (1 - cost * |w[j] - w[j-1]|) - 1``.
* ``execution="next_open"``: it is filled at the next open, so
  ``r[j] = (1 + w[j-2] * (o[j] / c[j-1] - 1)) * (1 - cost * |w[j-1] - w[j-2]|) * (1 + w[j-1] * (c[j] / o[j] - 1)) - 1``.

with ``w[-1] = w[-2] = 0`` (flat before the first bar) and ``cost`` the fraction of traded notional paid in fees
and slippage. Returns exist only on a symbol's own bars: a missing day is NaN, and the next bar's return spans
the gap from the last close, so nothing is filled with fake returns.

The grid kernel never materialises symbols x bars x combinations: per symbol it computes shared inputs once
(compact prices, prefix sums, bar returns), then per combination one weights row and one pass that accumulates
additive statistics per *segment* (the pieces between consecutive fold-window boundaries). A window's score
comes from adding up its few segments, so overlapping train windows cost nothing extra.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

from backtest.engine.signals_nb import prefix_sums_nb, weights_row_nb

PERIODS = 252.0

OBJ_SHARPE = 0
OBJ_SORTINO = 1
OBJ_TOTAL_RETURN = 2
OBJ_CALMAR = 3

# per-segment statistics
_N, _S1, _S2, _D2, _TRADES, _CORR, _G, _MX, _MN, _DD = range(10)
N_SEG_STATS = 10

# series metrics, in this column order
METRIC_NAMES: tuple[str, ...] = (
    "days",
    "total_return",
    "cagr",
    "annual_volatility",
    "sharpe",
    "sortino",
    "max_drawdown",
    "calmar",
    "trades",
    "turnover",
    "exposure",
    "win_rate",
)


class OosRows(NamedTuple):
    """Phase 3's output: the out-of-sample rows of a chunk, compact (only days a symbol was tested), and sums.

    Rows are ordered by symbol, then date; ``oos_layout_nb``'s offsets say which rows belong to which
    (symbol, fold). The per-day sums over all rows (calendar-long) make the chunk's portfolio part.
    """

    date: np.ndarray  # int64, milliseconds since the epoch
    ret: np.ndarray
    traded: np.ndarray
    held: np.ndarray
    ret_sum: np.ndarray  # per calendar day, over the rows of that day (NaN returns skipped)
    count: np.ndarray  # int64: rows of that day
    traded_sum: np.ndarray
    held_sum: np.ndarray  # of |held|
    bench_sum: np.ndarray  # of the symbols' own bar returns (buy and hold)


@njit(nogil=True, cache=True)
def compact_row_nb(close_row: np.ndarray, idx: np.ndarray) -> int:
    """Fill ``idx`` with the calendar positions of a symbol's bars; return how many there are."""
    m = 0
    for t in range(close_row.shape[0]):
        if not np.isnan(close_row[t]):
            idx[m] = t
            m += 1
    return m


@njit(nogil=True, cache=True)
def gather_row_nb(
    i: int,
    open_: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    idx: np.ndarray,
    oc: np.ndarray,
    hc: np.ndarray,
    lc: np.ndarray,
    cc: np.ndarray,
) -> int:
    """Copy row i's own bars (calendar positions into ``idx``, prices into the compact buffers)."""
    m = compact_row_nb(close[i], idx)
    for j in range(m):
        t = idx[j]
        oc[j] = open_[i, t]
        hc[j] = high[i, t]
        lc[j] = low[i, t]
        cc[j] = close[i, t]
    return m


@njit(nogil=True, cache=True)
def bar_returns_nb(
    open_c: np.ndarray, close_c: np.ndarray, ret: np.ndarray, gap: np.ndarray, intra: np.ndarray
) -> None:
    """Close-to-close, close-to-open and open-to-close returns of compact bars (0 at the first bar)."""
    m = close_c.shape[0]
    if m == 0:
        return
    ret[0] = 0.0
    gap[0] = 0.0
    intra[0] = close_c[0] / open_c[0] - 1.0
    for j in range(1, m):
        ret[j] = close_c[j] / close_c[j - 1] - 1.0
        gap[j] = open_c[j] / close_c[j - 1] - 1.0
        intra[j] = close_c[j] / open_c[j] - 1.0


@njit(nogil=True, cache=True)
def step_return_nb(
    w0: float, w1: float, w2: float, ret: float, gap: float, intra: float, cost: float, next_open: bool
) -> float:
    """The return of a bar whose decision is ``w0``, after decisions ``w1`` and ``w2`` on the two bars before.

    Scalars only: numba inlines it into the hot loops (a call taking arrays would cost reference counting).
    """
    if next_open:
        return (1.0 + w2 * gap) * (1.0 - cost * abs(w1 - w2)) * (1.0 + w1 * intra) - 1.0
    return (1.0 + w1 * ret) * (1.0 - cost * abs(w0 - w1)) - 1.0


@njit(nogil=True, cache=True)
def segment_stats_nb(
    w: np.ndarray,
    ret: np.ndarray,
    gap: np.ndarray,
    intra: np.ndarray,
    cb: np.ndarray,
    cost: float,
    next_open: bool,
    need_dd: bool,
    seg: np.ndarray,
    idx: np.ndarray,
    trial_row: np.ndarray,
) -> None:
    """One pass over the bars of all segments: additive statistics per segment into ``seg`` (S x stats).

    Segment s covers compact bars ``cb[s] <= j < cb[s+1]``. ``_TRADES`` counts decisions that change the
    weight; ``_CORR`` corrects the first bar of the segment so that a window starting there counts an open
    position as one trade (the window convention: flat before the window). With ``need_dd`` the segment's
    growth, running extremes and max drawdown are kept for the drawdown monoid of Calmar. A non-empty
    ``trial_row`` (calendar length) gets each bar's return added at its calendar position ``idx[j]``: the
    combination's contribution to the trials' return matrix of the overfitting statistics.
    """
    n_seg = cb.shape[0] - 1
    accumulate = trial_row.shape[0] > 0
    for s in range(n_seg):
        a = cb[s]
        b = cb[s + 1]
        n = 0.0
        s1 = 0.0
        s2 = 0.0
        d2 = 0.0
        trades = 0.0
        eq = 1.0
        mx = 1.0
        mn = 1.0
        dd = 0.0
        for j in range(a, b):
            wp = w[j - 1] if j >= 1 else 0.0
            wpp = w[j - 2] if j >= 2 else 0.0
            r = step_return_nb(w[j], wp, wpp, ret[j], gap[j], intra[j], cost, next_open)
            if w[j] != wp:
                trades += 1.0
            if accumulate:
                trial_row[idx[j]] += r
            n += 1.0
            s1 += r
            s2 += r * r
            if r < 0.0:
                d2 += r * r
            eq *= 1.0 + r
            if need_dd:
                if eq > mx:
                    mx = eq
                else:
                    if eq < mn:
                        mn = eq
                    if eq < mx * (1.0 - dd):
                        dd = 1.0 - eq / mx
        seg[s, _N] = n
        seg[s, _S1] = s1
        seg[s, _S2] = s2
        seg[s, _D2] = d2
        seg[s, _TRADES] = trades
        if b > a:
            wp = w[a - 1] if a >= 1 else 0.0
            seg[s, _CORR] = (1.0 if w[a] != 0.0 else 0.0) - (1.0 if w[a] != wp else 0.0)
        else:
            seg[s, _CORR] = 0.0
        seg[s, _G] = eq
        seg[s, _MX] = mx
        seg[s, _MN] = mn
        seg[s, _DD] = dd


@njit(nogil=True, cache=True)
def score_from_sums_nb(
    objective: int, n: float, s1: float, s2: float, d2: float, growth: float, dd: float
) -> float:
    """The objective of a window from its statistics (empyrical's definitions, 252 periods).

    ``growth`` is the window's product of (1 + r); a zero-dispersion window has no defined Sharpe (NaN: not
    eligible), judged relative to the size of the returns since running sums leave rounding residue.
    """
    if objective == OBJ_TOTAL_RETURN:
        return growth - 1.0
    if objective == OBJ_SHARPE:
        if n < 2.0:
            return np.nan
        mean = s1 / n
        var = (s2 - s1 * mean) / (n - 1.0)
        if var <= 1e-14 * (s2 / n):
            return np.nan
        return mean / math.sqrt(var) * math.sqrt(PERIODS)
    if objective == OBJ_SORTINO:
        if n < 2.0:
            return np.nan
        mean = s1 / n
        if d2 <= 0.0:
            return np.inf if mean > 0.0 else np.nan
        return mean * PERIODS / (math.sqrt(d2 / n) * math.sqrt(PERIODS))
    # calmar
    if n < 1.0 or not dd > 0.0 or growth < 0.0:
        return np.nan
    cagr = growth ** (PERIODS / n) - 1.0
    return cagr / dd


@njit(nogil=True, cache=True)
def window_scores_nb(
    seg: np.ndarray,
    win_segs: np.ndarray,
    objective: int,
    min_bars: int,
    out_scores: np.ndarray,
    out_trades: np.ndarray,
) -> None:
    """Scores and trade counts of every window (a range of segments) from the per-segment statistics.

    Each window adds up its own segments (a handful) rather than differencing running totals: a quiet
    window after a volatile one keeps its full relative precision.
    """
    for wi in range(win_segs.shape[0]):
        lo = win_segs[wi, 0]
        hi = win_segs[wi, 1]
        n = 0.0
        s1 = 0.0
        s2 = 0.0
        d2 = 0.0
        trades = 0.0
        corr = 0.0
        first = True
        for s in range(lo, hi):
            n += seg[s, _N]
            s1 += seg[s, _S1]
            s2 += seg[s, _S2]
            d2 += seg[s, _D2]
            trades += seg[s, _TRADES]
            if first and seg[s, _N] > 0.0:
                corr = seg[s, _CORR]
                first = False
        out_trades[wi] = trades + corr
        if n < min_bars:
            out_scores[wi] = np.nan
            continue
        # growth is a product, not a sum of logs, so a wipe-out (equity <= 0) stays exact
        g = 1.0
        dd = 0.0
        if objective == OBJ_CALMAR:
            # drawdown monoid: (growth, max, min, drawdown) of consecutive segments
            mx = 1.0
            for s in range(lo, hi):
                low_here = g * seg[s, _MN]
                cand = 1.0 - low_here / mx
                if seg[s, _DD] > dd:
                    dd = seg[s, _DD]
                if cand > dd:
                    dd = cand
                if g * seg[s, _MX] > mx:
                    mx = g * seg[s, _MX]
                g *= seg[s, _G]
        elif objective == OBJ_TOTAL_RETURN:
            for s in range(lo, hi):
                g *= seg[s, _G]
        out_scores[wi] = score_from_sums_nb(objective, n, s1, s2, d2, g, dd)


@njit(nogil=True, cache=True)
def compact_bounds_nb(idx: np.ndarray, m: int, seg_bounds: np.ndarray, cb: np.ndarray) -> None:
    """Calendar segment boundaries to compact positions: the number of the symbol's bars before each."""
    j = 0
    for s in range(seg_bounds.shape[0]):
        while j < m and idx[j] < seg_bounds[s]:
            j += 1
        cb[s] = j


@njit(nogil=True, cache=True)
def grid_scores_nb(
    kind: int,
    params: np.ndarray,
    open_: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    seg_bounds: np.ndarray,
    win_segs: np.ndarray,
    cost: float,
    next_open: bool,
    objective: int,
    min_bars: int,
    trials: np.ndarray,
    full_stats: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores and trades of every (symbol, combination, window) for a built-in strategy.

    ``params`` is combinations x parameters; ``seg_bounds`` are calendar indices of the S+1 segment
    boundaries; ``win_segs`` (windows x 2) are half-open ranges of segments. Unless empty, ``trials``
    (combinations x calendar days) gets every symbol's daily returns of each combination added, and
    ``full_stats`` (symbols x combinations x 3) the bars, sum and sum of squares of each (symbol,
    combination)'s returns over all segments: the raw material of the overfitting statistics, taken in the
    same pass.
    """
    n_sym, n_bars = close.shape
    n_combo = params.shape[0]
    n_win = win_segs.shape[0]
    n_seg = seg_bounds.shape[0] - 1
    scores = np.full((n_sym, n_combo, n_win), np.nan)
    trades = np.zeros((n_sym, n_combo, n_win))
    idx = np.empty(n_bars, np.int64)
    oc = np.empty(n_bars)
    hc = np.empty(n_bars)
    lc = np.empty(n_bars)
    cc = np.empty(n_bars)
    ret = np.empty(n_bars)
    gap = np.empty(n_bars)
    intra = np.empty(n_bars)
    prefix = np.empty(n_bars + 1)
    prefix_sq = np.empty(n_bars + 1)
    w = np.empty(n_bars)
    scratch = np.empty(2 * n_bars, np.int64)
    cb = np.empty(n_seg + 1, np.int64)
    seg = np.empty((n_seg, N_SEG_STATS))
    need_dd = objective == OBJ_CALMAR
    for i in range(n_sym):
        m = gather_row_nb(i, open_, high, low, close, idx, oc, hc, lc, cc)
        if m == 0:
            continue
        bar_returns_nb(oc[:m], cc[:m], ret, gap, intra)
        prefix_sums_nb(cc[:m], prefix, prefix_sq)
        compact_bounds_nb(idx, m, seg_bounds, cb)
        for k in range(n_combo):
            weights_row_nb(kind, params[k], hc[:m], lc[:m], cc[:m], prefix, prefix_sq, w[:m], scratch)
            trial_row = trials[k] if trials.shape[0] > 0 else trials.ravel()
            segment_stats_nb(w[:m], ret, gap, intra, cb, cost, next_open, need_dd, seg, idx, trial_row)
            window_scores_nb(seg, win_segs, objective, min_bars, scores[i, k], trades[i, k])
            if full_stats.shape[0] > 0:
                full_sums_nb(seg, full_stats[i, k])
    return scores, trades


@njit(nogil=True, cache=True)
def full_sums_nb(seg: np.ndarray, out: np.ndarray) -> None:
    """Bars, sum and sum of squares of the returns over all segments (``out``: 3 values)."""
    n = 0.0
    s1 = 0.0
    s2 = 0.0
    for s in range(seg.shape[0]):
        n += seg[s, _N]
        s1 += seg[s, _S1]
        s2 += seg[s, _S2]
    out[0] = n
    out[1] = s1
    out[2] = s2


@njit(nogil=True, cache=True)
def trial_days_nb(close: np.ndarray, seg_bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per calendar day within the segments: how many symbols have a bar, and the sum of their bar returns.

    The denominators of the trials' equal-weight returns, and the buy-and-hold benchmark beside them (the
    symbols' own close-to-close returns, 0 on a symbol's first bar, as the strategies' returns start flat).
    """
    n_sym, n_bars = close.shape
    count = np.zeros(n_bars, np.int64)
    bench = np.zeros(n_bars)
    idx = np.empty(n_bars, np.int64)
    cb = np.empty(seg_bounds.shape[0], np.int64)
    for i in range(n_sym):
        m = compact_row_nb(close[i], idx)
        compact_bounds_nb(idx, m, seg_bounds, cb)
        for j in range(cb[0], cb[cb.shape[0] - 1]):
            t = idx[j]
            count[t] += 1
            if j >= 1:
                bench[t] += close[i, t] / close[i, idx[j - 1]] - 1.0
    return count, bench


@njit(nogil=True, cache=True)
def weights_scores_nb(
    weights: np.ndarray,
    open_: np.ndarray,
    close: np.ndarray,
    seg_bounds: np.ndarray,
    win_segs: np.ndarray,
    cost: float,
    next_open: bool,
    objective: int,
    min_bars: int,
    trial_row: np.ndarray,
    full_stats: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores and trades of every (symbol, window) for one combination's weights (calendar layout).

    The path for strategies written in Python: they produce a symbols x bars weights array per combination.
    ``trial_row`` and ``full_stats`` (symbols x 3) are ``grid_scores_nb``'s ``trials[k]`` and
    ``full_stats[:, k]``, filled unless empty.
    """
    n_sym, n_bars = close.shape
    n_win = win_segs.shape[0]
    n_seg = seg_bounds.shape[0] - 1
    scores = np.full((n_sym, n_win), np.nan)
    trades = np.zeros((n_sym, n_win))
    idx = np.empty(n_bars, np.int64)
    oc = np.empty(n_bars)
    cc = np.empty(n_bars)
    w = np.empty(n_bars)
    ret = np.empty(n_bars)
    gap = np.empty(n_bars)
    intra = np.empty(n_bars)
    cb = np.empty(n_seg + 1, np.int64)
    seg = np.empty((n_seg, N_SEG_STATS))
    need_dd = objective == OBJ_CALMAR
    for i in range(n_sym):
        m = compact_row_nb(close[i], idx)
        if m == 0:
            continue
        for j in range(m):
            t = idx[j]
            oc[j] = open_[i, t]
            cc[j] = close[i, t]
            w[j] = weights[i, t]
        bar_returns_nb(oc[:m], cc[:m], ret, gap, intra)
        compact_bounds_nb(idx, m, seg_bounds, cb)
        segment_stats_nb(w[:m], ret, gap, intra, cb, cost, next_open, need_dd, seg, idx, trial_row)
        window_scores_nb(seg, win_segs, objective, min_bars, scores[i], trades[i])
        if full_stats.shape[0] > 0:
            full_sums_nb(seg, full_stats[i])
    return scores, trades


@njit(nogil=True, cache=True)
def builtin_weights_nb(
    kind: int, row_params: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray
) -> np.ndarray:
    """Weights (calendar layout, 0 on missing days) of a built-in strategy with parameters per symbol row."""
    n_sym, n_bars = close.shape
    out = np.zeros((n_sym, n_bars))
    idx = np.empty(n_bars, np.int64)
    oc = np.empty(n_bars)
    hc = np.empty(n_bars)
    lc = np.empty(n_bars)
    cc = np.empty(n_bars)
    prefix = np.empty(n_bars + 1)
    prefix_sq = np.empty(n_bars + 1)
    w = np.empty(n_bars)
    scratch = np.empty(2 * n_bars, np.int64)
    for i in range(n_sym):
        m = gather_row_nb(i, close, high, low, close, idx, oc, hc, lc, cc)
        if m == 0:
            continue
        prefix_sums_nb(cc[:m], prefix, prefix_sq)
        weights_row_nb(kind, row_params[i], hc[:m], lc[:m], cc[:m], prefix, prefix_sq, w[:m], scratch)
        for j in range(m):
            out[i, idx[j]] = w[j]
    return out


@njit(nogil=True, cache=True)
def simulate_nb(
    weights: np.ndarray, open_: np.ndarray, close: np.ndarray, cost: float, next_open: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Daily returns, traded weight and held position (at the close) of weights, in calendar layout.

    Days a symbol has no bar are NaN in the returns and 0 in the other two; weights on those days are ignored.
    """
    n_sym, n_bars = close.shape
    rets = np.full((n_sym, n_bars), np.nan)
    traded = np.zeros((n_sym, n_bars))
    held = np.zeros((n_sym, n_bars))
    idx = np.empty(n_bars, np.int64)
    oc = np.empty(n_bars)
    cc = np.empty(n_bars)
    w = np.empty(n_bars)
    ret = np.empty(n_bars)
    gap = np.empty(n_bars)
    intra = np.empty(n_bars)
    for i in range(n_sym):
        m = compact_row_nb(close[i], idx)
        if m == 0:
            continue
        for j in range(m):
            t = idx[j]
            oc[j] = open_[i, t]
            cc[j] = close[i, t]
            w[j] = weights[i, t]
        bar_returns_nb(oc[:m], cc[:m], ret, gap, intra)
        for j in range(m):
            t = idx[j]
            w1 = w[j - 1] if j >= 1 else 0.0
            w2 = w[j - 2] if j >= 2 else 0.0
            rets[i, t] = step_return_nb(w[j], w1, w2, ret[j], gap[j], intra[j], cost, next_open)
            traded[i, t] = abs(w1 - w2) if next_open else abs(w[j] - w1)
            if next_open:
                held[i, t] = w[j - 1] if j >= 1 else 0.0
            else:
                held[i, t] = w[j]
    return rets, traded, held


@njit(nogil=True, cache=True)
def stitch_row_nb(
    w: np.ndarray,
    w_prev: np.ndarray,
    has_prev: bool,
    ret: np.ndarray,
    gap: np.ndarray,
    intra: np.ndarray,
    idx: np.ndarray,
    a: int,
    b: int,
    cost: float,
    next_open: bool,
    row: int,
    dates_ms: np.ndarray,
    out: OosRows,
) -> None:
    """Write one symbol's test window (compact bars ``a <= j < b``) into out-of-sample rows ``row...``.

    Every bar keeps the full-history return of the fold's weights ``w``, except the first, which also pays
    for switching, at the window's start, from the previous fold's position (``w_prev``; flat without one) to
    the position ``w`` holds there. The per-day sums get the row's values added (the benchmark: the symbol's
    own bar return, buy and hold without costs), symbol after symbol, as a sum over a calendar array's rows
    would add them.
    """
    if b <= a:
        return
    switch = 0.0
    if a >= 1:
        new_pos = w[a - 2] if next_open else w[a - 1]
        if next_open and a < 2:
            new_pos = 0.0
        old_pos = 0.0
        if has_prev:
            old_pos = w_prev[a - 2] if next_open else w_prev[a - 1]
            if next_open and a < 2:
                old_pos = 0.0
        switch = abs(new_pos - old_pos)
    for j in range(a, b):
        w1 = w[j - 1] if j >= 1 else 0.0
        w2 = w[j - 2] if j >= 2 else 0.0
        r = step_return_nb(w[j], w1, w2, ret[j], gap[j], intra[j], cost, next_open)
        tr = abs(w1 - w2) if next_open else abs(w[j] - w1)
        if j == a and switch > 0.0:
            r = (1.0 + r) * (1.0 - cost * switch) - 1.0
            tr += switch
        held = w1 if next_open else w[j]
        t = idx[j]
        k = row + j - a
        out.date[k] = dates_ms[t]
        out.ret[k] = r
        out.traded[k] = tr
        out.held[k] = held
        if not np.isnan(r):
            out.ret_sum[t] += r
        out.count[t] += 1
        out.traded_sum[t] += tr
        out.held_sum[t] += abs(held)
        if not np.isnan(ret[j]):
            out.bench_sum[t] += ret[j]


@njit(nogil=True, cache=True)
def oos_layout_nb(
    chosen: np.ndarray, test_bounds: np.ndarray, close: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Where each (symbol, fold) goes in the compact out-of-sample rows, and its bars in the test window.

    Returns ``starts`` (symbols * folds + 1 row offsets, symbol-major: the rows of symbol i, fold f are
    ``starts[i * F + f] <= r < starts[i * F + f + 1]``; empty when the symbol sits the fold out) and
    ``test_bars`` (symbols x folds), the bars each symbol has in each test window whether chosen or not.
    """
    n_sym, n_bars = close.shape
    n_folds = chosen.shape[1]
    idx = np.empty(n_bars, np.int64)
    cb = np.empty(2, np.int64)
    test_bars = np.zeros((n_sym, n_folds), np.int64)
    starts = np.zeros(n_sym * n_folds + 1, np.int64)
    r = 0
    for i in range(n_sym):
        m = compact_row_nb(close[i], idx)
        for f in range(n_folds):
            compact_bounds_nb(idx, m, test_bounds[f], cb)
            test_bars[i, f] = cb[1] - cb[0]
            if chosen[i, f] >= 0:
                r += cb[1] - cb[0]
            starts[i * n_folds + f + 1] = r
    return starts, test_bars


@njit(nogil=True, cache=True)
def oos_nb(
    kind: int,
    params: np.ndarray,
    weights: np.ndarray,
    weight_spans: np.ndarray,
    chosen: np.ndarray,
    test_bounds: np.ndarray,
    open_: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    dates_ms: np.ndarray,
    starts: np.ndarray,
    cost: float,
    next_open: bool,
) -> OosRows:
    """Phase 3 for every symbol, written straight into the compact out-of-sample rows (see ``OosRows``).

    ``chosen`` (symbols x folds) is the selected combination (-1: the symbol sits the fold out);
    ``test_bounds`` (folds x 2) the calendar range of each test window; ``starts`` the row offsets from
    ``oos_layout_nb``; ``dates_ms`` the calendar as milliseconds since the epoch. Built-ins (``kind >= 0``)
    compute the chosen combination's full-history weights here from ``params``; otherwise the flat
    ``weights`` hold them, computed in Python, on the only bars read: ``weight_spans[i, f]`` is (offset,
    first, end), the compact bars ``first <= j < end`` of symbol i's weights in fold f starting at
    ``weights[offset]``. Only the rows a symbol has are stored (no symbols x bars arrays), which is most of a
    chunk's memory saved over calendar-shaped outputs.
    """
    n_sym, n_bars = close.shape
    n_folds = chosen.shape[1]
    n_rows = starts[-1]
    out = OosRows(
        np.empty(n_rows, np.int64),
        np.empty(n_rows),
        np.empty(n_rows),
        np.empty(n_rows),
        np.zeros(n_bars),
        np.zeros(n_bars, np.int64),
        np.zeros(n_bars),
        np.zeros(n_bars),
        np.zeros(n_bars),
    )
    idx = np.empty(n_bars, np.int64)
    oc = np.empty(n_bars)
    hc = np.empty(n_bars)
    lc = np.empty(n_bars)
    cc = np.empty(n_bars)
    ret = np.empty(n_bars)
    gap = np.empty(n_bars)
    intra = np.empty(n_bars)
    prefix = np.empty(n_bars + 1)
    prefix_sq = np.empty(n_bars + 1)
    w = np.empty(n_bars)
    w_prev = np.empty(n_bars)
    scratch = np.empty(2 * n_bars, np.int64)
    cb = np.empty(2, np.int64)
    for i in range(n_sym):
        if starts[(i + 1) * n_folds] == starts[i * n_folds]:
            continue  # no rows: chosen nowhere, or no bars in its test windows
        m = gather_row_nb(i, open_, high, low, close, idx, oc, hc, lc, cc)
        bar_returns_nb(oc[:m], cc[:m], ret, gap, intra)
        if kind >= 0:
            prefix_sums_nb(cc[:m], prefix, prefix_sq)
        last = -1
        for f in range(n_folds):
            k = chosen[i, f]
            if k < 0:
                last = -1
                continue
            compact_bounds_nb(idx, m, test_bounds[f], cb)
            w_prev[:m] = w[:m]
            if kind >= 0:
                if k != last:
                    weights_row_nb(kind, params[k], hc[:m], lc[:m], cc[:m], prefix, prefix_sq, w[:m], scratch)
            else:
                offset, first, end = weight_spans[i, f, 0], weight_spans[i, f, 1], weight_spans[i, f, 2]
                for j in range(first, end):
                    w[j] = weights[offset + j - first]
            stitch_row_nb(
                w,
                w_prev,
                last >= 0,
                ret,
                gap,
                intra,
                idx,
                cb[0],
                cb[1],
                cost,
                next_open,
                starts[i * n_folds + f],
                dates_ms,
                out,
            )
            last = k
    return out


@njit(nogil=True, cache=True)
def range_metrics_nb(
    rets: np.ndarray, traded: np.ndarray, held: np.ndarray, lo: int, hi: int, out: np.ndarray
) -> None:
    """Metrics (``METRIC_NAMES``) of the returns ``rets[lo:hi]`` into ``out``, skipping NaN days.

    Definitions follow empyrical-reloaded with 252 periods a year; undefined values are NaN.
    Max drawdown is negative and anchored at the start value; turnover is traded weight per year;
    exposure is the share of days ending with a position; win rate is the share of days with a non-zero
    return that were gains.
    """
    out[:] = np.nan
    n = 0
    s1 = 0.0
    eq = 1.0
    peak = 1.0
    mdd = 0.0
    n_trades = 0
    turn = 0.0
    exposed = 0
    invested = 0
    wins = 0
    for t in range(lo, hi):
        r = rets[t]
        if np.isnan(r):
            continue
        n += 1
        s1 += r
        eq *= 1.0 + r
        if eq > peak:
            peak = eq
        dd = (eq - peak) / peak
        if dd < mdd:
            mdd = dd
        if traded[t] > 0.0:
            n_trades += 1
        turn += traded[t]
        if held[t] != 0.0:
            exposed += 1
        if r != 0.0:
            invested += 1
            if r > 0.0:
                wins += 1
    out[0] = n
    out[8] = n_trades
    if n == 0:
        return
    mean = s1 / n
    ss = 0.0
    dn = 0.0
    lowest = np.inf
    highest = -np.inf
    for t in range(lo, hi):
        r = rets[t]
        if np.isnan(r):
            continue
        ss += (r - mean) * (r - mean)
        if r < 0.0:
            dn += r * r
        lowest = min(lowest, r)
        highest = max(highest, r)
    if lowest == highest:
        ss = 0.0  # identical returns: no dispersion, whatever the rounding of the mean (as empyrical)
    years = n / PERIODS
    out[1] = eq - 1.0
    out[2] = eq ** (1.0 / years) - 1.0 if eq >= 0.0 else np.nan
    out[6] = mdd
    if mdd < 0.0:
        out[7] = out[2] / -mdd
    out[9] = turn / years
    out[10] = exposed / n
    if invested > 0:
        out[11] = wins / invested
    if n >= 2:
        std = math.sqrt(ss / (n - 1))
        out[3] = std * math.sqrt(PERIODS)
        if std > 0.0:
            out[4] = mean / std * math.sqrt(PERIODS)
        elif mean != 0.0:
            out[4] = np.inf if mean > 0.0 else -np.inf
        down = math.sqrt(dn / n) * math.sqrt(PERIODS)
        if down > 0.0:
            out[5] = mean * PERIODS / down
        elif mean > 0.0:
            out[5] = np.inf


@njit(nogil=True, cache=True)
def series_metrics_nb(rets: np.ndarray, traded: np.ndarray, held: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Metrics (``METRIC_NAMES``) of each row of a 2-D returns array on columns [lo, hi), NaN days skipped."""
    n_sym = rets.shape[0]
    out = np.empty((n_sym, len(METRIC_NAMES)))
    for i in range(n_sym):
        range_metrics_nb(rets[i], traded[i], held[i], lo, hi, out[i])
    return out


@njit(nogil=True, cache=True)
def ranges_metrics_nb(
    rets: np.ndarray, traded: np.ndarray, held: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> np.ndarray:
    """Metrics (``METRIC_NAMES``) of the ranges ``[lo[i], hi[i])`` of 1-D series (compact rows), NaN skipped."""
    out = np.empty((lo.shape[0], len(METRIC_NAMES)))
    for i in range(lo.shape[0]):
        range_metrics_nb(rets, traded, held, lo[i], hi[i], out[i])
    return out
