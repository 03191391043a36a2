"""The original design's per-symbol style: ``f(symbol, frame) -> dict of metrics``, on the chunked machinery.

Some research code is easier to write one symbol at a time with pandas. Such a function runs per chunk like
the vectorised study (same loading, same chunks, same task runners); a symbol whose function raises gets its
error recorded in the ``error`` column instead of failing its chunk.
"""

from __future__ import annotations

import importlib
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from backtest.errors import ConfigError
from backtest.panel import PricePanel

PerSymbolFunc = Callable[[str, pd.DataFrame], Mapping[str, Any]]


def load_function(spec: str) -> PerSymbolFunc:
    """Import a per-symbol function named as ``package.module:function``."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"name the function as package.module:function, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc}") from None
    func = getattr(module, attr, None)
    if not callable(func):
        raise ConfigError(f"module {module_name!r} has no function {attr!r}")
    return func


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
