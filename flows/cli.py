"""The ``backtest`` command: a thin typer shell over the core library and the Prefect flows."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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


@app.command()
def generate(
    out: Annotated[Path, typer.Argument(help="Folder for the <SYMBOL>_data.csv files and universe.json.")],
    symbols: Annotated[int, typer.Option("--symbols", help="Number of symbols.")] = 4000,
    years: Annotated[float, typer.Option("--years", help="Years of history, 252 bars a year.")] = 20.0,
    seed: Annotated[int, typer.Option("--seed", help="Random seed: same seed, same bytes.")] = 42,
    start: Annotated[str, typer.Option("--start", help="First date (or next weekday).")] = "2005-01-03",
    workers: Annotated[int | None, typer.Option("--workers", help="Processes (default: all CPUs).")] = None,
) -> None:
    """Write a synthetic market in the sp500 CSV format (defaults: the 4,000 x 20-year benchmark workload)."""
    # Imported here so that other commands do not pay for numba at start-up.
    from backtest.errors import BacktestError
    from backtest.synthetic import generate_universe

    try:
        summary = generate_universe(out, symbols, years, seed, start=start, workers=workers)
    except BacktestError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"generated {summary.symbols} symbols x {summary.bars} bars, {summary.rows:,} rows "
        f"in {summary.seconds:.1f} s -> {summary.out}"
    )
