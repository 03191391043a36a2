"""The database commands of ``backtest``: ``db upgrade|optimize|stats|query-plans`` and ``results``.

A thin shell over ``backtest.db``: every database problem (bad URL, unreachable server, refused login,
unknown schema version) is one ``error:`` line and exit code 1, never a traceback.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from cli.errors import cli_errors, fail

db_app = typer.Typer(
    name="db",
    help="Manage the SQL database: schema upgrades, statistics and vacuum, query-plan checks.",
    no_args_is_help=True,
)

DbOption = Annotated[
    str, typer.Option("--db", help="Database URL: sqlite:///file.db or postgresql+psycopg://user:pw@host/db.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> Any:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        # Text, not str: symbols and plans are data and may contain rich markup
        table.add_row(*(Text("" if v is None else str(v)) for v in row))
    return table


@db_app.command("upgrade")
@cli_errors
def upgrade(
    db: DbOption,
    to: Annotated[int | None, typer.Option("--to", min=1, help="Target version (default: latest).")] = None,
) -> None:
    """Create the tables, or upgrade an older database in place to the current schema version."""
    from backtest.db.connect import forget_checks
    from backtest.db.engine import connection, db_errors, get_engine, parse_url, sqlite_path
    from backtest.db.migrations import LATEST, current_version
    from backtest.db.migrations import upgrade as run_upgrade

    def act() -> tuple[int, list[int]]:
        parsed = parse_url(db)
        path = sqlite_path(parsed)
        if path is not None and not path.parent.is_dir():
            from backtest.db.engine import DatabaseError

            raise DatabaseError(f"cannot create {path}: folder {path.parent} does not exist")
        engine = get_engine(parsed)
        with db_errors(db, "open"), connection(engine) as conn:
            before = current_version(conn)
        applied = run_upgrade(engine, db, to or LATEST)
        forget_checks()
        return before, applied

    before, applied = act()
    if applied:
        typer.echo(f"schema version {before} -> {applied[-1]} (applied {', '.join(map(str, applied))})")
    else:
        typer.echo(f"schema version {before}: up to date")


@db_app.command("optimize")
@cli_errors
def optimize(
    db: DbOption,
    full: Annotated[
        bool,
        typer.Option(
            "--full", help="Complete ANALYZE of every table instead of a sampled one of the result tables."
        ),
    ] = False,
    vacuum: Annotated[
        bool, typer.Option("--vacuum/--no-vacuum", help="VACUUM when worthwhile (free pages).")
    ] = True,
    force_vacuum: Annotated[
        bool, typer.Option("--force-vacuum", help="VACUUM whatever the free pages.")
    ] = False,
) -> None:
    """Refresh the planner statistics and reclaim free space when worthwhile."""
    from backtest.db.connect import open_db
    from backtest.db.engine import db_errors
    from backtest.db.optimize import optimize as run_optimize
    from backtest.db.optimize import vacuum as run_vacuum

    def act() -> tuple[list[str], dict[str, Any]]:
        engine = open_db(db)
        with db_errors(db, "optimize"):
            done = run_optimize(engine, full=full)
            vac = run_vacuum(engine, force=force_vacuum) if vacuum or force_vacuum else {"vacuumed": False}
        return done, vac

    done, vac = act()
    typer.echo(
        f"ran {', '.join(done)}; vacuum: {'done' if vac.get('vacuumed') else vac.get('reason', 'skipped')}"
    )


@db_app.command("stats")
@cli_errors
def stats(db: DbOption, json_output: JsonOption = False) -> None:
    """Rows per table and sizes on disk."""
    from backtest.db.connect import open_db
    from backtest.db.engine import db_errors
    from backtest.db.optimize import table_stats

    def act() -> dict[str, Any]:
        with db_errors(db, "read statistics of"):
            return table_stats(open_db(db), db)

    found = act()
    if json_output:
        typer.echo(json.dumps(found, indent=2))
        return
    rows = [
        [t["table"], f"{t['rows']:,}", f"{t['bytes']:,}" if "bytes" in t else ""] for t in found["tables"]
    ]
    console = _console()
    console.print(_table(f"{found['backend']} database", ["table", "rows", "bytes"], rows))
    size = found.get("file_bytes", found.get("database_bytes", 0))
    console.print(
        f"size {size:,} bytes" + (f", WAL {found['wal_bytes']:,} bytes" if "wal_bytes" in found else "")
    )


@db_app.command("query-plans")
@cli_errors
def query_plans(db: DbOption, json_output: JsonOption = False) -> None:
    """EXPLAIN every query the system makes; exit 1 when one scans a table instead of using an index."""
    from backtest.db.connect import open_db
    from backtest.db.engine import db_errors
    from backtest.db.optimize import check_query_plans

    def act() -> list[Any]:
        with db_errors(db, "explain queries on"):
            return check_query_plans(open_db(db), raise_on_scan=False)

    checks = act()
    bad = [c for c in checks if not c.uses_index]
    if json_output:
        typer.echo(json.dumps([c.to_dict() for c in checks], indent=2))
    else:
        rows = [[c.name, "index" if c.uses_index else "SCAN", c.plan] for c in checks]
        _console().print(_table("Query plans", ["query", "access", "plan"], rows))
    if bad:
        raise fail(f"{len(bad)} queries scan a table: {', '.join(c.name for c in bad)}")


def results(
    db: DbOption,
    run: Annotated[str | None, typer.Option("--run", help="Run id or flow run id (default: latest).")] = None,
    symbol: Annotated[
        str | None, typer.Option("--symbol", help="One symbol: its selections and metrics.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Rows shown per table.")] = 20,
    json_output: JsonOption = False,
) -> None:
    """Read a stored run back: the run, its metrics per symbol, and (with --symbol) the selections per fold.

    With only --symbol, that symbol's results across all runs. A cross-sectional run shows its portfolio
    against the benchmark, its selection per fold and the holdings of its last rebalance.
    """
    from backtest.db.results import read_holdings, read_metrics, read_run, read_selections
    from backtest.db.schema import PORTFOLIO_SYMBOL

    def act() -> tuple[Any, Any, Any, Any]:
        record = read_run(db, run) if run is not None or symbol is None else None
        if record is not None and (record.summary or {}).get("kind") == "cross_sectional":
            # one portfolio: its selections per fold (symbol PORTFOLIO_SYMBOL) and its holdings
            return (
                record,
                None,
                read_selections(db, record.id, PORTFOLIO_SYMBOL),
                read_holdings(db, record.id),
            )
        metrics = read_metrics(db, run, symbol)
        return record, metrics, read_selections(db, run, symbol) if symbol is not None else None, None

    record, metrics, selections, holdings = act()
    if json_output:
        out: dict[str, Any] = {}
        if metrics is not None:
            out["metrics"] = _records(metrics)
        if record is not None:
            out["run"] = {
                k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in record.__dict__.items()
            }
        if selections is not None:
            out["selections"] = _records(selections)
        if holdings is not None:
            out["holdings"] = _records(holdings)
        typer.echo(json.dumps(out, indent=2, default=str))
        return
    console = _console()
    if record is not None:
        console.print(
            f"run {record.id} ({record.flow_run_id}) {record.strategy}: {record.state}, started "
            f"{record.started_at:%Y-%m-%d %H:%M:%S}, prices from {record.price_source}",
            markup=False,
        )
        if record.overfitting:
            from rich.text import Text

            from cli.runs import luck_line

            console.print(Text(luck_line(record.overfitting)))
    if holdings is not None:
        _print_ranking(console, record, selections, holdings, limit)
        return
    if metrics.empty and (selections is None or selections.empty):
        typer.echo("no results" + (f" for symbol {symbol!r}" if symbol else ""))
        return
    shown = ["run_id", "symbol", "sharpe", "dsr", "total_return", "cagr", "max_drawdown", "trades", "folds"]
    if not metrics.empty:
        rows = [[_fmt(v) for v in row] for row in metrics[shown].head(limit).itertuples(index=False)]
        console.print(_table(f"Out-of-sample metrics ({len(metrics):,} rows)", shown, rows))
    if selections is not None and not selections.empty:
        console.print(_selections_table(f"Selections of {symbol}", selections, limit))


_SELECTION_COLUMNS = [
    "run_id",
    "fold",
    "test_start",
    "test_end",
    "params",
    "is_score",
    "val_score",
    "test_score",
    "basis",
]


def _selections_table(title: str, selections: Any, limit: int) -> Any:
    shown = selections[_SELECTION_COLUMNS].head(limit).assign(params=lambda f: f["params"].map(_params_text))
    return _table(
        title, _SELECTION_COLUMNS, [[_fmt(v) for v in row] for row in shown.itertuples(index=False)]
    )


def _print_ranking(console: Any, record: Any, selections: Any, holdings: Any, limit: int) -> None:
    """A cross-sectional run: its out-of-sample portfolio beside the benchmark, the selections, the holdings
    decided on the last rebalance day."""
    if selections.empty:
        typer.echo("no results (the run did not complete)")
        return
    figures = (record.summary or {}).get("figures") or {}
    port, bench = figures.get("portfolio") or {}, figures.get("benchmark") or {}
    names = ["sharpe", "total_return", "cagr", "max_drawdown", "annual_volatility", "turnover"]
    rows = [[name, _fmt(port.get(name)), _fmt(bench.get(name))] for name in names]
    console.print(
        _table("Out-of-sample portfolio (cross-sectional)", ["metric", "portfolio", "benchmark"], rows)
    )
    console.print(_selections_table("Selections of the portfolio, per fold", selections, limit))
    if not holdings.empty:
        day = holdings["date"].max()
        last = holdings[holdings["date"] == day]
        top = last.reindex(last["weight"].abs().sort_values(ascending=False).index).head(limit)
        # the heading on a line of its own: a table's title is wrapped to the (narrow) table's width
        console.print(f"Holdings decided on {day:%Y-%m-%d}: {len(last)} symbols", markup=False)
        rows = [[sym, _fmt(float(w))] for sym, w in zip(top["symbol"], top["weight"], strict=True)]
        console.print(_table("", ["symbol", "target weight"], rows))


def _records(frame: Any) -> list[dict[str, Any]]:
    return json.loads(frame.to_json(orient="records", date_format="iso"))


def _params_text(text: str) -> str:
    """``{"fast": 10.0, "slow": 80.0}`` -> ``fast=10 slow=80``."""
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in json.loads(text).items())


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if value != value else f"{value:,.4f}"
    return str(value)


def check_writable(db: str) -> None:
    """Before a command writes anything: the URL is valid, the server answers, the schema is usable."""
    from backtest.db.connect import open_db

    open_db(db, create=True, migrate=True)


def sync_store(store: Any, db: str, *, quiet: bool = False) -> None:
    """Copy the store's prices into ``db`` (changed symbols only) and say what was done."""
    from backtest.data.store import Store
    from backtest.db.engine import describe_url
    from backtest.db.prices import sync_prices

    report = sync_prices(Store(store), db)
    typer.echo(
        f"database {describe_url(db)}: {report.written:,} symbols written ({report.rows:,} rows), "
        f"{report.unchanged:,} unchanged in {report.seconds:.1f} s",
        err=quiet,
    )
