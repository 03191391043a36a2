"""The ``backtest`` command: a thin shell over the flows and the core (entry point ``cli.app:app``)."""

import backtest  # noqa: F401 - first of all: it sets Arrow's allocator options before anything loads Arrow
