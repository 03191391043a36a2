"""Numba kernels of the built-in ranking scores: one symbol's scores from its own bars.

As the timing kernels (backtest.engine.signals_nb), each works on a *compact* row, the bars the symbol has,
so a lookback counts the symbol's own bars however many calendar days lie between them. Scores are NaN
where undefined, and causal: ``out[j]`` depends only on bars ``0..j``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

MOMENTUM_RANK = 0
REVERSAL_RANK = 1
LOW_VOLATILITY_RANK = 2
SMA_DISTANCE_RANK = 3
#: bars of the volatility behind ``weighting inverse_vol``
VOL_WINDOW = 63


@njit(nogil=True, cache=True)
def rolling_std_nb(close: np.ndarray, window: int, out: np.ndarray) -> None:
    """Standard deviation (ddof 1) of the last ``window`` close-to-close returns; NaN before ``window`` returns.

    Running sums of the returns and their squares: daily returns are small and their mean is far below their
    spread, so the difference of sums loses nothing that matters (checked against pandas in the tests).
    """
    m = close.shape[0]
    s = 0.0
    ss = 0.0
    for j in range(m):
        out[j] = np.nan
        if j == 0 or window < 2:
            continue
        r = close[j] / close[j - 1] - 1.0
        s += r
        ss += r * r
        if j > window:
            old = close[j - window] / close[j - window - 1] - 1.0
            s -= old
            ss -= old * old
        if j >= window:
            var = (ss - s * s / window) / (window - 1)
            # a flat price gives a variance of rounding noise: call it 0, as it is
            out[j] = np.sqrt(var) if var > 1e-12 * ss / window else 0.0


@njit(nogil=True, cache=True)
def score_row_nb(kind: int, params: np.ndarray, close: np.ndarray, out: np.ndarray) -> None:
    """One symbol's compact scores for the built-in ``kind`` with its parameter row ``params``."""
    m = close.shape[0]
    if kind == LOW_VOLATILITY_RANK:
        rolling_std_nb(close, int(params[0]), out)
        for j in range(m):
            out[j] = -out[j]
        return
    for j in range(m):
        out[j] = np.nan
    if kind == MOMENTUM_RANK:
        lookback, skip = int(params[0]), int(params[1])
        for j in range(lookback, m):
            out[j] = close[j - skip] / close[j - lookback] - 1.0
    elif kind == REVERSAL_RANK:
        lookback = int(params[0])
        for j in range(lookback, m):
            out[j] = -(close[j] / close[j - lookback] - 1.0)
    elif kind == SMA_DISTANCE_RANK:
        window = int(params[0])
        s = 0.0
        for j in range(m):
            s += close[j]
            if j >= window:
                s -= close[j - window]
            if j >= window - 1:
                out[j] = close[j] / (s / window) - 1.0


@njit(nogil=True, cache=True)
def own_bars_nb(close: np.ndarray, idx: np.ndarray, row: np.ndarray) -> int:
    """A symbol's bars without its gaps: their closes into ``row`` and calendar days into ``idx``; returns
    how many (a score counts a lookback in the symbol's own bars, not in calendar days)."""
    m = 0
    for t in range(close.shape[0]):
        c = close[t]
        if c == c:
            idx[m] = t
            row[m] = c
            m += 1
    return m


@njit(nogil=True, cache=True)
def builtin_scores_nb(kind: int, params: np.ndarray, close: np.ndarray, out: np.ndarray) -> None:
    """Scores of every parameter row of ``params`` into ``out`` (rows x symbols x bars, float32; NaN where
    undefined or without a bar). Each symbol's bars are compacted once for all the rows."""
    n_sym, n_bars = close.shape
    idx = np.empty(n_bars, dtype=np.int64)
    row = np.empty(n_bars)
    work = np.empty(n_bars)
    for i in range(n_sym):
        m = own_bars_nb(close[i], idx, row)
        for r in range(params.shape[0]):
            out[r, i, :] = np.nan
            score_row_nb(kind, params[r], row[:m], work[:m])
            for j in range(m):
                out[r, i, idx[j]] = work[j]


@njit(nogil=True, cache=True)
def own_volatility_nb(close: np.ndarray, window: int) -> np.ndarray:
    """``rolling_std_nb`` of every symbol on its own bars, on the calendar (NaN on days without a bar)."""
    n_sym, n_bars = close.shape
    out = np.full((n_sym, n_bars), np.nan)
    idx = np.empty(n_bars, dtype=np.int64)
    row = np.empty(n_bars)
    work = np.empty(n_bars)
    for i in range(n_sym):
        m = own_bars_nb(close[i], idx, row)
        rolling_std_nb(row[:m], window, work[:m])
        for j in range(m):
            out[i, idx[j]] = work[j]
    return out
