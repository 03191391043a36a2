"""The probabilistic and deflated Sharpe ratios (Bailey and Lopez de Prado), on daily Sharpe ratios.

Vectorised over NumPy arrays so that one call serves the study's portfolio and every symbol of a chunk.
Undefined inputs (too few days, no dispersion, a non-positive variance term) give NaN, never an error.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

#: the Euler-Mascheroni constant of the expected maximum of N normal draws
EULER_GAMMA = 0.5772156649015329

ArrayLike = float | np.ndarray

# The normal distribution from the standard library (math.erfc, and Wichura's algorithm for the inverse, both
# accurate to about 1e-16): scipy.special gave the same values and cost every command 0.3 s and 40 MB to import.
_ndtr = np.vectorize(lambda z: 0.5 * math.erfc(-z / math.sqrt(2.0)), otypes=[float])
_ndtri = np.vectorize(
    lambda p: NormalDist().inv_cdf(p) if 0.0 < p < 1.0 else {0.0: -math.inf, 1.0: math.inf}.get(p, math.nan),
    otypes=[float],
)


def ndtr(z: ArrayLike) -> np.ndarray:
    """The standard normal CDF."""
    with np.errstate(invalid="ignore"):  # NaN in, NaN out
        return _ndtr(np.asarray(z, dtype=float))


def ndtri(p: ArrayLike) -> np.ndarray:
    """The standard normal quantile of ``p`` in (0, 1)."""
    with np.errstate(invalid="ignore"):
        return _ndtri(np.asarray(p, dtype=float))


def probabilistic_sharpe(
    sharpe: ArrayLike, days: ArrayLike, skewness: ArrayLike, kurtosis: ArrayLike, benchmark: ArrayLike = 0.0
) -> np.ndarray:
    """PSR(SR*): the probability that the true daily Sharpe exceeds ``benchmark`` given the observed one.

    ``kurtosis`` is not in excess (3 for normal returns). Fat tails and negative skew widen the estimate's
    error, which is why a high Sharpe over a short or lopsided history is worth less than it looks.
    """
    sr = np.asarray(sharpe, dtype=float)
    t = np.asarray(days, dtype=float)
    var = 1.0 - np.asarray(skewness) * sr + (np.asarray(kurtosis) - 1.0) / 4.0 * sr * sr
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (sr - np.asarray(benchmark)) * np.sqrt(t - 1.0) / np.sqrt(var)
    ok = (t >= 2) & (var > 0) & np.isfinite(z)
    return np.where(ok, ndtr(np.where(ok, z, 0.0)), np.nan)


def expected_max_sharpe(trials: ArrayLike, variance: ArrayLike) -> np.ndarray:
    """SR*: the Sharpe ratio the best of ``trials`` independent skill-less trials reaches by luck alone.

    ``variance`` is the variance of the trials' Sharpe ratios (in the same daily units). One trial is no
    multiple test: SR* = 0 and the deflated Sharpe equals the probabilistic one.
    """
    n = np.asarray(trials, dtype=float)
    safe = np.maximum(n, 2.0)
    z = (1.0 - EULER_GAMMA) * ndtri(1.0 - 1.0 / safe) + EULER_GAMMA * ndtri(1.0 - 1.0 / (safe * np.e))
    with np.errstate(invalid="ignore"):
        star = np.sqrt(np.asarray(variance, dtype=float)) * z
    return np.where(n <= 1, 0.0, star)


def deflated_sharpe(
    sharpe: ArrayLike,
    days: ArrayLike,
    skewness: ArrayLike,
    kurtosis: ArrayLike,
    trials: ArrayLike,
    variance: ArrayLike,
) -> np.ndarray:
    """DSR: the probabilistic Sharpe ratio against SR*, the luck of the best of ``trials`` trials."""
    return probabilistic_sharpe(sharpe, days, skewness, kurtosis, expected_max_sharpe(trials, variance))


def sharpe_from_sums(n: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """Daily Sharpe ratios (std with ddof=1) from counts, sums and sums of squares; NaN without dispersion."""
    n = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / n
        var = (s2 - s1 * mean) / (n - 1.0)
        ok = (n >= 2) & (var > 1e-14 * (s2 / n))
        return np.where(ok, mean / np.sqrt(np.where(ok, var, 1.0)), np.nan)


def trial_sharpe_variance(sharpes: np.ndarray, axis: int = -1) -> np.ndarray:
    """The variance (ddof=1) of the trials' finite Sharpe ratios along ``axis``; NaN with fewer than two."""
    finite = np.isfinite(sharpes)
    count = finite.sum(axis=axis)
    filled = np.where(finite, sharpes, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = filled.sum(axis=axis) / count
        dev = np.where(finite, sharpes - np.expand_dims(mean, axis), 0.0)
        var = (dev * dev).sum(axis=axis) / (count - 1)
    return np.where(count >= 2, var, np.nan)
