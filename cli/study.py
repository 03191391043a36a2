"""Commands that run the study flow: ``run`` over a store, ``demo`` end to end on a synthetic market."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from backtest import defaults as D
from cli.errors import fail

if TYPE_CHECKING:
    from rich.console import Console

    from cli.runs import Api

EphemeralOption = Annotated[
    bool,
    typer.Option(
        "--ephemeral",
        help="Use a Prefect server of this command's own, stopped at its end, instead of the project's "
        "(also BACKTEST_EPHEMERAL=1); a PREFECT_API_URL you set is used either way.",
    ),
]


def _study_params(**values: object) -> object:
    """Build the flow's parameters, turning validation errors into one clear line."""
    from pydantic import ValidationError

    from flows.params import StudyParams

    try:
        return StudyParams(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        lines = [f"{'.'.join(map(str, e['loc'])) or 'parameters'}: {e['msg']}" for e in exc.errors()]
        raise fail("; ".join(lines)) from None


def run(
    store: Annotated[Path, typer.Option("--store", help="Price store folder (filled by `backtest ingest`).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for summary.json and the result tables.")],
    strategy: Annotated[str, typer.Option(help="Built-in strategy or package.module:function.")] = D.STRATEGY,
    param: Annotated[
        list[str] | None, typer.Option("--param", help="Grid values: name=v1,v2,... or name=start:stop:step.")
    ] = None,
    train_years: Annotated[float, typer.Option(help="Train window (phase 1), years.")] = D.TRAIN_YEARS,
    validate_years: Annotated[
        float, typer.Option(help="Validate window (phase 2), years.")
    ] = D.VALIDATE_YEARS,
    test_years: Annotated[float, typer.Option(help="Test window (phase 3), years.")] = D.TEST_YEARS,
    anchored: Annotated[bool, typer.Option("--anchored", help="Expanding train windows.")] = D.ANCHORED,
    top_k: Annotated[int, typer.Option(help="Combinations kept per symbol after phase 1.")] = D.TOP_K,
    objective: Annotated[str, typer.Option(help=", ".join(D.OBJECTIVES) + ".")] = D.OBJECTIVE,
    fees_bps: Annotated[float, typer.Option(help="Fees in basis points of traded notional.")] = D.FEES_BPS,
    slippage_bps: Annotated[
        float, typer.Option(help="Slippage in basis points of traded notional.")
    ] = D.SLIPPAGE_BPS,
    execution: Annotated[str, typer.Option(help=" or ".join(D.EXECUTIONS) + ".")] = D.EXECUTION,
    runner: Annotated[str, typer.Option(help=", ".join(D.RUNNERS) + ".")] = D.RUNNER,
    workers: Annotated[int | None, typer.Option(help="Concurrent chunks (default: CPUs).")] = None,
    dask_address: Annotated[str | None, typer.Option(help="Existing Dask scheduler address.")] = None,
    chunk_size: Annotated[
        int | None, typer.Option(min=1, help="Symbols per chunk (default: chosen).")
    ] = None,
    symbols: Annotated[str | None, typer.Option(help="Comma-separated symbols (default: all).")] = None,
    start: Annotated[str | None, typer.Option(help="First date of the study, YYYY-MM-DD.")] = None,
    end: Annotated[str | None, typer.Option(help="Last date of the study, YYYY-MM-DD.")] = None,
    pbo_blocks: Annotated[
        int,
        typer.Option(
            min=2, max=D.MAX_PBO_BLOCKS, help="Blocks of the PBO's cross-validation (even; 16 is usual)."
        ),
    ] = D.PBO_BLOCKS,
    top: Annotated[
        int | None, typer.Option(min=1, help="Ranking strategies: hold the N best (default 50).")
    ] = None,
    quantile: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Ranking strategies: hold the best share instead.")
    ] = None,
    side: Annotated[str, typer.Option(help="Ranking strategies: long or long_short.")] = "long",
    weighting: Annotated[
        str, typer.Option(help="Ranking strategies: equal, score (by rank) or inverse_vol.")
    ] = "equal",
    max_weight: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Ranking strategies: largest weight of one symbol.")
    ] = 1.0,
    rebalance: Annotated[
        int, typer.Option(min=1, help="Ranking strategies: trading days between rebalances.")
    ] = 21,
    universe: Annotated[
        Path | None,
        typer.Option(help="Ranking strategies: membership file symbol,start,end (point in time)."),
    ] = None,
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
    ephemeral: EphemeralOption = False,
) -> None:
    """Run the three-phase walk-forward study as a Prefect flow and write its results to --out."""
    from flows.settings import prepare_environment

    prepare_environment(verbose)
    from rich.console import Console

    from cli.grid import parse_params
    from cli.runs import run_study_cli

    if not db and not (store / "catalog.parquet").exists():
        raise fail(
            f"{store} is not a price store: fill it first with `backtest ingest SOURCE --store {store}`"
        )
    grid = parse_params(param or [])
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
        pbo_blocks=pbo_blocks,
        top=top,
        quantile=quantile,
        side=side,
        weighting=weighting,
        max_weight=max_weight,
        rebalance=rebalance,
        universe=str(universe) if universe else None,
        db=db,
        persist=persist,
        persist_oos=persist_oos,
        report=report,
    )
    from cli import db as cli_db

    if params.persist:  # one clear line, before any work, when the database is unusable
        cli_db.check_writable(params.results_db())
    console = Console()
    raise typer.Exit(run_study_cli(params, console, _api(console, ephemeral)))


def _api(console: Console, ephemeral: bool) -> Api:
    """The command's Prefect API (cli.runs.Api), a server problem as one line."""
    from cli.runs import Api, ApiError

    try:
        return Api(console, ephemeral)
    except ApiError as exc:
        raise fail(str(exc)) from None


def demo(
    folder: Annotated[Path, typer.Option(help="Where the demo's data, store and results go.")] = Path("demo"),
    symbols: Annotated[int, typer.Option(help="Synthetic symbols.")] = 500,
    years: Annotated[float, typer.Option(help="Years of daily bars.")] = 20.0,
    seed: Annotated[int, typer.Option(help="Random seed of the synthetic market.")] = 42,
    runner: Annotated[str, typer.Option(help=", ".join(D.RUNNERS) + ".")] = D.RUNNER,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Show Prefect's run logs in the terminal.")
    ] = False,
    ephemeral: EphemeralOption = False,
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
    api = _api(console, ephemeral)  # a new server starts while the market is made
    api.warm(D.STRATEGY)
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
    raise typer.Exit(run_study_cli(params, console, api))
