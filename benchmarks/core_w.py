"""The core alone on the reference workload W (docs/design.md section 4): no Prefect, just ``run_study``.

    python benchmarks/core_w.py                      # W: 4,000 symbols x 20 years, 2 workers
    python benchmarks/core_w.py --scaling            # also 1 worker vs 2 workers, side by side
    python benchmarks/core_w.py --symbols 500 --repeat 3

Loads each chunk from the Parquet store inside ``run_study`` (as the flow's tasks do), on a thread pool of
``--workers`` threads, after warming numba's compile cache on a tiny in-memory universe so compile time is not
counted. Prints the wall time, the thread seconds of each phase summed over chunks, bars x combinations per
second (bars = stored rows of the symbols, combinations = grid size), the peak RSS of this process, and the
goals "W in the core <= 10 s" and (with ``--scaling``) "2 workers vs 1 >= 1.7x". Machines are shared and noisy:
judge the ratios measured side by side in one run more than any single time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

from benchmarks.standalone import (
    W_SYMBOLS,
    W_YEARS,
    add_workload_args,
    describe_machine,
    ensure_store,
    goal,
    machine_line,
    max_rss_mb,
    write_results,
)
from benchmarks.suite import time_core, warm_numba

CORE_GOAL_SECONDS = 10.0
SCALING_GOAL = 1.7
MEMORY_GOAL_MB = 1000.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    add_workload_args(p, "threads of run_study (W: 2)")
    p.add_argument("--repeat", type=int, default=1, help="timed runs per setting; the best is reported")
    p.add_argument("--scaling", action="store_true", help="also time 1 worker, interleaved with --workers")
    p.add_argument("--data", default=None, help="data folder (default: benchmarks/.data)")
    p.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/*.json")
    args = p.parse_args(argv)
    if args.symbols < 1 or args.years <= 0:
        p.error("--symbols must be at least 1 and --years positive")
    if args.workers < 1 or args.repeat < 1 or (args.chunk_size is not None and args.chunk_size < 1):
        p.error("--workers, --repeat and --chunk-size must be at least 1")
    return args


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return min(runs, key=lambda r: r["wall_seconds"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    machine = describe_machine()
    console.print(f"[bold]core_w[/] - the core alone (run_study), {machine['date']}")
    console.print(machine_line(machine))

    store = ensure_store(args.symbols, args.years, args.seed, args.data, log=console.print)

    from backtest.config import StudyConfig
    from backtest.engine.planning import choose_chunk_size, resolve_universe
    from backtest.engine.study import StudyPlan, chunked

    config = StudyConfig()
    universe = resolve_universe(store.catalog())
    plan = StudyPlan.create(config, universe.first, universe.last)
    n_combos = len(plan.combos)
    # the same estimate of bars as the flow's plan_chunks, so both choose the same chunk size
    n_bars = max(1, int((universe.last - universe.first).days * 252 / 365.25))
    chunk_size = args.chunk_size or choose_chunk_size(len(universe.symbols), n_bars, n_combos, args.workers)
    n_chunks = len(chunked(list(universe.symbols), chunk_size))
    workload = {
        "symbols": len(universe.symbols),
        "years": args.years,
        "seed": args.seed,
        "first": universe.first.isoformat(),
        "last": universe.last.isoformat(),
        "bars": universe.rows,
        "combinations": n_combos,
        "bars_x_combinations": universe.rows * n_combos,
        "folds": len(plan.folds),
        "strategy": config.strategy,
        "chunk_size": chunk_size,
        "chunks": n_chunks,
        "is_W": args.symbols == W_SYMBOLS and args.years == W_YEARS,
    }
    console.print(
        f"workload: {workload['symbols']:,} symbols, {universe.rows:,} bars x {n_combos} combinations "
        f"= {workload['bars_x_combinations'] / 1e9:.2f} G, {len(plan.folds)} folds, "
        f"{n_chunks} chunks of {chunk_size}"
    )

    warm = warm_numba(config)
    store.load(universe.symbols[:16])  # warm pyarrow's readers too
    console.print(f"numba warm-up (not counted): {warm:.1f} s")

    settings = [args.workers]
    if args.scaling and args.workers != 1:
        settings = [1, args.workers]
    elif args.scaling:
        console.print(
            "--scaling compares 1 worker with --workers; with --workers 1 there is nothing to compare"
        )
    runs: dict[int, list[dict[str, Any]]] = {w: [] for w in settings}
    for i in range(args.repeat):
        for w in settings if i % 2 == 0 else list(reversed(settings)):  # alternate the order: drift cancels
            run = time_core(store, config, w, chunk_size=chunk_size)
            runs[w].append(run)
            console.print(
                f"  run {i + 1}/{args.repeat}, {w} worker{'s' if w > 1 else ''}: {run['wall_seconds']:.2f} s, "
                f"{run['bars_x_combinations_per_second'] / 1e6:,.0f} M bars x combinations/s, "
                f"peak RSS {run['peak_rss_mb']:,.0f} MB"
            )

    main_run = best(runs[args.workers])
    wall = main_run["wall_seconds"]
    table = Table(title=f"Core alone: {workload['symbols']:,} x {args.years:g} years, {args.workers} workers")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row(f"wall seconds (best of {args.repeat})", f"{wall:.2f}")
    if args.repeat > 1:
        table.add_row(
            "wall seconds (median)", f"{statistics.median(r['wall_seconds'] for r in runs[args.workers]):.2f}"
        )
    for phase, seconds in main_run["thread_seconds"].items():
        table.add_row(f"  thread seconds: {phase}", f"{seconds:.2f}")
    table.add_row("  thread seconds: total", f"{sum(main_run['thread_seconds'].values()):.2f}")
    table.add_row("bars x combinations / s", f"{main_run['bars_x_combinations_per_second'] / 1e6:,.0f} M")
    table.add_row("peak RSS, this process", f"{main_run['peak_rss_mb']:,.0f} MB")
    table.add_row("  RSS before the run", f"{main_run['start_rss_mb']:,.0f} MB")
    table.add_row("symbols with results", f"{main_run['symbols_with_results']:,}")
    console.print(table)

    goals: dict[str, Any] = {}
    if workload["is_W"]:
        goals["core_W_seconds"] = {
            "target": f"<= {CORE_GOAL_SECONDS:g} s",
            "value": wall,
            "met": wall <= CORE_GOAL_SECONDS,
        }
        console.print(
            f"goal: W in the core <= {CORE_GOAL_SECONDS:g} s: {wall:.2f} s -> [bold]{goal(wall <= CORE_GOAL_SECONDS)}[/]"
        )
    else:
        goals["core_W_seconds"] = {"target": f"<= {CORE_GOAL_SECONDS:g} s", "value": None, "met": None}
        console.print(
            f"goal: W in the core <= {CORE_GOAL_SECONDS:g} s: n/a (this run is {args.symbols:,} x {args.years:g} "
            f"years, not W; it took {wall:.2f} s)"
        )
    peak = main_run["peak_rss_mb"]
    goals["peak_rss_mb"] = {
        "target": f"<= {MEMORY_GOAL_MB:g} MB",
        "value": peak,
        "met": peak <= MEMORY_GOAL_MB,
    }
    console.print(
        f"goal: peak RSS <= 1 GB (this process; the core has no other): {peak:,.0f} MB -> {goal(peak <= MEMORY_GOAL_MB)}"
    )

    scaling = None
    if len(settings) == 2:
        one = best(runs[1])
        ratio = one["wall_seconds"] / wall
        scaling = {"one_worker_seconds": one["wall_seconds"], "n_workers_seconds": wall, "speedup": ratio}
        st = Table(title="Scaling (same chunks, measured side by side)")
        for column in ("workers", "wall s", "M bars x comb. / s", "thread s total", "peak RSS MB"):
            st.add_column(column, justify="right")
        for w in settings:
            r = best(runs[w])
            st.add_row(
                str(w),
                f"{r['wall_seconds']:.2f}",
                f"{r['bars_x_combinations_per_second'] / 1e6:,.0f}",
                f"{sum(r['thread_seconds'].values()):.2f}",
                f"{r['peak_rss_mb']:,.0f}",
            )
        console.print(st)
        met = ratio >= SCALING_GOAL if args.workers == 2 else None
        goals["scaling"] = {"target": f">= {SCALING_GOAL}x (2 vs 1)", "value": ratio, "met": met}
        verdict = goal(met) if met is not None else f"n/a (goal is for 2 workers, not {args.workers})"
        console.print(
            f"goal: {args.workers} workers vs 1 >= {SCALING_GOAL}x: {ratio:.2f}x -> [bold]{verdict}[/]"
        )

    payload = {
        "script": "core_w",
        "argv": sys.argv[1:] if argv is None else argv,
        "machine": machine,
        "workload": workload,
        "numba_warmup_seconds": warm,
        "runs": {str(w): rs for w, rs in runs.items()},
        "result": main_run,
        "scaling": scaling,
        "goals": goals,
        "lifetime_max_rss_mb": max_rss_mb(),
    }
    if not args.no_save:
        console.print(f"results: {write_results('core_w', payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
