"""Cross-sectional (ranking) studies: docs/cross_sectional.md."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # lazily: backtest.engine.strategies imports this package's strategies at its end
    if name == "ranking_strategy":
        from backtest.ranking.strategies import ranking_strategy

        return ranking_strategy
    raise AttributeError(name)
