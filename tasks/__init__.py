"""Prefect tasks: a few lines each over the core (backtest/)."""

import backtest  # noqa: F401 - first of all: it sets Arrow's allocator options before anything loads Arrow
