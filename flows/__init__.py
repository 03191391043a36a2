"""Prefect flows: the study, ingest, database maintenance, deployments serve them."""

import backtest  # noqa: F401 - first of all: it sets Arrow's allocator options before anything loads Arrow
