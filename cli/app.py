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
    from backtest.data.synthetic import generate_universe
    from backtest.errors import BacktestError

    try:
        summary = generate_universe(out, symbols, years, seed, start=start, workers=workers)
    except BacktestError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"generated {summary.symbols} symbols x {summary.bars} bars, {summary.rows:,} rows "
        f"in {summary.seconds:.1f} s -> {summary.out}"
    )


@app.command()
def ingest(
    source: Annotated[Path, typer.Argument(help="Folder of per-symbol price files (*.csv, *.txt).")],
    store: Annotated[Path, typer.Option("--store", help="Store folder (created when missing).")],
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Reader processes (default: all CPUs).")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the full report as JSON.")] = False,
    db: Annotated[
        str | None, typer.Option("--db", help="Also write the prices into this database URL.")
    ] = None,
) -> None:
    """Validate a folder of price files into the store; bad rows and files are reported, never lost."""
    import json

    from backtest.data.ingest import ingest_folder
    from backtest.data.store import Store
    from backtest.errors import BacktestError
    from cli import db as cli_db

    if db:
        cli_db.check_writable(db)  # a bad URL or an unreachable server stops here, before anything is written
    try:
        report = ingest_folder(source, Store(store), workers=workers)
    except (BacktestError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if json_output:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_ingest_report(report)
    if not report.ok:
        reason = "no file could be ingested" if report.files else f"no *.csv or *.txt files in {source}"
        typer.echo(f"error: {reason}", err=True)
        raise typer.Exit(1)
    if db:
        cli_db.sync_store(store, db, quiet=json_output)


_SHOWN_PROBLEMS = 20


def _print_ingest_report(report: object) -> None:
    """Summary by outcome, the first problems with file/line/reason, then one line of totals."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from backtest.data.ingest import OUTCOMES, IngestReport

    assert isinstance(report, IngestReport)
    console = Console(highlight=False)
    summary = Table(title=f"Ingested {report.source} -> {report.store}")
    for column in ("outcome", "files", "rows", "rejected rows"):
        summary.add_column(column, justify="left" if column == "outcome" else "right")
    for outcome in OUTCOMES:
        files = [f for f in report.files if f.outcome == outcome]
        summary.add_row(
            outcome,
            f"{len(files):,}",
            f"{sum(f.rows for f in files):,}",
            f"{sum(f.rejected_rows for f in files):,}",
        )
    console.print(summary)
    problems = report.problems
    if problems:
        shown = problems[:_SHOWN_PROBLEMS]
        table = Table(title=f"Problems (first {len(shown)} of {len(problems):,})")
        table.add_column("file")
        table.add_column("line", justify="right")
        table.add_column("reason")
        for problem in shown:
            line = "file" if problem.line is None else str(problem.line)
            # Text, not str: file names and reasons are data and may contain rich markup like [red].
            table.add_row(Text(problem.file), line, Text(problem.reason))
        console.print(table)
    totals = report.totals()
    console.print(
        Text(
            f"{totals['files']:,} files: {totals['added']:,} added, {totals['replaced']:,} replaced, "
            f"{totals['unchanged']:,} unchanged, {totals['failed']:,} failed; {totals['rows']:,} rows stored, "
            f"{totals['rejected_rows']:,} rows rejected in {report.elapsed_s:.1f} s"
        )
    )


@app.command()
def catalog(
    store: Annotated[Path, typer.Option("--store", help="Store folder.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON list of objects.")] = False,
) -> None:
    """List the stored symbols with their first and last date, rows and rejected rows."""
    import json

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from backtest.data.store import Store
    from backtest.errors import BacktestError

    if not store.is_dir():
        typer.echo(
            f"error: no store at {store} (create one with `backtest ingest SOURCE --store {store}`)", err=True
        )
        raise typer.Exit(1)
    try:
        frame = Store(store).catalog()
    except (BacktestError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    rows = [
        {
            "symbol": str(r.symbol),
            "first_date": r.first_date.isoformat(),
            "last_date": r.last_date.isoformat(),
            "rows": int(r.rows),
            "rejected_rows": int(r.rejected_rows),
        }
        for r in frame.itertuples(index=False)
    ]
    if json_output:
        typer.echo(json.dumps(rows, indent=2))
        return
    console = Console(highlight=False)
    if not rows:
        console.print(Text(f"the store at {store} is empty"))
        return
    table = Table(title=f"Catalog of {store}")
    table.add_column("symbol")
    table.add_column("first date")
    table.add_column("last date")
    table.add_column("rows", justify="right")
    table.add_column("rejected", justify="right")
    for row in rows:
        table.add_row(
            Text(row["symbol"]),
            row["first_date"],
            row["last_date"],
            f"{row['rows']:,}",
            f"{row['rejected_rows']:,}",
        )
    console.print(table)
    console.print(
        Text(
            f"{len(rows):,} symbols, {sum(r['rows'] for r in rows):,} rows, "
            f"{sum(r['rejected_rows'] for r in rows):,} rejected"
        )
    )


def _study_params(**values: object) -> object:
    """Build the flow's parameters, turning validation errors into one clear line."""
    from pydantic import ValidationError

    from flows.params import StudyParams

    try:
        return StudyParams(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        lines = [f"{'.'.join(map(str, e['loc'])) or 'parameters'}: {e['msg']}" for e in exc.errors()]
        typer.echo("error: " + "; ".join(lines), err=True)
        raise typer.Exit(1) from None


@app.command()
def run(
    store: Annotated[Path, typer.Option("--store", help="Price store folder (filled by `backtest ingest`).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for summary.json and the result tables.")],
    strategy: Annotated[
        str, typer.Option(help="Built-in strategy or package.module:function.")
    ] = "sma_crossover",
    param: Annotated[
        list[str] | None, typer.Option("--param", help="Grid values: name=v1,v2,... or name=start:stop:step.")
    ] = None,
    train_years: Annotated[float, typer.Option(help="Train window (phase 1), years.")] = 5.0,
    validate_years: Annotated[float, typer.Option(help="Validate window (phase 2), years.")] = 1.0,
    test_years: Annotated[float, typer.Option(help="Test window (phase 3), years.")] = 1.0,
    anchored: Annotated[bool, typer.Option("--anchored", help="Expanding train windows.")] = False,
    top_k: Annotated[int, typer.Option(help="Combinations kept per symbol after phase 1.")] = 5,
    objective: Annotated[str, typer.Option(help="sharpe, sortino, total_return or calmar.")] = "sharpe",
    fees_bps: Annotated[float, typer.Option(help="Fees in basis points of traded notional.")] = 0.0,
    slippage_bps: Annotated[float, typer.Option(help="Slippage in basis points of traded notional.")] = 0.0,
    execution: Annotated[str, typer.Option(help="close or next_open.")] = "close",
    runner: Annotated[str, typer.Option(help="threads, processes or dask.")] = "threads",
    workers: Annotated[int | None, typer.Option(help="Concurrent chunks (default: CPUs).")] = None,
    dask_address: Annotated[str | None, typer.Option(help="Existing Dask scheduler address.")] = None,
    chunk_size: Annotated[int | None, typer.Option(help="Symbols per chunk (default: chosen).")] = None,
    symbols: Annotated[str | None, typer.Option(help="Comma-separated symbols (default: all).")] = None,
    start: Annotated[str | None, typer.Option(help="First date of the study, YYYY-MM-DD.")] = None,
    end: Annotated[str | None, typer.Option(help="Last date of the study, YYYY-MM-DD.")] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Show Prefect's run logs in the terminal.")
    ] = False,
    db: Annotated[
        str | None,
        typer.Option(
            "--db", help="Read prices from and write results to this database URL (default: the store)."
        ),
    ] = None,
    persist: Annotated[
        bool, typer.Option("--persist/--no-persist", help="Write the run's results into the database.")
    ] = True,
    persist_oos: Annotated[
        bool, typer.Option("--persist-oos", help="Also write every out-of-sample return into the database.")
    ] = False,
    report: Annotated[
        bool,
        typer.Option(
            "--report/--no-report",
            help="Draw the plots and write report.html at the end (`backtest report OUT` builds it later).",
        ),
    ] = True,
) -> None:
    """Run the three-phase walk-forward study as a Prefect flow and write its results to --out."""
    from flows.settings import prepare_environment

    prepare_environment(verbose)
    from rich.console import Console

    from backtest.config import parse_params
    from backtest.errors import BacktestError
    from cli.runs import run_study_cli

    if not db and not (store / "catalog.parquet").exists():
        typer.echo(
            f"error: {store} is not a price store: fill it first with `backtest ingest SOURCE --store {store}`",
            err=True,
        )
        raise typer.Exit(1)
    try:
        grid = parse_params(param or [])
    except BacktestError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    params = _study_params(
        store=str(store),
        out=str(out),
        strategy=strategy,
        grid=grid.as_dict() if grid else None,
        train_years=train_years,
        validate_years=validate_years,
        test_years=test_years,
        anchored=anchored,
        top_k=top_k,
        objective=objective,
        fees_bps=fees_bps,
        slippage_bps=slippage_bps,
        execution=execution,
        runner=runner,
        workers=workers,
        dask_address=dask_address,
        chunk_size=chunk_size,
        symbols=[s.strip() for s in symbols.split(",") if s.strip()] if symbols else None,
        start=start,
        end=end,
        db=db,
        persist=persist,
        persist_oos=persist_oos,
        report=report,
    )
    from cli import db as cli_db

    if params.persist:  # one clear line, before any work, when the database is unusable
        cli_db.check_writable(params.results_db())
    raise typer.Exit(run_study_cli(params, Console()))


@app.command()
def demo(
    folder: Annotated[Path, typer.Option(help="Where the demo's data, store and results go.")] = Path("demo"),
    symbols: Annotated[int, typer.Option(help="Synthetic symbols.")] = 500,
    years: Annotated[float, typer.Option(help="Years of daily bars.")] = 20.0,
    seed: Annotated[int, typer.Option(help="Random seed of the synthetic market.")] = 42,
    runner: Annotated[str, typer.Option(help="threads, processes or dask.")] = "threads",
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Show Prefect's run logs in the terminal.")
    ] = False,
) -> None:
    """Generate a synthetic market, ingest it and run the study on it (repeated, it reuses what exists)."""
    from flows.settings import prepare_environment

    prepare_environment(verbose)
    import json

    from rich.console import Console

    from backtest.data.ingest import ingest_folder
    from backtest.data.store import Store
    from backtest.data.synthetic import generate_universe
    from cli.runs import run_study_cli

    console = Console()
    data, store_dir, out = folder / "data", folder / "store", folder / "results"
    manifest = data / "universe.json"
    wanted = {"n_symbols": symbols, "years": float(years)}
    existing = json.loads(manifest.read_text()).get("parameters", {}) if manifest.exists() else {}
    if (
        manifest.exists()
        and json.loads(manifest.read_text()).get("seed") == seed
        and all(existing.get(k) == v for k, v in wanted.items())
    ):
        console.print(f"synthetic market: reusing {data}")
    else:
        summary = generate_universe(data, symbols, years, seed)
        console.print(
            f"synthetic market: {summary.symbols} symbols x {summary.bars} bars in {summary.seconds:.1f} s"
        )
    report = ingest_folder(data, Store(store_dir))
    console.print(
        f"store {store_dir}: {report.count('added')} added, {report.count('replaced')} replaced, "
        f"{report.count('unchanged')} unchanged, {report.rejected_rows} rows rejected"
    )
    params = _study_params(store=str(store_dir), out=str(out), runner=runner)
    raise typer.Exit(run_study_cli(params, console))


# A local Prefect server, the deployments of prefect.yaml and runs of them (cli/server.py).
from cli import server as cli_server  # noqa: E402 - registered after the commands above, kept out of their way

app.add_typer(cli_server.server_app)
app.command()(cli_server.deploy)
app.command()(cli_server.trigger)

# The benchmark suite and its README table (cli/bench.py).
from cli import bench as cli_bench  # noqa: E402 - registered after the commands above

app.command()(cli_bench.bench)

# The SQL layer's commands (cli/db.py).
from cli import db as cli_db  # noqa: E402 - registered after the commands above

app.add_typer(cli_db.db_app)
app.command()(cli_db.results)

# The run report and the alert automation (cli/report.py).
from cli import report as cli_report  # noqa: E402 - registered after the commands above

app.command()(cli_report.report)
app.command("alerts-automation")(cli_report.alerts_automation)
