"""The ``backtest`` command: a thin typer shell over the core library and the Prefect flows."""

from __future__ import annotations

import typer

from backtest import __version__

app = typer.Typer(
    name="backtest",
    help="Three-phase walk-forward backtests over a whole stock market, orchestrated by Prefect.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def main() -> None:
    """Three-phase walk-forward backtests over a whole stock market, orchestrated by Prefect."""


@app.command()
def version() -> None:
    """Print the version of the core library."""
    typer.echo(__version__)
