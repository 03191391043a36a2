"""Performance metrics of daily return series (empyrical-reloaded's definitions, 252 periods a year).

The arithmetic lives in :func:`backtest.engine.simulate_nb.series_metrics_nb`; this is the pandas-facing layer.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from backtest.engine.simulate_nb import METRIC_NAMES, series_metrics_nb

#: the metrics shown wherever a portfolio is summarised (terminal, artifacts, reports)
HEADLINE_METRICS: tuple[str, ...] = (
    "total_return",
    "cagr",
    "annual_volatility",
    "sharpe",
    "sortino",
    "max_drawdown",
    "calmar",
    "turnover",
    "exposure",
)


def metrics_table(
    returns: np.ndarray,
    traded: np.ndarray | None = None,
    held: np.ndarray | None = None,
    lo: int = 0,
    hi: int | None = None,
) -> np.ndarray:
    """Metrics of each row of a 2-D returns array on columns ``[lo, hi)``, NaN days skipped."""
    returns = np.ascontiguousarray(returns, dtype=np.float64)
    if returns.ndim == 1:
        returns = returns[None, :]
    # zeros only where a series is missing: a chunk's arrays are large, and this runs once per fold
    traded = (
        np.zeros_like(returns)
        if traded is None
        else np.ascontiguousarray(traded, dtype=np.float64).reshape(returns.shape)
    )
    held = (
        np.zeros_like(returns)
        if held is None
        else np.ascontiguousarray(held, dtype=np.float64).reshape(returns.shape)
    )
    hi = returns.shape[1] if hi is None else hi
    return series_metrics_nb(returns, traded, held, lo, hi)


def series_metrics(
    returns: pd.Series | np.ndarray, traded: np.ndarray | None = None, held: np.ndarray | None = None
) -> dict[str, float]:
    """All metrics of one daily return series, as a dict named by ``METRIC_NAMES``."""
    row = metrics_table(np.asarray(returns, dtype=np.float64), traded, held)[0]
    return dict(zip(METRIC_NAMES, (float(v) for v in row), strict=True))
