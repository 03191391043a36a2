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
_SYMBOLS, _BARS = 6, 1512


def tiny_market() -> PricePanel:
    """Random walks on weekdays from 2001, with a gap: made with NumPy alone (the synthetic universe's own
    kernels would be compiled too, on a machine that never ran them)."""
    rng = np.random.default_rng(1)
    dates = np.busday_offset(np.datetime64("2001-01-01"), np.arange(_BARS), roll="forward").astype(
        "datetime64[D]"
    )
    close = 50.0 * np.exp(np.cumsum(rng.normal(0.0003, 0.015, (_SYMBOLS, _BARS)), axis=1))
    open_ = close * np.exp(rng.normal(0.0, 0.004, close.shape))
    high = np.maximum(open_, close) * 1.005
    low = np.minimum(open_, close) * 0.995
    volume = np.full(close.shape, 1e6)
    for field in (open_, high, low, close, volume):
        field[0, 100:105] = np.nan  # a symbol with missing days, as real ones have
    return PricePanel(tuple(f"S{i}" for i in range(_SYMBOLS)), dates, open_, high, low, close, volume)


def warm_up(strategy: str) -> float:
    """Run every kernel a study of ``strategy`` uses once, on a tiny market; returns the seconds it took.

    A user's strategy is run too (a Python function costs nothing to warm, but its kernels may be numba's).
    """
    t0 = time.perf_counter()
    chosen = get_strategy(strategy)
    panel = tiny_market()
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
    """The whole study in memory (its blocks read read-only scores, as the flow's from their files)."""
    from backtest.ranking.portfolio import Construction
    from backtest.ranking.study import run_cross_sectional

    run_cross_sectional(config, Construction(top=2), panel)
