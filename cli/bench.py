"""``backtest bench``: the benchmark suite (``benchmarks.suite``) from the command line, and the table of its
recorded results in docs/benchmarks.md (``benchmarks.report``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli.errors import fail

RATIO_TEXT: dict[str, tuple[str, str]] = {
    "flow_warm_over_cold": ("flow warm / flow cold (goal <= 10 %)", "{:.1%}"),
    "flow_same_work_over_core": (
        "Prefect overhead: flow cold / bare core, same work (study and tables; best of interleaved pairs; "
        "goal <= 1.2x)",
        "{:.2f}x",
    ),
    "flow_cold_over_core": (
        "flow cold as a user runs it (report drawn, results into the database) / the same bare core",
        "{:.2f}x",
    ),
    "cache_hit_rate_warm": ("cache hit rate of the warm run", "{:.0%}"),
    "workers_2_over_1": ("core, 2 workers vs 1 (goal >= 1.7x)", "{:.2f}x"),
    "parallel_efficiency": ("parallel efficiency (speed-up / workers)", "{:.0%}"),
    "symbols_4x_time_ratio": ("core time(N) / time(N/4) symbols (goal <= 4.4)", "{:.2f}"),
    "symbols_8x_time_ratio": ("core time(N) / time(N/8) symbols", "{:.2f}"),
    "grid_64_over_16": ("core time, 64 / 16 combinations", "{:.2f}"),
    "grid_256_over_16": ("core time, 256 / 16 combinations", "{:.2f}"),
    "core_study_vs_vectorbt": ("throughput, core study vs vectorbt, same slice (goal >= 100x)", "{:,.1f}x"),
    "core_kernel_vs_vectorbt": ("throughput, core grid kernel vs vectorbt, same slice", "{:,.1f}x"),
    "flow_vs_vectorbt": ("throughput, flow vs vectorbt, same slice (goal >= 30x)", "{:,.1f}x"),
    "core_at_scale_vs_vectorbt": ("throughput, core on N symbols vs vectorbt on the slice", "{:,.1f}x"),
    "flow_at_scale_vs_vectorbt": ("throughput, flow on N symbols vs vectorbt on the slice", "{:,.1f}x"),
    "vectorbt_memory_over_core": ("memory added, vectorbt / core study, same slice", "{:,.1f}x"),
    "core_study_vs_naive": ("throughput, core study vs naive pandas, same slice", "{:,.1f}x"),
    "core_kernel_vs_naive": ("throughput, core grid kernel vs naive pandas, same slice", "{:,.1f}x"),
    "flow_vs_naive": ("throughput, flow vs naive pandas, same slice", "{:,.1f}x"),
    "luck_kernel_overhead": (
        "statistics of luck: grid kernel with the trials' returns / without - 1",
        "{:.1%}",
    ),
    "luck_share_of_core": ("statistics of luck, share of the core's time (goal <= 5 %)", "{:.1%}"),
    "rank_flow_warm_over_cold": ("cross-sectional: flow warm / flow cold (goal <= 10 %)", "{:.1%}"),
    "rank_core_vs_vectorbt": (
        "cross-sectional: core portfolios vs vectorbt from_orders, same slice",
        "{:,.1f}x",
    ),
    "rank_flow_vs_vectorbt": ("cross-sectional: flow vs vectorbt from_orders, same slice", "{:,.1f}x"),
    "rank_flow_at_scale_vs_vectorbt": (
        "cross-sectional: flow on N symbols vs vectorbt on the slice (goal >= 30x)",
        "{:,.1f}x",
    ),
    "rank_core_vs_naive": (
        "cross-sectional: core portfolios vs the naive pandas loop, same slice",
        "{:,.1f}x",
    ),
    "command_cold_over_flow": ("command: `backtest run` cold / its flow (goal <= 1.15x)", "{:.2f}x"),
    "command_warm_over_cold": ("command: `backtest run` warm / cold (goal <= 15 %)", "{:.1%}"),
    "command_first_over_cold": (
        "command: the first of a project / a later cold one (goal <= 1.3x)",
        "{:.2f}x",
    ),
    "demo_first_flow_over_second": (
        "command: `backtest demo` on a fresh clone, flow / second flow (goal <= 2x)",
        "{:.2f}x",
    ),
}


def bench(
    quick: Annotated[
        bool,
        typer.Option("--quick", help="Reduced sizes (1,000 symbols x 10 years): every ratio in < 3 min."),
    ] = False,
    table: Annotated[
        bool,
        typer.Option(
            "--table", help="Only regenerate the results table and plot of --readme from the JSON results."
        ),
    ] = False,
    symbols: Annotated[
        int | None, typer.Option(min=8, help="Symbols of the universe (default: 4,000; --quick 1,000).")
    ] = None,
    years: Annotated[
        float | None, typer.Option(min=7.5, help="Years of daily bars (default: 20; --quick 10).")
    ] = None,
    slice_symbols: Annotated[int, typer.Option(min=1, help="Symbols of the vectorbt/naive slice.")] = 200,
    workers: Annotated[int, typer.Option(min=2, help="Workers of the parallel runs (W: 2).")] = 2,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic universe.")] = 42,
    data: Annotated[Path, typer.Option(help="Where synthetic stores are built and reused.")] = Path(
        "benchmarks/.data"
    ),
    results: Annotated[Path, typer.Option(help="Folder of the JSON results.")] = Path("benchmarks/results"),
    readme: Annotated[
        Path, typer.Option(help="Markdown page whose recorded-results section is regenerated.")
    ] = Path("docs/benchmarks.md"),
    no_save: Annotated[
        bool, typer.Option("--no-save", help="Write no JSON result and leave the --readme page alone.")
    ] = False,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Generate and ingest the data again.")] = False,
    keep_runs: Annotated[
        bool, typer.Option("--keep-runs", help="Keep the flow runs' result folders.")
    ] = False,
) -> None:
    """Benchmark W end to end (core, Prefect flow cold/warm), against vectorbt and naive pandas, and scaling."""
    from benchmarks.report import update_readme

    if table:
        png = update_readme(readme, results)
        typer.echo(f"regenerated the results section of {readme}" + (f" and {png}" if png else ""))
        return

    from benchmarks.suite import BenchSizes, prepare_prefect_environment

    try:
        data.mkdir(parents=True, exist_ok=True)
        prepare_prefect_environment(data)  # before anything imports Prefect
    except OSError as exc:
        raise fail(f"cannot use {data} for the benchmark's data: {exc}") from None
    from dataclasses import replace

    from rich.console import Console

    from benchmarks.measure import describe_machine, machine_line
    from benchmarks.suite import run_bench

    sizes = BenchSizes.quick() if quick else BenchSizes.full()
    if symbols is not None or years is not None:
        sizes = replace(sizes, mode="custom", symbols=symbols or sizes.symbols, years=years or sizes.years)
        # the demo's market no larger than the universe asked for
        sizes = replace(sizes, demo_symbols=min(sizes.demo_symbols, sizes.symbols), demo_years=sizes.years)
    sizes = replace(sizes, seed=seed, workers=workers, slice_symbols=slice_symbols)
    if (sizes.symbols, sizes.years) == (4000, 20.0):
        sizes = replace(sizes, mode="full")

    console = Console(highlight=False, width=None if console_is_tty() else 130)
    console.print(
        f"[bold]backtest bench[/] ({sizes.mode}): {sizes.symbols:,} symbols x {sizes.years:g} years, "
        f"{sizes.workers} workers"
    )
    console.print(machine_line(describe_machine()))
    run = run_bench(
        sizes, data, None if no_save else results, console.print, rebuild=rebuild, keep_runs=keep_runs
    )
    print_report(run, console)
    if run.path is not None:
        console.print(f"results: {run.path}")
        png = update_readme(readme, results)
        console.print(f"regenerated {readme}" + (f" and {png}" if png else ""))
    raise typer.Exit(run.exit_code)


def console_is_tty() -> bool:
    import sys

    return sys.stdout.isatty()


def profile_table(p: dict[str, Any]) -> Any:
    """Where the time went: building the data, the flow's phases cold and warm (and the flow-run creation and
    teardown around them), the core's thread seconds per phase; with throughput and peak memory."""
    from rich.table import Table

    table = Table(title=f"Profile: {p['sizes']['symbols']:,} symbols x {p['sizes']['years']:g} years")
    for column in ("step", "wall s", "where the time went (s)", "M bars x comb./s", "peak RSS MB"):
        table.add_column(column, justify="left" if column in ("step", "where the time went (s)") else "right")
    d = p["data"]
    table.add_row(
        "data" + (f" (built {d.get('created')}, reused)" if d.get("reused") else ""),
        f"{(d.get('generate_seconds') or 0) + (d.get('ingest_seconds') or 0):.1f}",
        f"generate {d.get('generate_seconds')}, ingest {d.get('ingest_seconds')} ({d.get('rows', 0):,} rows)",
        "",
        "",
    )
    for label in ("same_work", "cold", "warm", "slice"):
        run = p["flow"].get(label) or {}
        summary = run.get("summary") or {}
        phases = ", ".join(f"{k} {v:.2f}" for k, v in (summary.get("phase_seconds") or {}).items())
        if summary.get("wall_seconds") is not None:
            phases += f", outside its wall_seconds (report, run start/end) {run['wall_seconds'] - summary['wall_seconds']:.2f}"
        cache = summary.get("cache") or {}
        rate = run.get("bars_x_combinations_per_second")
        name = "cold, same work (no report, no database)" if label == "same_work" else label
        table.add_row(
            f"flow {name} ({cache.get('hits', '?')} hits / {cache.get('misses', '?')} misses)",
            f"{run.get('wall_seconds', float('nan')):.2f}",
            phases or str(run.get("error")),
            f"{rate / 1e6:,.0f}" if rate else "",
            f"{run.get('peak_rss_with_children_mb', 0):,.0f} (tree)",
        )
    core = p["core"]
    rows = [("core, {w} workers", core["main"]), ("core, 1 worker", core["one_worker"])]
    if p["flow"].get("core_beside_cold"):
        rows.append(("core, {w} workers, right before flow cold", p["flow"]["core_beside_cold"]))
    for label, run in rows:
        table.add_row(
            label.format(w=p["sizes"]["workers"]),
            f"{run['wall_seconds']:.2f}",
            "threads: " + ", ".join(f"{k} {v:.2f}" for k, v in run["thread_seconds"].items()),
            f"{run['bars_x_combinations_per_second'] / 1e6:,.0f}",
            f"{run['peak_rss_mb']:,.0f}",
        )
    sl = p["slice"]
    beside = (sl.get("vectorbt") or {}).get("core_beside") or {}
    for label, run in (
        ("slice: core grid kernel", sl["kernel"]),
        ("slice: core study", sl["study"]),
        ("slice: naive pandas", sl["naive"]),
        ("slice: core grid kernel, beside vectorbt", beside.get("kernel") or {"reason": "vectorbt not run"}),
        ("slice: core study, beside vectorbt", beside.get("study") or {"reason": "vectorbt not run"}),
        ("slice: vectorbt", sl.get("vectorbt") or {}),
    ):
        if "wall_seconds" not in run:
            table.add_row(label, "", run.get("reason", "not run"), "", "")
            continue
        table.add_row(
            label,
            f"{run['wall_seconds']:.3f}",
            f"RSS +{run['peak_rss_mb'] - run['start_rss_mb']:,.0f} MB during the run",
            f"{run['bars_x_combinations_per_second'] / 1e6:,.1f}",
            f"{run['peak_rss_mb']:,.0f}",
        )
    return table


