"""Compiling (or loading from numba's on-disk cache) the kernels a study will run, ahead of the study.

A kernel's first call in a process costs its compilation on a machine that never ran it (about 20 s for a
timing study's kernels on 2 cores, as much again for a ranking study's) and its loading from numba's cache
after that (a second or two). A command that has to wait anyway (for a Prefect server to start) does this
meanwhile, on a tiny synthetic market, so that the study's first chunks do not.
"""

from __future__ import annotations

import time

import numpy as np

from backtest.config import FoldSpec, ParamGrid, StudyConfig
from backtest.data.panel import PricePanel
from backtest.engine.strategies import get_strategy

#: a market just big enough for a fold of every strategy's slowest built-in indicator (252 bars)
_SYMBOLS, _YEARS = 6, 6.0


def warm_up(strategy: str) -> float:
    """Run every kernel a study of ``strategy`` uses once, on a tiny market; returns the seconds it took.

    A user's strategy is run too (a Python function costs nothing to warm, but its kernels may be numba's).
    """
    from backtest.data.synthetic import generate_panel

    t0 = time.perf_counter()
    chosen = get_strategy(strategy)
    panel = generate_panel(_SYMBOLS, _YEARS, seed=1)
    _align(panel)
    _, combos = chosen.combinations(None)
    grid = ParamGrid.from_mapping({n: [float(v)] for n, v in zip(chosen.params, combos[0], strict=True)})
    config = StudyConfig(strategy=strategy, grid=grid, folds=FoldSpec(2.0, 1.0, 1.0))
    if chosen.kind == "ranking":
        _ranking(config, panel)
    else:
        from backtest.engine.study import date_range, run_study

        first, last = date_range(panel)
        run_study(config, panel.symbols, panel.select, first, last, chunk_size=_SYMBOLS // 2, workers=1)
    return time.perf_counter() - t0


def _align(panel: PricePanel) -> None:
    """The store's alignment kernel, on two symbols' bars."""
    from backtest.data.align_nb import align_bars_nb

    close = np.asarray(panel.close[:2], dtype=np.float64)
    n = close.shape[1]
    days = np.tile(np.arange(n, dtype=np.int64), 2)
    starts = np.array([0, n, 2 * n], dtype=np.int64)
    flat = close.ravel().copy()
    align_bars_nb(days, starts, np.int64(0), np.int64(n), flat, flat, flat, flat, flat)


def _ranking(config: StudyConfig, panel: PricePanel) -> None:
    """The whole study in memory, and the block kernels once more on read-only scores, as the flow's blocks
    read them from memory-mapped files (another specialisation of the same kernels)."""
    from backtest.ranking.portfolio import Construction, score_days
    from backtest.ranking.study import RankingPlan, chunk_scores, market_of, run_cross_sectional

    plan: RankingPlan = run_cross_sectional(config, Construction(top=2), panel).plan
    scores = chunk_scores(plan, panel)
    scores.setflags(write=False)
    score_days(market_of(panel), lambda: [(0, scores[0])], [plan.construction_of(0)])
