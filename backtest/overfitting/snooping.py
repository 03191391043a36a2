"""The data-snooping test: Hansen's SPA p-value of the best trial against buy-and-hold, computed by ``arch``.

SPA asks whether any of the N trials beats the benchmark by more than the best of N would by luck; its
stationary bootstrap (block length sqrt(T)) keeps the returns' serial dependence. Losses are the negated
returns. Trials whose returns equal the benchmark's on every day cannot beat it and would divide by a zero
variance in the studentised statistic: they are left out of the test.

The test runs on sums over non-overlapping weeks (``period`` trading days, the oldest remainder dropped):
the hypothesis is the same (no trial's mean excess return is positive), and ``arch``'s variance estimator
costs T^2 x N, so that on 20 years of daily returns the test would cost several times the rest of the
statistics of luck together (docs/benchmarks.md has the figures).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SpaResult:
    pvalue: float  # the consistent p-value, the one Hansen recommends
    lower: float
    upper: float
    best_trial: int  # the trial with the highest mean return (-1: none)
    tested: int  # trials in the test
    reps: int
    block_size: int
    seed: int
    period: int  # trading days summed into each observation of the test

    def to_dict(self) -> dict[str, float | int]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def period_sums(returns: np.ndarray, period: int) -> np.ndarray:
    """Sums over consecutive groups of ``period`` rows, the oldest rows that do not fill a group dropped."""
    kept = returns[returns.shape[0] % period :]
    return kept.reshape(kept.shape[0] // period, period, *kept.shape[1:]).sum(axis=1)


def spa_test(
    benchmark: np.ndarray, trials: np.ndarray, reps: int = 1000, seed: int = 0, period: int = 5
) -> SpaResult:
    """SPA of the columns of ``trials`` (T x N daily returns) against ``benchmark`` (T daily returns)."""
    n = trials.shape[1]
    best = int(np.argmax(trials.mean(axis=0))) if n and len(trials) else -1
    models, bench = period_sums(trials, period), period_sums(benchmark, period)
    t = len(bench)
    block = max(1, int(math.sqrt(t)))
    differs = np.abs(models - bench[:, None]).max(axis=0) > 0 if t else np.zeros(n, dtype=bool)
    if t < 3 or not differs.any():
        return SpaResult(math.nan, math.nan, math.nan, best, 0, reps, block, seed, period)
    from arch.bootstrap import SPA  # here: importing arch costs every command about 1.5 s

    spa = SPA(-bench, -models[:, differs], block_size=block, reps=reps, seed=seed)
    spa.compute()
    p = spa.pvalues
    return SpaResult(
        pvalue=float(p["consistent"]),
        lower=float(p["lower"]),
        upper=float(p["upper"]),
        best_trial=best,
        tested=int(differs.sum()),
        reps=reps,
        block_size=block,
        seed=seed,
        period=period,
    )
