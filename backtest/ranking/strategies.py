"""The built-in ranking strategies (docs/cross_sectional.md), registered beside the timing ones.

Each is a thin wrapper over ``scores_nb.builtin_scores_nb``; a user's ranking strategy is any function of the
prices returning scores, decorated with :func:`ranking_strategy`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from backtest.data.panel import PricePanel
from backtest.engine.strategies import (
    ComboCheck,
    Strategy,
    StrategyFunc,
    register,
    register_strategy,
    strategy_from_function,
)
from backtest.ranking import scores_nb

_KERNEL_SOURCE = Path(scores_nb.__file__).read_text()


def ranking_strategy(
    func: StrategyFunc | None = None,
    *,
    name: str | None = None,
    grid: Mapping[str, list[float]] | None = None,
    integer_params: tuple[str, ...] = (),
    check: ComboCheck | None = None,
) -> Callable[[StrategyFunc], StrategyFunc] | StrategyFunc:
    """Register ``f(prices, **params) -> scores (symbols x bars, higher is better, NaN: not eligible)``."""
    return register_strategy(
        func, name=name, grid=grid, integer_params=integer_params, check=check, kind="ranking"
    )


def _scores(kind: int, prices: PricePanel, *values: float) -> np.ndarray:
    out = np.empty((1, prices.n_symbols, prices.n_bars), dtype=np.float32)
    scores_nb.builtin_scores_nb(kind, np.array([values], dtype=np.float64), prices.close, out)
    return out[0]


def momentum_rank(prices: PricePanel, lookback: int = 252, skip: int = 21) -> np.ndarray:
    """The return from ``lookback`` to ``skip`` bars ago (12-1 month momentum at 252/21)."""
    return _scores(scores_nb.MOMENTUM_RANK, prices, lookback, skip)


def reversal_rank(prices: PricePanel, lookback: int = 21) -> np.ndarray:
    """Minus the return over the last ``lookback`` bars: the recent losers rank first."""
    return _scores(scores_nb.REVERSAL_RANK, prices, lookback)


def low_volatility_rank(prices: PricePanel, window: int = 63) -> np.ndarray:
    """Minus the volatility of the last ``window`` daily returns: the quietest rank first."""
    return _scores(scores_nb.LOW_VOLATILITY_RANK, prices, window)


def sma_distance_rank(prices: PricePanel, window: int = 50) -> np.ndarray:
    """Close / SMA(window) - 1: the furthest above their average rank first."""
    return _scores(scores_nb.SMA_DISTANCE_RANK, prices, window)


def _skip_below_lookback(c: Mapping[str, float]) -> str | None:
    if c["skip"] != int(c["skip"]) or not (0 <= c["skip"] < c["lookback"]):
        return f"need 0 <= skip ({c['skip']:g}) < lookback ({c['lookback']:g})"
    return None


def _window_at_least_2(c: Mapping[str, float]) -> str | None:
    return None if c["window"] >= 2 else f"window ({c['window']:g}) must be at least 2"


def _builtin(
    func: StrategyFunc,
    kernel: int,
    grid: Mapping[str, list[float]],
    warmup: tuple[str, ...],
    check: ComboCheck | None = None,
    integer_params: tuple[str, ...] = (),
) -> Strategy:
    base = strategy_from_function(func, grid=grid, integer_params=integer_params or warmup, check=check)
    return register(
        Strategy(
            name=base.name,
            func=func,
            params=base.params,
            defaults=base.defaults,
            default_grid=base.default_grid,
            integer_params=base.integer_params,
            check=check,
            warmup_params=warmup,
            description=base.description,
            kind="ranking",
            kernel=kernel,
            _extra_sources=(_KERNEL_SOURCE,),
        )
    )


_builtin(
    momentum_rank,
    scores_nb.MOMENTUM_RANK,
    {"lookback": [63, 126, 252], "skip": [0, 21]},
    ("lookback",),
    _skip_below_lookback,
    integer_params=("lookback",),
)
_builtin(reversal_rank, scores_nb.REVERSAL_RANK, {"lookback": [5, 21]}, ("lookback",))
_builtin(
    low_volatility_rank,
    scores_nb.LOW_VOLATILITY_RANK,
    {"window": [21, 63, 126]},
    ("window",),
    _window_at_least_2,
)
_builtin(
    sma_distance_rank, scores_nb.SMA_DISTANCE_RANK, {"window": [20, 50, 200]}, ("window",), _window_at_least_2
)
