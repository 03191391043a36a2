"""The trials' daily return matrix, summed over chunks, and the study's overfitting statistics from it.

A trial is one combination of the grid with its parameters fixed over the whole study period (the first
train day to the last test day): the returns the grid search looks at. For a timing study its daily return
is the equal-weight average over the symbols that have a bar that day, so the matrix is a sum over chunks of
each chunk's per-day sums and counts: days x combinations, never symbols x combinations x days.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from backtest.defaults import SPA_PERIOD
from backtest.overfitting.cscv import CscvResult, cscv
from backtest.overfitting.moments_nb import ranges_moments_nb
from backtest.overfitting.sharpe import (
    deflated_sharpe,
    expected_max_sharpe,
    probabilistic_sharpe,
    sharpe_from_sums,
    trial_sharpe_variance,
)
from backtest.overfitting.snooping import SpaResult, spa_test

#: the column of trial k in a chunk's trial parts and in ``trials.parquet``
TRIAL_COLUMN = "trial_{}"
#: a deflated Sharpe at or above this is called significant (a one-sided 5 % test)
SIGNIFICANCE = 0.95


def trial_columns(n: int) -> list[str]:
    return [TRIAL_COLUMN.format(k) for k in range(n)]


def trial_parts_frame(
    dates: np.ndarray, count: np.ndarray, bench_sum: np.ndarray, sums: np.ndarray
) -> pd.DataFrame:
    """A chunk's share of the trial matrix: per day with a bar, the symbols counted, the sum of their
    buy-and-hold returns and of each trial's returns (``sums``: trials x days)."""
    days = count > 0
    frame = pd.DataFrame({"date": dates[days], "count": count[days], "bench_sum": bench_sum[days]})
    trials = pd.DataFrame(sums[:, days].T, columns=trial_columns(sums.shape[0]))
    return pd.concat([frame, trials], axis=1)


@dataclass(frozen=True, eq=False)
class TrialMatrix:
    """Each trial's equal-weight daily return (days x trials) and the buy-and-hold benchmark beside it."""

    dates: np.ndarray
    returns: np.ndarray
    benchmark: np.ndarray
    symbols: np.ndarray  # symbols averaged each day

    @property
    def n_trials(self) -> int:
        return self.returns.shape[1]

    def to_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame({"date": self.dates, "n_symbols": self.symbols, "benchmark": self.benchmark})
        return pd.concat([frame, pd.DataFrame(self.returns, columns=trial_columns(self.n_trials))], axis=1)


class TrialSums:
    """The chunks' trial parts added up by date, one chunk at a time (memory: one matrix, not one per chunk)."""

    def __init__(self, n_trials: int) -> None:
        self.n_trials = n_trials
        self._sum: pd.DataFrame | None = None

    def add(self, part: pd.DataFrame) -> None:
        part = part.set_index("date")
        self._sum = part if self._sum is None else self._sum.add(part, fill_value=0.0)

    def matrix(self) -> TrialMatrix:
        if self._sum is None or self._sum.empty:
            empty = np.zeros(0)
            return TrialMatrix(empty.astype("datetime64[ms]"), np.zeros((0, self.n_trials)), empty, empty)
        frame = self._sum.sort_index()
        count = frame["count"].to_numpy(dtype=float)
        sums = frame[trial_columns(self.n_trials)].to_numpy()
        return TrialMatrix(
            dates=frame.index.to_numpy(),
            returns=sums / count[:, None],
            benchmark=frame["bench_sum"].to_numpy() / count,
            symbols=count.astype(np.int64),
        )


def luck_table(luck: dict[str, Any]) -> list[dict[str, Any]]:
    """The statistics of luck of a summary (``figures.overfitting``) as (statistic, value, meaning) rows:
    the one table the report and the Prefect summary artifact both show."""
    inputs = luck.get("inputs", {})
    rows = [
        ("trials (combinations tried)", luck.get("trials"), "each one's full-history returns are a trial"),
        (
            "probability of backtest overfitting",
            luck.get("pbo"),
            "above 0.5: the winner is a coin toss or worse",
        ),
        ("degradation slope", luck.get("degradation_slope"), "out- on in-sample Sharpe; near 1 carries over"),
        ("probabilistic Sharpe (vs 0)", luck.get("psr"), "probability the true Sharpe is above 0"),
        ("deflated Sharpe", luck.get("dsr"), f"the same against the luck of {luck.get('trials')} trials"),
        (
            "SPA p-value",
            luck.get("spa_pvalue"),
            f"best trial against {luck.get('benchmark', 'buy-and-hold')}; below 0.05: not luck",
        ),
        (
            "observations T, skewness, kurtosis",
            f"{inputs.get('T')}, {_round(inputs.get('skewness'))}, {_round(inputs.get('kurtosis'))}",
            "of the stitched out-of-sample portfolio",
        ),
        ("CSCV blocks S, halvings", f"{inputs.get('S')}, {inputs.get('splits')}", ""),
    ]
    return [{"statistic": a, "value": b, "meaning": c} for a, b, c in rows]


