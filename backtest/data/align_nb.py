"""Numba kernel that lays many symbols' bars out on one calendar: the last step of loading a chunk.

Done in numpy, this took one call per symbol and field, each letting go of the GIL and taking it back; beside
other busy Python threads (the other worker's pandas work, the merge, Prefect's engine) every take-back can
wait a whole switch interval, and a chunk's symbols x fields of them made the step many times slower beside
a single spinning thread. Here the whole step is one call without the GIL.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def align_bars_nb(
    days: np.ndarray,
    starts: np.ndarray,
    lo: np.int64,
    hi: np.int64,
    open_: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    volume: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The calendar (every day some symbol has a bar in ``[lo, hi]``) and one (symbols x days) array per field.

    Symbol ``i``'s bars are rows ``starts[i]:starts[i + 1]`` of ``days`` and the fields, its days sorted and
    unique. The union of days is marked on a flag per calendar day and a symbol's positions are read from a
    running count (no sort, no search); each element is written once, NaN where the symbol has no bar.
    """
    n_sym = starts.shape[0] - 1
    first = np.empty(n_sym, np.int64)
    last = np.empty(n_sym, np.int64)
    day_lo = np.iinfo(np.int64).max
    day_hi = np.iinfo(np.int64).min
    for i in range(n_sym):
        a, b = starts[i], starts[i + 1]
        f = a + np.searchsorted(days[a:b], lo, side="left")
        t = max(f, a + np.searchsorted(days[a:b], hi, side="right"))  # hi < lo: no bars, not a negative count
        first[i], last[i] = f, t
        if t > f:
            day_lo = min(day_lo, days[f])
            day_hi = max(day_hi, days[t - 1])
    n_span = day_hi - day_lo + 1 if day_hi >= day_lo else 0
    present = np.zeros(n_span, np.bool_)
    for i in range(n_sym):
        for r in range(first[i], last[i]):
            present[days[r] - day_lo] = True
    position = np.empty(n_span, np.int64)
    n_days = 0
    for d in range(n_span):
        position[d] = n_days
        if present[d]:
            n_days += 1
    calendar = np.empty(n_days, np.int64)
    for d in range(n_span):
        if present[d]:
            calendar[position[d]] = day_lo + d
    outs = (
        np.empty((n_sym, n_days)),
        np.empty((n_sym, n_days)),
        np.empty((n_sym, n_days)),
        np.empty((n_sym, n_days)),
        np.empty((n_sym, n_days)),
    )
    ins = (open_, high, low, close, volume)
    for k in range(5):
        src, out = ins[k], outs[k]
        for i in range(n_sym):
            f, t = first[i], last[i]
            if t == f:
                out[i, :] = np.nan
                continue
            p0 = position[days[f] - day_lo]
            p1 = position[days[t - 1] - day_lo] + 1
            out[i, :p0] = np.nan
            out[i, p1:] = np.nan
            if p1 - p0 == t - f:  # a bar on every calendar day of its own span (the usual case)
                out[i, p0:p1] = src[f:t]
            else:
                out[i, p0:p1] = np.nan
                for r in range(f, t):
                    out[i, position[days[r] - day_lo]] = src[r]
    return calendar, outs[0], outs[1], outs[2], outs[3], outs[4]
