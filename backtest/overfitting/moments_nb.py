"""Numba kernel: the moments the probabilistic Sharpe ratio needs, for many ranges of one compact series."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

#: columns of ``ranges_moments_nb``'s output
MOMENT_NAMES: tuple[str, ...] = ("n", "sharpe", "skewness", "kurtosis")


@njit(nogil=True, cache=True)
def ranges_moments_nb(rets: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Per range ``[lo[i], hi[i])``: observations, daily Sharpe (std with ddof=1), skewness, kurtosis.

    NaN days are skipped. Skewness and kurtosis are the population moment ratios m3 / m2^1.5 and m4 / m2^2
    (kurtosis not in excess: 3 for normal returns), as the PSR formula takes them; undefined values are NaN.
    """
    out = np.full((lo.shape[0], 4), np.nan)
    for i in range(lo.shape[0]):
        n = 0
        s1 = 0.0
        for t in range(lo[i], hi[i]):
            if not np.isnan(rets[t]):
                n += 1
                s1 += rets[t]
        out[i, 0] = n
        if n < 2:
            continue
        mean = s1 / n
        m2 = 0.0
        m3 = 0.0
        m4 = 0.0
        for t in range(lo[i], hi[i]):
            r = rets[t]
            if np.isnan(r):
                continue
            d = r - mean
            d2 = d * d
            m2 += d2
            m3 += d2 * d
            m4 += d2 * d2
        if m2 <= 1e-14 * n * (mean * mean + 1e-300):
            continue  # no dispersion: no Sharpe ratio
        out[i, 1] = mean / math.sqrt(m2 / (n - 1))
        m2 /= n
        out[i, 2] = (m3 / n) / m2**1.5
        out[i, 3] = (m4 / n) / (m2 * m2)
    return out
