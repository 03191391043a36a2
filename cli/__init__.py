"""The ``backtest`` command: a thin shell over the flows and the core (entry point ``cli.app:app``)."""
