"""The original design's per-symbol style: ``f(symbol, frame) -> dict of metrics``, on the chunked machinery.

Some research code is easier to write one symbol at a time with pandas. Such a function runs per chunk like
the vectorised study (same loading, same chunks, same task runners); a symbol whose function raises gets its
error recorded in the ``error`` column instead of failing its chunk.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from backtest.data.panel import PricePanel
from backtest.engine.strategies import import_function

PerSymbolFunc = Callable[[str, pd.DataFrame], Mapping[str, Any]]


def load_function(spec: str) -> PerSymbolFunc:
    """Import a per-symbol function named as ``package.module:function``."""
    return import_function(spec)  # type: ignore[return-value]


def run_per_symbol(panel: PricePanel, func: PerSymbolFunc) -> pd.DataFrame:
    """One row per symbol: the metrics ``func`` returned for the symbol's own bars, or its error."""
    rows: list[dict[str, Any]] = []
    for symbol in panel.symbols:
        frame = panel.frame(symbol)
        row: dict[str, Any] = {"symbol": symbol, "bars": len(frame), "error": None}
        try:
            result = func(symbol, frame)
            if not isinstance(result, Mapping):
                raise TypeError(f"expected a dict of metrics, got {type(result).__name__}")
            row.update({str(k): v for k, v in result.items() if k not in ("symbol", "bars", "error")})
        except Exception as exc:
            last = traceback.extract_tb(exc.__traceback__)[-1]
            row["error"] = f"{type(exc).__name__}: {exc} (at {last.filename}:{last.lineno})"
        rows.append(row)
    return pd.DataFrame(rows)
