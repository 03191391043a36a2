"""The benchmark suite: ``backtest bench`` (suite), its measurements, the vectorbt and pandas comparisons,
the recorded-results report, and standalone scripts for single questions (core_w, db_load, flow_overhead)."""

import backtest  # noqa: F401 - first of all: it sets Arrow's allocator options before anything loads Arrow
