"""Commands over the price data: a synthetic market, the ingest of price files, the store's catalog."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.errors import fail


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

    summary = generate_universe(out, symbols, years, seed, start=start, workers=workers)
    typer.echo(
        f"generated {summary.symbols} symbols x {summary.bars} bars, {summary.rows:,} rows "
        f"in {summary.seconds:.1f} s -> {summary.out}"
    )


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
    from cli import db as cli_db

    if db:
        cli_db.check_writable(db)  # a bad URL or an unreachable server stops here, before anything is written
    report = ingest_folder(source, Store(store), workers=workers)
    if json_output:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_ingest_report(report)
    if not report.ok:
        reason = "no file could be ingested" if report.files else f"no *.csv or *.txt files in {source}"
        raise fail(reason)
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

    if not store.is_dir():
        raise fail(f"no store at {store} (create one with `backtest ingest SOURCE --store {store}`)")
    frame = Store(store).catalog()
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
