"""Prefect's cost over the bare core, and the cache's payoff, measured side by side in one run.

    python benchmarks/flow_overhead.py                   # W: 4,000 symbols x 20 years, 2 workers
    python benchmarks/flow_overhead.py --symbols 500     # a quick run

In one process, on the same store, configuration, chunks and workers:
1. a tiny warm-up flow run (not counted): starts the ephemeral Prefect server when no PREFECT_API_URL is set,
   imports everything and loads numba's compiled kernels, so none of that is timed below;
2. Prefect's overhead on the same work, twice, interleaved: the bare core (``run_study`` over the store with
   its out-of-sample rows streamed into ``oos_returns.parquet``, then its other result tables written), then
   the flow with a cold cache doing the same (``report=False, persist=False``: no plots, nothing written into
   the database; its cache of price files and chunk results is written, as a first run writes it);
3. the flow cold as a user runs it (report drawn, results into the database), after removing
   ``<store>/cache/``;
4. the flow warm: the same flow again with unchanged inputs (every chunk should be a cache hit).

Prints the wall times, flow / core on the same work (best of each side; goal <= 1.2x, server already up),
warm / cold (goal <= 10 %), the cache hits and misses of each flow run, its per-phase seconds from
summary.json and the peak RSS of this process and of this process plus its children (the ephemeral server is
one). Checks that the flow runs Completed with the expected counts, and that the flow's portfolio figures
equal the core's.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from typing import Any

from benchmarks.standalone import (
    W_SYMBOLS,
    W_YEARS,
    add_workload_args,
    data_dir,
    describe_machine,
    ensure_store,
    goal,
    machine_line,
    max_rss_mb,
    timestamp,
    universe_dir,
    write_results,
)
from benchmarks.suite import (
    check_flow_run,
    measure_overhead,
    prepare_prefect_environment,
    run_flow,
    server_mode,
    warm_numba,
)

OVERHEAD_GOAL = 1.2
WARM_GOAL = 0.10
FLOW_W_GOAL_SECONDS = 20.0
MEMORY_GOAL_MB = 1000.0
WARMUP_UNIVERSE = (20, 8.0, 7)  # symbols, years, seed: the smallest store with a few folds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    add_workload_args(p, "threads of the core and of the flow's task runner")
    p.add_argument("--data", default=None, help="data folder (default: benchmarks/.data)")
    p.add_argument("--keep-out", action="store_true", help="keep the flow runs' result folders")
    p.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/*.json")
    args = p.parse_args(argv)
    if args.symbols < 1 or args.years <= 0:
        p.error("--symbols must be at least 1 and --years positive")
    if args.workers < 1 or (args.chunk_size is not None and args.chunk_size < 1):
        p.error("--workers and --chunk-size must be at least 1")
    return args


def check_runs(
    core: dict[str, Any], runs: list[dict[str, Any]], warm: dict[str, Any], expect: dict[str, int]
) -> list[str]:
    """What misbehaved: states, counts, cache hits, and agreement with the core's numbers (``runs``: the
    cold ones)."""
    problems = [line for run in runs for line in check_flow_run(run, 0, expect["chunks"], core)]
    problems += check_flow_run(warm, expect["chunks"], 0, core)
    for run in (*runs, warm):
        chunks = ((run.get("summary") or {}).get("counts") or {}).get("chunks")
        if run.get("summary") and chunks != expect["chunks"]:
            problems.append(f"{run['label']}: counts.chunks = {chunks}, expected {expect['chunks']}")
    return problems


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = data_dir(args.data)
    prefect_env = prepare_prefect_environment(data)

    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    machine = describe_machine()
    console.print(
        f"[bold]flow_overhead[/] - the bare core vs the Prefect flow, cold and warm, {machine['date']}"
    )
    console.print(machine_line(machine))

    store = ensure_store(args.symbols, args.years, args.seed, args.data, log=console.print)
    tiny = ensure_store(*WARMUP_UNIVERSE, args.data, log=console.print)

    from backtest.engine.planning import choose_chunk_size, resolve_universe
    from backtest.engine.study import StudyPlan, chunked
    from flows.params import StudyParams

    mode = server_mode()
    console.print(f"orchestration: {mode['describe']}; PREFECT_HOME={prefect_env['PREFECT_HOME']}")

    universe = resolve_universe(store.catalog())
    runs_dir = universe_dir(args.symbols, args.years, args.seed, args.data) / "runs"
    stamp = timestamp()
    base = StudyParams(store=str(store.root), workers=args.workers, runner="threads")
    config = base.to_config()
    plan = StudyPlan.create(config, universe.first, universe.last)
    n_combos = len(plan.combos)
    n_bars = max(1, int((universe.last - universe.first).days * 252 / 365.25))  # as plan_chunks estimates
    chunk_size = args.chunk_size or choose_chunk_size(len(universe.symbols), n_bars, n_combos, args.workers)
    n_chunks = len(chunked(list(universe.symbols), chunk_size))
    params = base.model_copy(update={"chunk_size": chunk_size})
    workload = {
        "symbols": len(universe.symbols),
        "years": args.years,
        "seed": args.seed,
        "bars": universe.rows,
        "combinations": n_combos,
        "bars_x_combinations": universe.rows * n_combos,
        "folds": len(plan.folds),
        "strategy": config.strategy,
        "chunk_size": chunk_size,
        "chunks": n_chunks,
        "workers": args.workers,
        "runner": "threads",
        "is_W": args.symbols == W_SYMBOLS and args.years == W_YEARS,
    }
    console.print(
        f"workload: {workload['symbols']:,} symbols, {universe.rows:,} bars x {n_combos} combinations, "
        f"{len(plan.folds)} folds, {n_chunks} chunks of {chunk_size} on {args.workers} threads"
    )

    # 1. warm-up, not counted: server start-up, imports, numba's kernels, the flow's own code paths
    t0 = time.perf_counter()
    shutil.rmtree(tiny.root / "cache", ignore_errors=True)
    warm_up = run_flow(
        StudyParams(
            store=str(tiny.root), out=str(runs_dir / f"{stamp}-warmup"), workers=args.workers, chunk_size=10
        ),
        "warm-up flow",
    )
    warm_numba(config)
    store.load(universe.symbols[:16])
    warmup_seconds = time.perf_counter() - t0
    console.print(f"warm-up (not counted): {warmup_seconds:.1f} s, tiny flow run {warm_up['state']}")
    if warm_up["state"] != "Completed":
        console.print(f"[red]the warm-up flow run did not complete: {warm_up.get('error')}[/]")

    # 2. Prefect's overhead: the bare core and the flow on the same work, interleaved
    overhead_runs = measure_overhead(
        store, params, args.workers, runs_dir / f"{stamp}-overhead", console.print, chunk_size=chunk_size
    )
    core, same = overhead_runs["core"], overhead_runs["flow"]
    console.print(
        f"  core:       {core['wall_seconds']:6.2f} s (+ {core['save_seconds']:.2f} s writing its other tables; "
        f"best of {core['runs_seconds']})"
    )
    console.print(f"  flow cold, same work: {same['wall_seconds']:6.2f} s (best of {same['runs_seconds']})")

    # 3. the flow as a user runs it, cold cache
    shutil.rmtree(store.root / "cache", ignore_errors=True)
    cold = run_flow(params.model_copy(update={"out": str(runs_dir / f"{stamp}-cold")}), "flow cold")
    console.print(f"  flow cold:  {cold['wall_seconds']:6.2f} s ({cold['state']})")

    # 4. the flow again, unchanged inputs
    warm = run_flow(params.model_copy(update={"out": str(runs_dir / f"{stamp}-warm")}), "flow warm")
    console.print(f"  flow warm:  {warm['wall_seconds']:6.2f} s ({warm['state']})")

    if not args.keep_out:
        for suffix in ("warmup", "overhead", "cold", "warm"):
            shutil.rmtree(runs_dir / f"{stamp}-{suffix}", ignore_errors=True)

    expect = {
        "symbols": len(universe.symbols),
        "chunks": n_chunks,
        "combinations": n_combos,
        "folds": len(plan.folds),
    }
    problems = check_runs(core, [same, cold], warm, expect)

    c, fs = core["wall_seconds"] + core["save_seconds"], same["wall_seconds"]
    fc, fw = cold["wall_seconds"], warm["wall_seconds"]
    overhead, full_over_core, warm_ratio = fs / c, fc / c, fw / fc

    table = Table(
        title=f"{workload['symbols']:,} x {args.years:g} years, {n_chunks} chunks, {args.workers} threads"
    )
    for column in (
        "run",
        "wall s",
        "in-flow s",
        "cache hits/misses",
        "RSS before MB",
        "peak RSS MB",
        "+children MB",
    ):
        table.add_column(column, justify="left" if column == "run" else "right")
    table.add_row(
        "core (run_study, rows streamed)",
        f"{core['wall_seconds']:.2f}",
        "",
        "",
        f"{core['start_rss_mb']:,.0f}",
        f"{core['peak_rss_mb']:,.0f}",
        "",
    )
    table.add_row("  + writing its other tables", f"{c:.2f}", "", "", "", "", "")
    for run in (same, cold, warm):
        s = run.get("summary") or {}
        cache = s.get("cache") or {}
        table.add_row(
            run["label"],
            f"{run['wall_seconds']:.2f}",
            f"{s['wall_seconds']:.2f}" if s.get("wall_seconds") is not None else "-",
            f"{cache.get('hits', '-')}/{cache.get('misses', '-')}",
            f"{run['start_rss_mb']:,.0f}",
            f"{run['peak_rss_mb']:,.0f}",
            f"{run['peak_rss_with_children_mb']:,.0f}",
        )
    console.print(table)

    phases = Table(title="Flow phases (summary.json phase_seconds)")
    phase_names = sorted(
        {k for r in (same, cold, warm) for k in ((r.get("summary") or {}).get("phase_seconds") or {})}
    )
    phases.add_column("run")
    for name in phase_names:
        phases.add_column(name, justify="right")
    for run in (same, cold, warm):
        ps = (run.get("summary") or {}).get("phase_seconds") or {}
        phases.add_row(run["label"], *(f"{ps[n]:.2f}" if n in ps else "-" for n in phase_names))
    console.print(phases)
    console.print(
        "core thread seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in core["thread_seconds"].items())
    )

    goals: dict[str, Any] = {
        "flow_same_work_over_core": {
            "target": f"<= {OVERHEAD_GOAL}x",
            "value": overhead,
            "met": overhead <= OVERHEAD_GOAL,
        },
        "warm_over_cold": {
            "target": f"<= {WARM_GOAL:.0%}",
            "value": warm_ratio,
            "met": warm_ratio <= WARM_GOAL,
        },
    }
    console.print(
        f"goal: Prefect overhead, flow cold / core on the same work (the study and its tables), <= "
        f"{OVERHEAD_GOAL}x (server already up): {fs:.2f} / {c:.2f} s = {overhead:.2f}x "
        f"-> [bold]{goal(overhead <= OVERHEAD_GOAL)}[/]"
    )
    console.print(
        f"      the flow as a user runs it (report drawn, results into the database): {fc:.2f} / {c:.2f} s = "
        f"{full_over_core:.2f}x"
    )
    console.print(
        f"goal: flow warm / flow cold <= {WARM_GOAL:.0%}: {fw:.2f} / {fc:.2f} s = {warm_ratio:.1%} "
        f"-> [bold]{goal(warm_ratio <= WARM_GOAL)}[/]"
    )
    peak_all = cold["peak_rss_with_children_mb"]
    if workload["is_W"]:
        goals["flow_cold_W_seconds"] = {
            "target": f"<= {FLOW_W_GOAL_SECONDS:g} s",
            "value": fc,
            "met": fc <= FLOW_W_GOAL_SECONDS,
        }
        console.print(
            f"goal: W through Prefect, cold cache <= {FLOW_W_GOAL_SECONDS:g} s: {fc:.2f} s "
            f"-> [bold]{goal(fc <= FLOW_W_GOAL_SECONDS)}[/]"
        )
        goals["flow_cold_peak_rss_mb"] = {
            "target": f"<= {MEMORY_GOAL_MB:g} MB",
            "value": peak_all,
            "met": peak_all <= MEMORY_GOAL_MB,
        }
        scope = (
            "this process + the ephemeral server"
            if mode["mode"] == "ephemeral"
            else "this process (server not counted)"
        )
        console.print(
            f"goal: peak RSS <= 1 GB, flow cold, {scope}: {peak_all:,.0f} MB -> [bold]{goal(peak_all <= MEMORY_GOAL_MB)}[/]"
        )
    else:
        console.print(
            f"(not W: the 20 s and 1 GB goals of W are not judged on {args.symbols:,} x {args.years:g} years)"
        )
    if problems:
        console.print("[bold red]problems:[/]")
        for line in problems:
            console.print(f"  [red]- {line}[/]")
    else:
        console.print(
            "checks: every flow run Completed, counts as planned, cold all misses, warm all hits, "
            "portfolio figures equal to the core's"
        )

    payload = {
        "script": "flow_overhead",
        "argv": sys.argv[1:] if argv is None else argv,
        "machine": machine,
        "orchestration": {**mode, "prefect_home": prefect_env["PREFECT_HOME"]},
        "workload": workload,
        "warmup_seconds": warmup_seconds,
        "warmup_flow": {k: warm_up.get(k) for k in ("state", "wall_seconds", "error")},
        "core": core,
        "flow_same_work": same,
        "flow_cold": cold,
        "flow_warm": warm,
        "ratios": {
            "flow_same_work_over_core": overhead,
            "flow_cold_over_core": full_over_core,
            "warm_over_cold": warm_ratio,
        },
        "goals": goals,
        "problems": problems,
        "lifetime_max_rss_mb": max_rss_mb(),
    }
    if not args.no_save:
        console.print(f"results: {write_results('flow_overhead', payload)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
