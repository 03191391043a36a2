"""The ``backtest`` command: a thin typer shell over the core library and the Prefect flows."""

from __future__ import annotations

import typer

from backtest import __version__
from cli import bench, data, db, report, server, study
from cli.errors import cli_errors

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


# the commands, in the order `backtest --help` lists them; every one reports errors as one line (cli.errors)
for command in (
    data.generate,
    data.ingest,
    data.catalog,
    study.run,
    study.demo,
    server.deploy,
    server.trigger,
    bench.bench,
    db.results,
    report.report,
):
    app.command()(cli_errors(command))
app.command("alerts-automation")(cli_errors(report.alerts_automation))
app.add_typer(server.server_app)
app.add_typer(db.db_app)