def _round(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def series_moments(returns: np.ndarray) -> tuple[float, float, float, float]:
    """(days, daily Sharpe, skewness, kurtosis) of one return series, NaN days skipped."""
    r = np.ascontiguousarray(returns, dtype=float)
    n, sharpe, skew, kurt = ranges_moments_nb(r, np.zeros(1, np.int64), np.array([len(r)], np.int64))[0]
    return n, sharpe, skew, kurt


@dataclass(frozen=True, eq=False)
class Overfitting:
    """The study's statistics of luck (docs/design.md section 7) and their inputs."""

    trials: int
    trial_days: int
    sharpe_variance: float
    sharpe_star: float  # the daily Sharpe the best of ``trials`` reaches by luck
    days: int  # of the stitched out-of-sample portfolio
    daily_sharpe: float
    skewness: float
    kurtosis: float
    psr: float
    dsr: float
    cscv: CscvResult
    spa: SpaResult
    #: what the SPA test's best trial is measured against
    benchmark: str = "buy-and-hold"

    def to_dict(self) -> dict[str, Any]:
        c = self.cscv
        logits = c.logits[np.isfinite(c.logits)]
        return {
            "trials": self.trials,
            "sharpe_variance": self.sharpe_variance,
            "psr": self.psr,
            "dsr": self.dsr,
            "pbo": c.pbo,
            "degradation_slope": c.degradation_slope,
            "spa_pvalue": self.spa.pvalue,
            "benchmark": self.benchmark,
            "verdict": self.verdict(),
            "inputs": {
                "T": self.days,
                "skewness": self.skewness,
                "kurtosis": self.kurtosis,
                "daily_sharpe": self.daily_sharpe,
                "sharpe_star": self.sharpe_star,
                "trial_days": self.trial_days,
                "S": c.blocks,
                "splits": c.splits,
                "prob_oos_loss": c.prob_oos_loss,
                "logit_median": float(np.median(logits)) if len(logits) else math.nan,
                "spa": self.spa.to_dict(),
            },
        }

    def verdict(self) -> str:
        """One plain-language line: what PBO, the deflated Sharpe and SPA say about luck."""
        parts = []
        pbo = self.cscv.pbo
        if math.isfinite(pbo):
            if pbo > 0.5:
                tail = "the grid's in-sample winner is more likely than not below the median out of sample"
            elif pbo > 0.1:
                tail = (
                    f"the grid's in-sample winner fell below the median out of sample in {pbo:.0%} of splits"
                )
            else:
                tail = "the grid's in-sample winner mostly stays above the median out of sample"
            parts.append(f"PBO {pbo:.2f}: {tail}")
        if math.isfinite(self.dsr):
            sig = "significant" if self.dsr >= SIGNIFICANCE else "not significant"
            parts.append(
                f"deflated Sharpe {self.dsr:.2f}: after {self.trials} trials the out-of-sample Sharpe is {sig}"
            )
        p = self.spa.pvalue
        if math.isfinite(p):
            beats = "beats" if p < 0.05 else "does not beat"
            parts.append(f"SPA p {p:.2f}: the best trial {beats} {self.benchmark} beyond luck")
        return "; ".join(parts) if parts else "too little data for the overfitting statistics"

    def splits_frame(self) -> pd.DataFrame:
        """One row per CSCV halving: the in-sample winner, its Sharpe in and out of sample, its logit."""
        c = self.cscv
        return pd.DataFrame(
            {"winner": c.winner, "is_sharpe": c.is_sharpe, "oos_sharpe": c.oos_sharpe, "logit": c.logits}
        )


def assess(
    matrix: TrialMatrix,
    oos_returns: np.ndarray,
    blocks: int,
    spa_reps: int,
    seed: int,
    benchmark: str = "buy-and-hold",
) -> Overfitting:
    """Every statistic of luck for a study: its trial matrix and its stitched out-of-sample returns.

    The SPA bootstrap, most of the cost, runs on a thread beside the CSCV (both spend their time in NumPy).
    """
    r = matrix.returns
    with ThreadPoolExecutor(1, thread_name_prefix="spa") as pool:
        spa = pool.submit(spa_test, matrix.benchmark, r, spa_reps, seed, SPA_PERIOD)
        split = cscv(r, blocks)
        n = np.full(matrix.n_trials, float(len(r)))
        sharpes = sharpe_from_sums(n, r.sum(axis=0), (r * r).sum(axis=0))
        variance = float(trial_sharpe_variance(sharpes))
        days, sharpe, skew, kurt = series_moments(oos_returns)
        star = float(expected_max_sharpe(matrix.n_trials, variance))
        return Overfitting(
            trials=matrix.n_trials,
            trial_days=len(r),
            sharpe_variance=variance,
            sharpe_star=star,
            days=int(days),
            daily_sharpe=sharpe,
            skewness=skew,
            kurtosis=kurt,
            psr=float(probabilistic_sharpe(sharpe, days, skew, kurt)),
            dsr=float(deflated_sharpe(sharpe, days, skew, kurt, matrix.n_trials, variance)),
            cscv=split,
            spa=spa.result(),
            benchmark=benchmark,
        )
