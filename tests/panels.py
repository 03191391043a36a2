"""Small random price panels for tests: random walks with late listings, early delistings and missing days."""

from __future__ import annotations

import numpy as np

from backtest.config import FoldSpec, ParamGrid, StudyConfig
from backtest.data.panel import PricePanel

#: a small study (4 combinations, 2/1/1-year folds) for tests of the merge and the chunk files
CONFIG = StudyConfig(
    grid=ParamGrid.from_mapping({"fast": [5, 10], "slow": [40, 60]}),
    folds=FoldSpec(train_years=2, validate_years=1, test_years=1),
)


def random_panel(n_symbols: int = 12, n_bars: int = 1500, seed: int = 0, gaps: bool = True) -> PricePanel:
    rng = np.random.default_rng(seed)
    dates = np.busday_offset(np.datetime64("2001-01-01"), np.arange(n_bars), roll="forward").astype(
        "datetime64[D]"
    )
    r = rng.standard_t(4, size=(n_symbols, n_bars)) * 0.012 + 0.0003
    close = 50.0 * np.exp(np.cumsum(r, axis=1))
    open_ = close * np.exp(rng.normal(0.0, 0.004, size=close.shape))
    high = np.maximum(open_, close) * (1.0 + rng.uniform(0.0, 0.01, size=close.shape))
    low = np.minimum(open_, close) * (1.0 - rng.uniform(0.0, 0.01, size=close.shape))
    volume = rng.integers(1_000, 100_000, size=close.shape).astype(np.float64)
    if gaps:
        missing = np.zeros(close.shape, dtype=bool)
        for i in range(n_symbols):
            if i % 3 == 1:
                missing[i, : rng.integers(50, n_bars // 2)] = True  # listed late
            if i % 4 == 2:
                missing[i, rng.integers(n_bars // 2, n_bars - 10) :] = True  # delisted early
        missing |= rng.random(close.shape) < 0.003  # occasional missing days
        for arr in (open_, high, low, close, volume):
            arr[missing] = np.nan
    return PricePanel(
        symbols=tuple(f"S{i:03d}" for i in range(n_symbols)),
        dates=dates,
        open=np.ascontiguousarray(open_),
        high=np.ascontiguousarray(high),
        low=np.ascontiguousarray(low),
        close=np.ascontiguousarray(close),
        volume=np.ascontiguousarray(volume),
    )
