"""Errors the core raises at its entry points, each carrying a message that says how to fix the problem."""


class BacktestError(Exception):
    """Base class: anything the user can fix by changing inputs or configuration."""


class ConfigError(BacktestError, ValueError):
    """A configuration value is invalid (unknown strategy, bad grid, impossible fold settings...)."""


class DataError(BacktestError):
    """Input data cannot be used (unreadable file, unknown layout, empty store...)."""


class StrategyError(BacktestError):
    """A strategy returned something the simulator cannot use (wrong shape, NaN or out-of-range weights)."""