def print_report(run: Any, console: Any) -> None:
    """Every ratio, then every goal (MET / MISSED / not judged, with the phase seconds that explain a miss),
    then the problems that make the run fail."""
    from rich.table import Table
    from rich.text import Text

    p = run.payload
    ratios = Table(title="Ratios (measured side by side in this run)")
    ratios.add_column("ratio")
    ratios.add_column("value", justify="right")
    for key, (text, pattern) in RATIO_TEXT.items():
        value = p["ratios"].get(key)
        ratios.add_row(text, "n/a" if value is None else pattern.format(value))
    console.print(ratios)
    sl = p["slice"]
    console.print(
        f"slice: {sl['symbols']} symbols, {sl['bars']:,} bars x {sl['combinations']} combinations, "
        f"{sl['fees_bps']:g} bps fees; {sl['exact_ties']} (symbol, combination) pairs with an exact tie of the "
        "two means left out of the total-return checks"
    )
    console.print(profile_table(p))
    goals = Table(title="Goals (docs/design.md section 4)")
    for column in ("goal", "target", "value", "verdict"):
        goals.add_column(column, justify="right" if column == "value" else "left")
    for g in run.goals:
        if g.value is None:
            shown = "n/a"
        elif g.target.endswith("%"):
            shown = f"{g.value:.1%}"
        else:
            shown = f"{g.value:,.2f}"
        verdict = "MET" if g.met else ("MISSED" if g.met is False else f"not judged ({g.note})")
        goals.add_row(g.name, g.target, shown, verdict)
    console.print(goals)
    for g in run.goals:
        if g.met is False:
            value = "n/a" if g.value is None else f"{g.value:,.3g}"
            console.print(Text(f"MISSED {g.name}: {value} vs {g.target}; {g.why}"))
    if run.problems:
        console.print("[bold red]problems (wrong results):[/]")
        for line in run.problems:
            console.print(Text(f"  - {line}"))
    else:
        compared = (
            "naive pandas and vectorbt" if (sl.get("vectorbt") or {}).get("available") else "naive pandas"
        )
        console.print(
            "checks: flow runs Completed with the planned counts, cold all misses, warm all hits, figures equal "
            f"to the core's; {compared} total returns equal the core's to 1e-6"
        )
    console.print(f"total {p['total_seconds']:.1f} s")
