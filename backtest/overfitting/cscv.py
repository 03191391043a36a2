"""Probability of backtest overfitting by combinatorially symmetric cross-validation (CSCV).

The T x N matrix of the trials' daily returns is cut into S contiguous blocks. Every way of choosing S/2
blocks as the in-sample half (C(16, 8) = 12,870 for S = 16) picks the in-sample best trial and asks where it
ranks out of sample, on the other half: its rank among the N trials (N = best, ties averaged) over N + 1 is
its relative rank w, which gives
the logit ln(w / (1 - w)), and PBO is the share of logits <= 0, the halvings where the in-sample winner lands
at or below the out-of-sample median. Performance is the annualised Sharpe ratio; a trial whose Sharpe is
undefined on a half (no dispersion: it never traded) ranks last there.

Each block is reduced to its sums first, so a halving costs a product of S-long vectors, not a pass over
the days; halvings go in batches to bound memory for large S.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from backtest.config import check_blocks
from backtest.overfitting.sharpe import sharpe_from_sums

PERIODS = 252.0
_BATCH = 4096


@dataclass(frozen=True, eq=False)
class CscvResult:
    """PBO and what it is made of: per halving, the in-sample winner, its Sharpe in and out, its logit."""

    blocks: int
    pbo: float
    winner: np.ndarray  # int: the in-sample best trial of each halving
    is_sharpe: np.ndarray  # its annualised Sharpe in sample
    oos_sharpe: np.ndarray  # and out of sample
    logits: np.ndarray

    @property
    def splits(self) -> int:
        return len(self.logits)

    @property
    def degradation_slope(self) -> float:
        """Slope of the winner's out-of-sample Sharpe on its in-sample Sharpe across the halvings (a line
        fitted by least squares): 1 means in-sample quality carries over, 0 or less that it does not."""
        ok = np.isfinite(self.is_sharpe) & np.isfinite(self.oos_sharpe)
        x, y = self.is_sharpe[ok], self.oos_sharpe[ok]
        if len(x) < 2 or np.ptp(x) == 0.0:
            return math.nan
        return float(np.polyfit(x, y, 1)[0])

    @property
    def prob_oos_loss(self) -> float:
        """Share of halvings where the in-sample winner has a negative Sharpe out of sample."""
        ok = np.isfinite(self.oos_sharpe)
        return float((self.oos_sharpe[ok] < 0).mean()) if ok.any() else math.nan


def halvings(blocks: int) -> np.ndarray:
    """Every choice of blocks/2 in-sample blocks, as a boolean matrix (halvings x blocks), in lexical order."""
    combos = np.array(list(itertools.combinations(range(blocks), blocks // 2)), dtype=np.int64)
    mask = np.zeros((len(combos), blocks), dtype=bool)
    np.put_along_axis(mask, combos, True, axis=1)
    return mask


def cscv(returns: np.ndarray, blocks: int = 16) -> CscvResult:
    """PBO of the trials whose daily returns are the columns of ``returns`` (T x N, no NaN)."""
    check_blocks(blocks)
    t, n_trials = returns.shape
    if n_trials < 2 or t < 2 * blocks:
        empty = np.zeros(0)
        return CscvResult(blocks, math.nan, np.zeros(0, np.int64), empty, empty, empty)
    bounds = np.linspace(0, t, blocks + 1).round().astype(np.int64)
    counts = np.diff(bounds).astype(float)
    s1 = np.add.reduceat(returns, bounds[:-1], axis=0)  # blocks x N
    s2 = np.add.reduceat(returns * returns, bounds[:-1], axis=0)
    mask = halvings(blocks).astype(float)
    parts = []
    for lo in range(0, len(mask), _BATCH):
        ins = mask[lo : lo + _BATCH]
        outs = 1.0 - ins
        sr_in = sharpe_from_sums((ins @ counts)[:, None], ins @ s1, ins @ s2) * math.sqrt(PERIODS)
        sr_out = sharpe_from_sums((outs @ counts)[:, None], outs @ s1, outs @ s2) * math.sqrt(PERIODS)
        key_in = np.where(np.isnan(sr_in), -np.inf, sr_in)
        key_out = np.where(np.isnan(sr_out), -np.inf, sr_out)
        winner = np.argmax(key_in, axis=1)  # ties: the earlier trial, as the study's selection breaks them
        rows = np.arange(len(ins))
        v = key_out[rows, winner][:, None]
        rank = (key_out < v).sum(axis=1) + ((key_out == v).sum(axis=1) + 1) / 2.0  # 1 = worst
        w = rank / (n_trials + 1.0)
        parts.append((winner, sr_in[rows, winner], sr_out[rows, winner], np.log(w / (1.0 - w))))
    winner, is_sr, oos_sr, logits = (np.concatenate(p) for p in zip(*parts, strict=True))
    return CscvResult(blocks, float((logits <= 0).mean()), winner, is_sr, oos_sr, logits)
