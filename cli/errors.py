"""How every ``backtest`` command fails: one line ``error: ...`` on stderr and exit code 1, no traceback.

The core raises ``BacktestError`` (bad input, a database it cannot use) with a message that says how to fix
it, and the operating system ``OSError`` (a missing folder, a full disk); ``cli_errors`` turns both into
that line for the command it wraps. A command that finds a problem itself raises ``fail(message)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer

P = ParamSpec("P")
T = TypeVar("T")


def fail(message: str) -> typer.Exit:
    """Print ``message`` as the command's error; ``raise`` the result to exit with code 1."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def cli_errors(command: Callable[P, T]) -> Callable[P, T]:
    """``command`` with the core's and the system's errors reported as one line (typer reads its signature
    through ``functools.wraps``)."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        from backtest.errors import BacktestError

        try:
            return command(*args, **kwargs)
        except (BacktestError, OSError) as exc:
            raise fail(str(exc)) from None

    return run
