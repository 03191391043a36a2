"""Numba kernels of the built-in strategies: one symbol's target weights from its own bars.

Every function here works on *compact* rows: the bars a symbol actually has, with no NaN, so indicators look
back over the symbol's last n bars however many calendar days lie in between. Weights are 0 where an
indicator is not yet defined. Each kernel is causal: ``out[j]`` depends only on bars ``0..j``.

Strategy kinds are small integers so that one grid kernel can run any built-in without Python in the loop.
"""

from __future__ import annotations

import numpy as np
from numba import njit

SMA_CROSSOVER = 0
MOMENTUM = 1
RSI_REVERSION = 2
BOLLINGER_REVERSION = 3
DONCHIAN_BREAKOUT = 4
BUY_AND_HOLD = 5


@njit(nogil=True, cache=True)
def prefix_sums_nb(x: np.ndarray, out: np.ndarray, out_sq: np.ndarray) -> None:
    """Prefix sums of ``x - x[0]`` and of its square (``out[0] = 0``), shared by every window length.

    Subtracting the first value keeps the sums small, so window means taken as differences of prefix sums
    lose no more than a few ulps of the price level.
    """
    base = x[0] if x.shape[0] > 0 else 0.0
    out[0] = 0.0
    out_sq[0] = 0.0
    for j in range(x.shape[0]):
        d = x[j] - base
        out[j + 1] = out[j] + d
        out_sq[j + 1] = out_sq[j] + d * d


@njit(nogil=True, cache=True)
def sma_crossover_nb(prefix: np.ndarray, fast: int, slow: int, short: bool, out: np.ndarray) -> None:
    """1 while SMA(fast) > SMA(slow), else 0 (or -1 when ``short``); 0 until both are defined."""
    m = out.shape[0]
    lo = 0.0 if not short else -1.0
    start = max(fast, slow) - 1
    inv_f = 1.0 / fast
    inv_s = 1.0 / slow
    for j in range(min(start, m)):
        out[j] = 0.0
    for j in range(start, m):
        sf = (prefix[j + 1] - prefix[j + 1 - fast]) * inv_f
        ss = (prefix[j + 1] - prefix[j + 1 - slow]) * inv_s
        out[j] = 1.0 if sf > ss else lo


@njit(nogil=True, cache=True)
def momentum_nb(close: np.ndarray, lookback: int, out: np.ndarray) -> None:
    """1 while close / close ``lookback`` bars ago > 1, else 0."""
    m = out.shape[0]
    for j in range(m):
        out[j] = 1.0 if j >= lookback and close[j] > close[j - lookback] else 0.0


@njit(nogil=True, cache=True)
def rsi_reversion_nb(close: np.ndarray, period: int, lower: float, upper: float, out: np.ndarray) -> None:
    """Wilder's RSI: long from RSI < lower until RSI > upper.

    The first average gain/loss is the plain mean of the first ``period`` changes (defined at bar ``period``),
    then Wilder's smoothing ``avg = (avg * (period - 1) + x) / period``. RSI is 100 when there were no losses
    and 50 when there was no change at all.
    """
    m = out.shape[0]
    gain = 0.0
    loss = 0.0
    pos = 0.0
    for j in range(m):
        if j == 0:
            out[j] = 0.0
            continue
        change = close[j] - close[j - 1]
        up = change if change > 0 else 0.0
        down = -change if change < 0 else 0.0
        if j < period:
            gain += up
            loss += down
            out[j] = 0.0
            continue
        if j == period:
            gain = (gain + up) / period
            loss = (loss + down) / period
        else:
            gain = (gain * (period - 1) + up) / period
            loss = (loss * (period - 1) + down) / period
        if loss == 0.0:
            rsi = 50.0 if gain == 0.0 else 100.0
        else:
            rsi = 100.0 - 100.0 / (1.0 + gain / loss)
        if rsi < lower:
            pos = 1.0
        elif rsi > upper:
            pos = 0.0
        out[j] = pos


@njit(nogil=True, cache=True)
def bollinger_reversion_nb(
    close: np.ndarray, prefix: np.ndarray, prefix_sq: np.ndarray, window: int, k: float, out: np.ndarray
) -> None:
    """Long from close < SMA - k * std (ddof=0) until close > SMA, over the last ``window`` closes."""
    m = out.shape[0]
    base = close[0] if m > 0 else 0.0
    inv = 1.0 / window
    pos = 0.0
    for j in range(m):
        if j < window - 1:
            out[j] = 0.0
            continue
        mean = (prefix[j + 1] - prefix[j + 1 - window]) * inv
        var = (prefix_sq[j + 1] - prefix_sq[j + 1 - window]) * inv - mean * mean
        std = np.sqrt(var) if var > 0.0 else 0.0
        c = close[j] - base
        if c < mean - k * std:
            pos = 1.0
        elif c > mean:
            pos = 0.0
        out[j] = pos


@njit(nogil=True, cache=True)
def donchian_breakout_nb(
    high: np.ndarray, low: np.ndarray, close: np.ndarray, window: int, out: np.ndarray, dq: np.ndarray
) -> None:
    """Long from close > highest high of the previous ``window`` bars until close < their lowest low.

    Monotonic deques (indices in ``dq``, two halves) keep the rolling extremes in O(1) per bar.
    """
    m = out.shape[0]
    # max deque in dq[0:m], min deque in dq[m:2m]; head/tail indices into each half.
    h0 = 0
    h1 = 0
    l0 = 0
    l1 = 0
    pos = 0.0
    for j in range(m):
        if j >= window:
            # the window is bars j-window .. j-1: drop indices that fell out, then read the extremes
            while h1 > h0 and dq[h0] < j - window:
                h0 += 1
            while l1 > l0 and dq[m + l0] < j - window:
                l0 += 1
            hh = high[dq[h0]]
            ll = low[dq[m + l0]]
            if close[j] > hh:
                pos = 1.0
            elif close[j] < ll:
                pos = 0.0
            out[j] = pos
        else:
            out[j] = 0.0
        # push bar j for the windows of later bars
        while h1 > h0 and high[dq[h1 - 1]] <= high[j]:
            h1 -= 1
        dq[h1] = j
        h1 += 1
        while l1 > l0 and low[dq[m + l1 - 1]] >= low[j]:
            l1 -= 1
        dq[m + l1] = j
        l1 += 1


@njit(nogil=True, cache=True)
def weights_row_nb(
    kind: int,
    params: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    prefix: np.ndarray,
    prefix_sq: np.ndarray,
    out: np.ndarray,
    scratch: np.ndarray,
) -> None:
    """Dispatch to the kernel of ``kind`` with its parameters in a float row (the grid's layout)."""
    if kind == SMA_CROSSOVER:
        sma_crossover_nb(prefix, int(params[0]), int(params[1]), params[2] != 0.0, out)
    elif kind == MOMENTUM:
        momentum_nb(close, int(params[0]), out)
    elif kind == RSI_REVERSION:
        rsi_reversion_nb(close, int(params[0]), params[1], params[2], out)
    elif kind == BOLLINGER_REVERSION:
        bollinger_reversion_nb(close, prefix, prefix_sq, int(params[0]), params[1], out)
    elif kind == DONCHIAN_BREAKOUT:
        donchian_breakout_nb(high, low, close, int(params[0]), out, scratch)
    else:
        out[:] = 1.0
