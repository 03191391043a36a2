"""The benchmark suite behind ``backtest bench`` (issue 7; docs/design.md section 4): the reference workload W
through the core and the Prefect flow, side by side with vectorbt and with the original design's per-symbol
pandas approach, and how the cost grows with symbols, workers and grid size.

Machines are shared and noisy, so everything compared is measured in one process, in one run, and reported as
ratios. The order is chosen so that one measurement does not inflate the next one's memory: the core alone
first (nothing but numpy/numba/pyarrow imported), then the Prefect flow, then vectorbt (whose import alone
brings plotly, scikit-learn and friends). A run:

1. **data**: the synthetic universe (N symbols x Y years) generated and ingested, or reused when already built
   (then the seconds it took to build are reported from its marker);
2. **core**: ``run_study`` on N symbols with 2 and 1 workers, on N/8, N/4, N/2 symbols, and on N/4 symbols
   with grids of 16, 64 and 256 combinations;
3. **flow**: after a tiny warm-up run (server start, imports; not counted), Prefect's overhead on the same
   work (the bare core and the flow computing the study and writing its tables, interleaved, twice each),
   then ``three_phase_study`` as a user runs it (report and database included) on the whole store with a
   cold cache, again warm, and on the comparison slice;
4. **slice** (200 symbols x Y years x 16 combinations, 10 bps fees): the core's grid kernel, the core's study,
   the naive pandas function on a thread pool, and vectorbt; their total returns must agree (``bench_compare``).

The suite is plain Python that starts flow runs, not a Prefect flow itself: the study runs it times would
otherwise be subflows, with a subflow's own start-up and teardown in what is measured, and its other parts
(the core, pandas, vectorbt) have nothing to orchestrate.

A wrong result (disagreeing total returns, a failed flow run, a flow whose figures differ from the core's)
makes the run exit non-zero; a missed performance goal is printed as MISSED with the phase seconds that
explain it, and does not.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.commands import measure_demo, measure_run_commands
from benchmarks.compare import (
    GRIDS,
    CompactCloses,
    agreement,
    core_total_returns,
    exact_ties,
    naive_total_returns,
    sma_combos,
    vectorbt_total_returns,
    vectorbt_version,
    warm_up_vectorbt,
)
from benchmarks.measure import (
    W_SEED,
    W_SYMBOLS,
    W_YEARS,
    RssSampler,
    describe_machine,
    ensure_store,
    max_rss_mb,
    release_memory,
    universe_dir,
    write_results,
)
from benchmarks.ranking import check_rank_run, measure_ranking, measure_ranking_vectorbt

CORE_W_GOAL_SECONDS = 10.0
FLOW_W_GOAL_SECONDS = 20.0
WARM_GOAL = 0.10
MEMORY_GOAL_MB = 1000.0
VECTORBT_CORE_GOAL = 100.0
VECTORBT_FLOW_GOAL = 30.0
OVERHEAD_GOAL = 1.2
WORKERS_GOAL = 1.7
SYMBOLS_GOAL = 4.4
#: the statistics of luck (trials' returns in the grid kernel, CSCV, SPA) at most this share of W in the core
LUCK_GOAL = 0.05
#: the cross-sectional study of W (momentum_rank, 40 combinations) through the flow, cold
RANK_FLOW_W_GOAL_SECONDS = 10.0
#: the study as a user runs it (`backtest run`, the project's server up): its command over its flow, cold
COMMAND_OVER_FLOW_GOAL = 1.15
#: a warm re-run of W as a command, in seconds and as a share of the cold command
COMMAND_WARM_GOAL_SECONDS = 3.0
COMMAND_WARM_SHARE_GOAL = 0.15
#: the first command of a project (its server's new home migrated) over a later cold one
COMMAND_FIRST_GOAL = 1.3
#: the demo's flow on a fresh clone (numba's cache empty) over its flow on a second run
DEMO_FIRST_GOAL = 2.0
#: fees of the comparison slice, so the fee conventions are part of what must agree
COMPARISON_FEES_BPS = 10.0
COMPARISON_GRID = 16
WARMUP_SYMBOLS = 4  # the warm-up flow run, on the same store
#: a timed setting is repeated (best kept) while its runs add up to less than this, at most 3 times
REPEAT_BUDGET_SECONDS = 2.0
#: interleaved (bare core, flow) pairs behind the Prefect-overhead ratio, the best of each kept
OVERHEAD_PAIRS = 3

#: every ratio a run reports (``payload["ratios"]``); the test checks that each is there
RATIO_KEYS: tuple[str, ...] = (
    "flow_warm_over_cold",
    "flow_same_work_over_core",
    "flow_cold_over_core",
    "cache_hit_rate_warm",
    "workers_2_over_1",
    "parallel_efficiency",
    "symbols_4x_time_ratio",
    "symbols_8x_time_ratio",
    "grid_64_over_16",
    "grid_256_over_16",
    "core_study_vs_vectorbt",
    "core_kernel_vs_vectorbt",
    "flow_vs_vectorbt",
    "core_at_scale_vs_vectorbt",
    "flow_at_scale_vs_vectorbt",
    "vectorbt_memory_over_core",
    "core_study_vs_naive",
    "core_kernel_vs_naive",
    "flow_vs_naive",
    "luck_kernel_overhead",
    "luck_share_of_core",
    "rank_flow_warm_over_cold",
    "rank_core_vs_vectorbt",
    "rank_flow_vs_vectorbt",
    "rank_flow_at_scale_vs_vectorbt",
    "rank_core_vs_naive",
    "command_cold_over_flow",
    "command_warm_over_cold",
    "command_first_over_cold",
    "demo_first_flow_over_second",
)


@dataclass(frozen=True)
class BenchSizes:
    """What a run measures: the universe (N x Y), workers, the comparison slice and the scaling grids."""

    mode: str
    symbols: int
    years: float
    seed: int = W_SEED
    workers: int = 2
    slice_symbols: int = 200
    grids: tuple[int, ...] = (16, 64, 256)
    demo_symbols: int = 500  # `backtest demo`'s default market
    demo_years: float = 20.0

    @classmethod
    def full(cls) -> BenchSizes:
        return cls("full", W_SYMBOLS, W_YEARS)

    @classmethod
    def quick(cls) -> BenchSizes:
        """A quarter of W's symbols and half its years: every ratio, in a fraction of the full run's time."""
        return cls("quick", W_SYMBOLS // 4, W_YEARS / 2, demo_symbols=125, demo_years=10.0)

    @property
    def scaling_symbols(self) -> tuple[int, ...]:
        n = self.symbols
        return tuple(sorted({max(1, n // 8), max(1, n // 4), max(1, n // 2), n}))

    @property
    def grid_symbols(self) -> int:
        return max(1, self.symbols // 4)

    @property
    def comparison_symbols(self) -> int:
        return min(self.slice_symbols, self.symbols)

    @property
    def is_w(self) -> bool:
        """The reference workload itself (docs/design.md section 4: 2 workers): the absolute goals apply."""
        return self.symbols == W_SYMBOLS and self.years == W_YEARS and self.workers == 2


@dataclass(frozen=True)
class Goal:
    """One target of docs/design.md section 4: its value in this run, and whether it was met (None: not
    judged)."""

    name: str
    target: str
    value: float | None
    met: bool | None
    note: str = ""
    why: str = ""


@dataclass
class BenchRun:
    """Everything one run measured; ``payload`` is what goes into the JSON result."""

    sizes: BenchSizes
    payload: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    path: Path | None = None

    @property
    def exit_code(self) -> int:
        return 1 if self.problems else 0


Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------------- the core


def warm_numba(config: Any) -> float:
    """Compile (or load from numba's cache) every kernel the study uses, on a tiny in-memory universe."""
    from backtest.data.synthetic import generate_panel
    from backtest.engine.study import date_range, run_study

    t0 = time.perf_counter()
    panel = generate_panel(8, 8.0, seed=7)
    first, last = date_range(panel)
    run_study(config, panel.symbols, panel.select, first, last, chunk_size=4, workers=2)
    run_study(config, panel.symbols, panel.select, first, last, chunk_size=8, workers=1)
    return time.perf_counter() - t0


def flow_chunk_size(universe: Any, n_combos: int, workers: int) -> int:
    """The chunk size the flow would choose (``plan_chunks``' estimate of bars), so both run the same chunks."""
    from backtest.engine.planning import choose_chunk_size, estimate_bars

    return choose_chunk_size(
        len(universe.symbols), estimate_bars(universe.first, universe.last), n_combos, workers
    )


def time_core(
    store: Any,
    config: Any,
    workers: int,
    symbols: Sequence[str] | None = None,
    chunk_size: int | None = None,
    save_to: Path | None = None,
    release: bool = True,
) -> dict[str, Any]:
    """One timed ``run_study`` over ``symbols`` (default: the whole store), loading chunks from the store
    inside the pool as the flow's tasks do, its out-of-sample rows kept in memory. With ``save_to`` it does
    what a flow run delivers: the rows streamed into ``oos_returns.parquet`` there while the study runs (timed
    with it), then the other tables written (``save_seconds``). ``release`` first hands the memory of earlier
    runs back (see ``best_of``), so this run's peak RSS is its own."""
    from backtest.engine.planning import resolve_universe
    from backtest.engine.study import StudyPlan, chunked, run_study
    from backtest.results.outputs import oos_returns_file

    universe = resolve_universe(store.catalog(), symbols)
    plan = StudyPlan.create(config, universe.first, universe.last)
    size = chunk_size or flow_chunk_size(universe, len(plan.combos), workers)
    last = plan.last_date

    def load(chunk: Sequence[str]) -> Any:
        return store.load(chunk, end=last)

    if release:
        release_memory()
    save_seconds = None
    with RssSampler(children=False) as rss:
        t0 = time.perf_counter()
        if save_to is None:
            result = run_study(config, universe.symbols, load, universe.first, universe.last, size, workers)
            wall = time.perf_counter() - t0
        else:  # as the flow: the out-of-sample rows streamed to their file, then the other tables written
            with oos_returns_file(save_to) as sink:
                result = run_study(
                    config, universe.symbols, load, universe.first, universe.last, size, workers, sink
                )
            wall = time.perf_counter() - t0
            result.save(save_to)
            save_seconds = time.perf_counter() - t0 - wall
    n_combos = len(plan.combos)
    run = {
        "symbols": len(universe.symbols),
        "bars": universe.rows,
        "combinations": n_combos,
        "folds": len(plan.folds),
        "workers": workers,
        "chunk_size": size,
        "chunks": len(chunked(list(universe.symbols), size)),
        "wall_seconds": wall,
        "save_seconds": save_seconds,
        "thread_seconds": {k: round(v, 3) for k, v in sorted(result.timings.items())},
        "bars_x_combinations_per_second": universe.rows * n_combos / wall,
        **rss.to_dict(),
        "symbols_with_results": len(result.symbol_metrics),
        "portfolio_sharpe": result.portfolio_metrics.get("sharpe"),
        "portfolio_total_return": result.portfolio_metrics.get("total_return"),
    }
    del result  # freed here; the next measurement's release_memory hands the pages back
    return run


def best_of(
    measure: Callable[[bool], dict[str, Any]], budget: float = REPEAT_BUDGET_SECONDS
) -> dict[str, Any]:
    """The fastest of up to 3 runs, repeating only while they add up to less than ``budget`` seconds: small
    settings get a fair minimum, big ones are not run three times. ``measure(release)`` releases memory
    first only for the first run: a repeat follows a run of the same small size, and a garbage collection
    is slow once Prefect is imported."""
    runs = [measure(True)]
    while len(runs) < 3 and sum(r["wall_seconds"] for r in runs) < budget:
        runs.append(measure(False))
    best = min(runs, key=lambda r: r["wall_seconds"])
    return {**best, "runs_seconds": [round(r["wall_seconds"], 4) for r in runs]}


def measure_core(store: Any, sizes: BenchSizes, log: Log) -> dict[str, Any]:
    """The core alone: W with 2 and 1 workers, the symbol scaling, and the grid scaling."""
    from backtest.config import ParamGrid, StudyConfig

    config = StudyConfig()
    symbols = list(store.symbols())
    symbols.sort()  # resolve_universe's order: subsets below are its first n symbols
    n, w = sizes.symbols, sizes.workers
    out: dict[str, Any] = {}
    out["numba_warmup_seconds"] = warm_numba(config)
    store.load(symbols[:16])  # pyarrow's readers
    log(f"core: numba warm-up (not counted) {out['numba_warmup_seconds']:.1f} s")

    main = best_of(lambda r: time_core(store, config, w, release=r))
    log(f"core: {n:,} symbols, {w} workers: {_core_line(main)}")
    one = best_of(lambda r: time_core(store, config, 1, chunk_size=main["chunk_size"], release=r))
    log(f"core: {n:,} symbols, 1 worker:  {_core_line(one)}")
    out["main"], out["one_worker"] = main, one
    out["luck_kernel"] = measure_luck_kernel(store, config, symbols[: main["chunk_size"]])
    log(
        f"core: the trials' returns cost the grid kernel {out['luck_kernel']['overhead']:.1%} "
        f"({out['luck_kernel']['with_seconds']:.3f} s vs {out['luck_kernel']['without_seconds']:.3f} s on one "
        f"chunk); the merge's statistics of luck {main['thread_seconds'].get('overfitting', 0.0):.2f} s"
    )

    by_size = []
    for count in sizes.scaling_symbols:
        run = (
            main
            if count == n
            else best_of(lambda r, c=count: time_core(store, config, w, symbols[:c], release=r))
        )
        by_size.append(run)
        if count != n:
            log(f"core: {count:,} symbols, {w} workers: {_core_line(run)}")
    out["symbols_scaling"] = by_size

    by_grid = []
    for size in sizes.grids:
        grid_config = StudyConfig(grid=ParamGrid.from_mapping(GRIDS[size]))
        run = best_of(
            lambda r, g=grid_config: time_core(store, g, w, symbols[: sizes.grid_symbols], release=r)  # type: ignore[misc]
        )
        by_grid.append(run)
        log(f"core: {sizes.grid_symbols:,} symbols x {size} combinations: {_core_line(run)}")
    out["grid_scaling"] = by_grid
    return out


def measure_luck_kernel(store: Any, config: Any, symbols: Sequence[str]) -> dict[str, float]:
    """The grid kernel on one chunk with and without the trials' returns it adds up for the overfitting
    statistics, interleaved, best of 3 each: the share of phase 1 those statistics cost."""
    import datetime as dt

    from backtest.engine.folds import FoldLayout
    from backtest.engine.simulate_nb import grid_scores_nb, trial_days_nb
    from backtest.engine.study import StudyPlan

    panel = store.load(symbols)
    plan = StudyPlan.create(config, panel.dates[0].astype(dt.date), panel.dates[-1].astype(dt.date))
    layout = FoldLayout.build(plan.folds, panel.dates)
    kernel = plan.strategy.kernel

    def once(with_trials: bool) -> float:
        n_combo = len(plan.combos)
        trials = np.zeros((n_combo, panel.n_bars) if with_trials else (0, 0))
        full = np.zeros((panel.n_symbols, n_combo, 3) if with_trials else (0, 0, 0))
        t0 = time.perf_counter()
        grid_scores_nb(
            kernel, plan.combos, panel.open, panel.high, panel.low, panel.close,
            layout.seg_bounds, layout.win_segs, config.cost, False, 0, config.min_bars, trials, full,
        )  # fmt: skip
        if with_trials:
            trial_days_nb(panel.close, layout.seg_bounds)
        return time.perf_counter() - t0

    with_s, without_s = [], []
    for _ in range(3):
        without_s.append(once(False))
        with_s.append(once(True))
    best_with, best_without = min(with_s), min(without_s)
    return {
        "symbols": len(symbols),
        "with_seconds": best_with,
        "without_seconds": best_without,
        "overhead": best_with / best_without - 1.0,
    }


def _luck_share(core: dict[str, Any]) -> float | None:
    """What the statistics of luck cost W in the core, as a share of its wall time: the kernel's extra work
    (its measured overhead on phase 1's thread seconds, spread over the workers) plus the merge's statistics."""
    main, kernel = core["main"], core.get("luck_kernel")
    if not kernel or not main.get("wall_seconds"):
        return None
    threads = main["thread_seconds"]
    extra = kernel["overhead"] / (1.0 + kernel["overhead"]) * threads.get("optimise", 0.0) / main["workers"]
    return (extra + threads.get("overfitting", 0.0)) / main["wall_seconds"]


def _core_line(run: dict[str, Any]) -> str:
    return (
        f"{run['wall_seconds']:.2f} s, {run['bars_x_combinations_per_second'] / 1e6:,.0f} M bars x comb./s, "
        f"peak RSS {run['peak_rss_mb']:,.0f} MB"
    )


# ---------------------------------------------------------------------------------------------- the slice


def _measured(fn: Callable[[], Any], repeat_budget: float = 0.0) -> tuple[Any, dict[str, Any]]:
    """Run ``fn`` timed, with this process's peak RSS; repeated (best kept) while under ``repeat_budget``."""
    best: dict[str, Any] | None = None
    value: Any = None
    spent = 0.0
    release_memory()  # once: a collection is slow with Prefect and vectorbt loaded
    for _ in range(3):
        with RssSampler(children=False) as rss:
            t0 = time.perf_counter()
            value = fn()
            seconds = time.perf_counter() - t0
        spent += seconds
        run = {"wall_seconds": seconds, **rss.to_dict()}
        run["rss_increase_mb"] = round(run["peak_rss_mb"] - run["start_rss_mb"], 1)
        if best is None or seconds < best["wall_seconds"]:
            best = run
        if spent >= repeat_budget:
            break
    assert best is not None
    return value, best


@dataclass(frozen=True, eq=False)
class Slice:
    """The comparison slice: its symbols, prices, packed closes, grid, cost and exact ties."""

    symbols: tuple[str, ...]
    panel: Any
    data: CompactCloses
    combos: np.ndarray
    cost: float
    ties: np.ndarray

    @property
    def work(self) -> int:
        """Bars x combinations: every program below does this much."""
        return self.data.bars * len(self.combos)


def make_slice(store: Any, sizes: BenchSizes) -> Slice:
    symbols = tuple(sorted(store.symbols())[: sizes.comparison_symbols])
    panel = store.load(symbols)
    data = CompactCloses.from_panel(panel)
    combos = sma_combos(COMPARISON_GRID)
    return Slice(symbols, panel, data, combos, COMPARISON_FEES_BPS * 1e-4, exact_ties(data, combos))


def time_slice_core(
    store: Any, piece: Slice, sizes: BenchSizes
) -> tuple[np.ndarray, dict[str, Any], dict[str, Any]]:
    """The core on the slice: its grid kernel (total returns, the reference) and its whole study."""
    from backtest.config import ParamGrid, StudyConfig

    core_tr, kernel = _measured(lambda: core_total_returns(piece.panel, piece.combos, piece.cost), 1.0)
    kernel["bars_x_combinations_per_second"] = piece.work / kernel["wall_seconds"]
    config = StudyConfig(grid=ParamGrid.from_mapping(GRIDS[COMPARISON_GRID]), fees_bps=COMPARISON_FEES_BPS)
    study = best_of(lambda r: time_core(store, config, sizes.workers, piece.symbols, release=r))
    return core_tr, kernel, study


def measure_slice_core(store: Any, piece: Slice, sizes: BenchSizes, log: Log) -> dict[str, Any]:
    """The core on the slice, then the naive pandas approach right after it."""
    core_tr, kernel, study = time_slice_core(store, piece, sizes)
    log(
        f"slice: core grid kernel {kernel['wall_seconds']:.3f} s, core study (3 phases) "
        f"{study['wall_seconds']:.3f} s"
    )
    naive_tr, naive = _measured(
        lambda: naive_total_returns(piece.panel, piece.combos, piece.cost, sizes.workers)
    )
    naive["bars_x_combinations_per_second"] = piece.work / naive["wall_seconds"]
    naive["check"] = agreement("naive", piece.symbols, core_tr, naive_tr, piece.ties).to_dict()
    log(
        f"slice: naive pandas on {sizes.workers} threads {naive['wall_seconds']:.2f} s; total returns "
        f"{'agree' if naive['check']['ok'] else 'DISAGREE'} (max diff {naive['check']['max_abs_diff']:.1e})"
    )
    return {"kernel": kernel, "study": study, "naive": naive, "_core_tr": core_tr}


def measure_vectorbt(
    store: Any, piece: Slice, sizes: BenchSizes, core_tr: np.ndarray, log: Log
) -> dict[str, Any]:
    """vectorbt on the slice, with the core timed again just before it (side by side: the load drifts)."""
    version = vectorbt_version()
    if version is None:
        log("slice: vectorbt is not installed (pip install -e '.[bench]'): its comparison is SKIPPED")
        return {"available": False, "reason": "vectorbt is not installed (the bench extra)"}
    try:
        warm = warm_up_vectorbt()
        log(f"slice: vectorbt {version} warm-up (imports and numba compile, not counted) {warm:.1f} s")
        _, kernel, study = time_slice_core(store, piece, sizes)
        vb_tr, run = _measured(lambda: vectorbt_total_returns(piece.data, piece.combos, piece.cost))
    except Exception as exc:  # an incompatible install must not hide the rest of the run
        reason = f"vectorbt {version} failed: {type(exc).__name__}: {exc}"
        log(f"slice: {reason}; its comparison is SKIPPED")
        return {"available": False, "version": version, "reason": reason}
    run.update(
        available=True,
        version=version,
        warmup_seconds=warm,
        bars_x_combinations_per_second=piece.work / run["wall_seconds"],
        check=agreement("vectorbt", piece.symbols, core_tr, vb_tr, piece.ties).to_dict(),
        core_beside={"kernel": kernel, "study": study},
    )
    log(
        f"slice: core again beside vectorbt: kernel {kernel['wall_seconds']:.3f} s, study "
        f"{study['wall_seconds']:.3f} s"
    )
    log(
        f"slice: vectorbt {run['wall_seconds']:.2f} s, peak RSS +{run['rss_increase_mb']:,.0f} MB; total "
        f"returns {'agree' if run['check']['ok'] else 'DISAGREE'} (max diff {run['check']['max_abs_diff']:.1e})"
    )
    return run


# ---------------------------------------------------------------------------------------------- the flow


def prepare_prefect_environment(data: Path) -> dict[str, str]:
    """Settings Prefect reads at import: must run before the first ``import prefect``."""
    from flows.settings import TELEMETRY_OFF, prepare_environment

    os.environ.setdefault("PREFECT_HOME", str(Path(data).resolve() / "prefect-home"))
    os.environ.update(TELEMETRY_OFF)
    # as `backtest run` runs: run logs still reach the API, the terminal shows the benchmark's own lines only,
    # and the ephemeral server is set up (and given time to start) as the command sets it up
    prepare_environment()
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    return {k: os.environ[k] for k in ("PREFECT_HOME", "PREFECT_SERVER_ANALYTICS_ENABLED", "DO_NOT_TRACK")}


def server_mode() -> dict[str, Any]:
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if url:
        return {
            "mode": "server",
            "api_url": str(url),
            "describe": f"Prefect server at {url} (PREFECT_API_URL)",
        }
    return {
        "mode": "ephemeral",
        "api_url": None,
        "describe": "Prefect's ephemeral server (no PREFECT_API_URL)",
    }


def run_flow(params: Any, label: str) -> dict[str, Any]:
    """One flow run in this process, timed from the call to its return; its summary.json read back."""
    import json

    from flows.settings import local_run_settings
    from flows.study import three_phase_study

    release_memory()
    with RssSampler(children=True) as rss, local_run_settings():  # as `backtest run` runs it
        t0 = time.perf_counter()
        state = three_phase_study(params, return_state=True)
        wall = time.perf_counter() - t0
    run: dict[str, Any] = {"label": label, "wall_seconds": wall, "state": state.name, **rss.to_dict()}
    run["flow_run_id"] = str(state.state_details.flow_run_id) if state.state_details else None
    path = Path(params.out) / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else None
    if summary is None or summary.get("flow_run_id") != run["flow_run_id"]:
        exc = state.result(raise_on_failure=False)
        run["error"] = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else state.message
        run["summary"] = None
        return run
    run["summary"] = {
        k: summary.get(k)
        for k in ("state", "counts", "cache", "phase_seconds", "wall_seconds", "chunk_seconds")
    }
    run["figures"] = summary.get("figures")
    counts = summary.get("counts") or {}
    if counts.get("bars_x_combinations"):
        run["bars_x_combinations_per_second"] = counts["bars_x_combinations"] / wall
    return run


def _close(a: Any, b: Any, rel: float = 1e-9) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=1e-12)


def check_flow_run(run: dict[str, Any], hits: int, misses: int, core: dict[str, Any]) -> list[str]:
    """What misbehaved in one flow run: state, counts, cache hits, and agreement with the core's figures."""
    name = run["label"]
    if run["state"] != "Completed":
        return [f"{name}: flow state {run['state']} ({run.get('error') or 'see summary.json'})"]
    s = run.get("summary")
    if not s:
        return [f"{name}: no summary.json for this flow run ({run.get('error')})"]
    problems = []
    counts, cache = s["counts"], s["cache"]
    for key in ("symbols", "combinations", "folds"):
        if counts.get(key) != core[key]:
            problems.append(f"{name}: counts.{key} = {counts.get(key)}, the core's run has {core[key]}")
    if cache.get("hits") != hits or cache.get("misses") != misses or cache.get("failed"):
        problems.append(
            f"{name}: cache {cache.get('hits')} hits / {cache.get('misses')} misses / {cache.get('failed')} "
            f"failed, expected {hits} / {misses} / 0"
        )
    figures = run.get("figures") or {}
    if figures.get("symbols_with_results") != core["symbols_with_results"]:
        problems.append(
            f"{name}: {figures.get('symbols_with_results')} symbols with results, the core has "
            f"{core['symbols_with_results']}"
        )
    for key, core_value in (
        ("sharpe", core["portfolio_sharpe"]),
        ("total_return", core["portfolio_total_return"]),
    ):
        flow_value = (figures.get("portfolio") or {}).get(key)
        if not _close(flow_value, core_value):
            problems.append(f"{name}: portfolio {key} {flow_value!r} differs from the core's {core_value!r}")
    return problems


def same_work(params: Any) -> Any:
    """The flow's parameters for the work the bare core does: the study and its result tables, without the
    report (plots and HTML, drawn by the core's ``backtest.observe.report`` all the same) and without writing the
    results into the database (``backtest.db``): what differs is Prefect itself and the cache it keeps."""
    return params.model_copy(update={"report": False, "persist": False})


def measure_overhead(
    store: Any,
    params: Any,
    workers: int,
    runs_dir: Path,
    log: Log,
    pairs: int = OVERHEAD_PAIRS,
    chunk_size: int | None = None,
) -> dict[str, Any]:
    """Prefect's overhead: the flow's wall time over the bare core's on the same work (``same_work``), from
    ``pairs`` interleaved pairs, each side's best kept. Interleaved, because the machine's speed drifts during
    a run; the best, because on a shared machine noise only ever adds time. The flow runs with a cold cache
    (its price files and chunk results written, as a first run writes them) on the server already up.

    Returns the best core run (``core``) and flow run (``flow``), each with every run's seconds."""
    cores: list[dict[str, Any]] = []
    flows: list[dict[str, Any]] = []
    for i in range(pairs):
        core = time_core(
            store, params.to_config(), workers, chunk_size=chunk_size, save_to=runs_dir / f"core-{i}"
        )
        cores.append(core)
        shutil.rmtree(store.root / "cache", ignore_errors=True)
        flow = run_flow(
            same_work(params).model_copy(update={"out": str(runs_dir / f"same-work-{i}")}),
            f"flow cold, same work ({i + 1} of {pairs})",
        )
        flows.append(flow)
        log(
            f"flow: Prefect's overhead, pair {i + 1} of {pairs}: the bare core {_same_work(core):.2f} s "
            f"({core['wall_seconds']:.2f} s + {core['save_seconds']:.2f} s writing its other tables), "
            f"the flow on the same work {flow['wall_seconds']:.2f} s ({flow['state']})"
        )
    completed = [f for f in flows if f["state"] == "Completed"] or flows
    best_flow = min(completed, key=lambda r: r["wall_seconds"])
    best_core = min(cores, key=_same_work)
    return {
        "core": {**best_core, "runs_seconds": [round(_same_work(c), 4) for c in cores]},
        "flow": {**best_flow, "runs_seconds": [round(f["wall_seconds"], 4) for f in flows]},
    }


def measure_flow(store: Any, sizes: BenchSizes, piece: Slice, runs_dir: Path, log: Log) -> dict[str, Any]:
    """Warm-up (not counted), then the whole store cold and warm, then the comparison slice."""
    from flows.params import StudyParams

    out: dict[str, Any] = {"orchestration": server_mode()}
    log(f"flow: {out['orchestration']['describe']}; PREFECT_HOME={os.environ.get('PREFECT_HOME')}")
    # the warm-up runs a few symbols of the same store: its cache entries (other chunks, so other keys) go
    # with the cache folder before the cold run
    t0 = time.perf_counter()
    warm_up = run_flow(
        StudyParams(
            store=str(store.root),
            out=str(runs_dir / "warmup"),
            symbols=list(store.catalog().nlargest(WARMUP_SYMBOLS, "rows")["symbol"]),  # whole histories
            workers=sizes.workers,
            chunk_size=max(1, WARMUP_SYMBOLS // 2),
        ),
        "warm-up flow",
    )
    out["warmup"] = {
        "seconds": time.perf_counter() - t0,
        "state": warm_up["state"],
        "error": warm_up.get("error"),
    }
    log(
        f"flow: warm-up (server start, imports; not counted) {out['warmup']['seconds']:.1f} s, "
        f"{warm_up['state']}"
    )

    base = StudyParams(store=str(store.root), workers=sizes.workers, runner="threads")
    # Prefect's overhead: the bare core and the flow on the same work (the study, its out-of-sample rows
    # streamed to Parquet, its other tables written), interleaved
    overhead = measure_overhead(store, base, sizes.workers, runs_dir, log)
    out["core_beside_cold"], out["same_work"] = overhead["core"], overhead["flow"]
    # then the flow as a user runs it: the report drawn and the results written into the database
    shutil.rmtree(store.root / "cache", ignore_errors=True)
    for label in ("cold", "warm"):
        run = run_flow(base.model_copy(update={"out": str(runs_dir / label)}), f"flow {label}")
        out[label] = run
        cache = (run.get("summary") or {}).get("cache") or {}
        log(
            f"flow: {sizes.symbols:,} symbols, {label}: {run['wall_seconds']:.2f} s ({run['state']}, "
            f"{cache.get('hits', '?')} hits / {cache.get('misses', '?')} misses), peak RSS of the process "
            f"tree {run['peak_rss_with_children_mb']:,.0f} MB"
        )
    sliced = StudyParams(  # validated anew, so the grid's integers are read as the field's numbers
        **base.model_dump()
        | {
            "out": str(runs_dir / "slice"),
            "symbols": list(piece.symbols),
            "grid": GRIDS[COMPARISON_GRID],
            "fees_bps": COMPARISON_FEES_BPS,
        }
    )
    out["slice"] = run_flow(sliced, "flow on the slice")
    log(f"flow: the slice, cold: {out['slice']['wall_seconds']:.2f} s ({out['slice']['state']})")
    return out


# ---------------------------------------------------------------------------------------------- the suite


def _same_work(core: dict[str, Any]) -> float:
    """The bare core's seconds for what a flow run delivers: the study and its result tables written."""
    return float(core["wall_seconds"]) + float(core.get("save_seconds") or 0.0)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b:
        return None
    return float(a) / float(b)


def compute_ratios(p: dict[str, Any]) -> dict[str, float | None]:
    """Every ratio of the run from its measurements (None where a part could not run)."""
    core, flow, sl = p["core"], p["flow"], p["slice"]
    by_size = {r["symbols"]: r["wall_seconds"] for r in core["symbols_scaling"]}
    sizes = sorted(by_size)
    n = sizes[-1]
    grid = {r["combinations"]: r["wall_seconds"] for r in core["grid_scaling"]}
    cold, warm = flow.get("cold") or {}, flow.get("warm") or {}
    warm_cache = ((warm.get("summary") or {}).get("cache")) or {}
    chunks = (warm.get("summary") or {}).get("counts", {}).get("chunks")
    vb = sl.get("vectorbt") or {}
    vb_rate = vb.get("bars_x_combinations_per_second")
    beside = vb.get("core_beside") or {"kernel": {}, "study": {}}
    core_beside_cold = flow.get("core_beside_cold") or core["main"]
    naive_rate = sl["naive"]["bars_x_combinations_per_second"]
    speedup = _ratio(core["one_worker"]["wall_seconds"], core["main"]["wall_seconds"])
    slice_flow_rate = (flow.get("slice") or {}).get("bars_x_combinations_per_second")
    return {
        "flow_warm_over_cold": _ratio(warm.get("wall_seconds"), cold.get("wall_seconds")),
        "flow_same_work_over_core": _ratio(
            (flow.get("same_work") or {}).get("wall_seconds"), _same_work(core_beside_cold)
        ),
        "flow_cold_over_core": _ratio(cold.get("wall_seconds"), _same_work(core_beside_cold)),
        "cache_hit_rate_warm": _ratio(warm_cache.get("hits"), chunks),
        "workers_2_over_1": speedup,
        "parallel_efficiency": speedup / p["sizes"]["workers"] if speedup else None,
        "symbols_4x_time_ratio": _ratio(by_size[n], by_size.get(max(1, n // 4))),
        "symbols_8x_time_ratio": _ratio(by_size[n], by_size.get(max(1, n // 8))),
        "grid_64_over_16": _ratio(grid.get(64), grid.get(16)),
        "grid_256_over_16": _ratio(grid.get(256), grid.get(16)),
        "core_study_vs_vectorbt": _ratio(beside["study"].get("bars_x_combinations_per_second"), vb_rate),
        "core_kernel_vs_vectorbt": _ratio(beside["kernel"].get("bars_x_combinations_per_second"), vb_rate),
        "flow_vs_vectorbt": _ratio(slice_flow_rate, vb_rate),
        "core_at_scale_vs_vectorbt": _ratio(core["main"]["bars_x_combinations_per_second"], vb_rate),
        "flow_at_scale_vs_vectorbt": _ratio(cold.get("bars_x_combinations_per_second"), vb_rate),
        "vectorbt_memory_over_core": _ratio(
            vb.get("rss_increase_mb"),
            max(beside["study"].get("peak_rss_mb", 0.0) - beside["study"].get("start_rss_mb", 0.0), 1.0),
        ),
        "core_study_vs_naive": _ratio(sl["study"]["bars_x_combinations_per_second"], naive_rate),
        "core_kernel_vs_naive": _ratio(sl["kernel"]["bars_x_combinations_per_second"], naive_rate),
        "flow_vs_naive": _ratio(slice_flow_rate, naive_rate),
        "luck_kernel_overhead": (core.get("luck_kernel") or {}).get("overhead"),
        "luck_share_of_core": _luck_share(core),
        **_rank_ratios(p.get("ranking") or {}),
        **_command_ratios(p.get("commands") or {}),
    }


def _command_ratios(commands: dict[str, Any]) -> dict[str, float | None]:
    """The commands' ratios: over their flows, warm / cold, the first of a project / a later cold one, and the
    demo's first flow on an empty numba cache over its second."""
    run, demo = commands.get("run") or {}, commands.get("demo") or {}
    cold, warm, first = run.get("cold") or {}, run.get("warm") or {}, run.get("first") or {}
    return {
        "command_cold_over_flow": _ratio(cold.get("wall_seconds"), cold.get("flow_seconds")),
        "command_warm_over_cold": _ratio(warm.get("wall_seconds"), cold.get("wall_seconds")),
        "command_first_over_cold": _ratio(first.get("wall_seconds"), cold.get("wall_seconds")),
        "demo_first_flow_over_second": _ratio(
            (demo.get("first") or {}).get("flow_seconds"), (demo.get("second") or {}).get("flow_seconds")
        ),
    }


def _rank_ratios(rank: dict[str, Any]) -> dict[str, float | None]:
    """The cross-sectional study's ratios: warm / cold, and throughput against vectorbt and the naive loop."""
    cold, warm = rank.get("cold") or {}, rank.get("warm") or {}
    vb = rank.get("vectorbt") or {}
    vb_rate = vb.get("bars_x_combinations_per_second")
    return {
        "rank_flow_warm_over_cold": _ratio(warm.get("wall_seconds"), cold.get("wall_seconds")),
        "rank_core_vs_vectorbt": _ratio(vb.get("core_beside_rate"), vb_rate),
        "rank_flow_vs_vectorbt": _ratio(
            (rank.get("slice_flow") or {}).get("bars_x_combinations_per_second"), vb_rate
        ),
        "rank_flow_at_scale_vs_vectorbt": _ratio(cold.get("bars_x_combinations_per_second"), vb_rate),
        "rank_core_vs_naive": _ratio(
            (rank.get("core_kernel") or {}).get("bars_x_combinations_per_second"),
            (rank.get("naive") or {}).get("bars_x_combinations_per_second"),
        ),
    }


def _phases(run: dict[str, Any] | None) -> str:
    ps = ((run or {}).get("summary") or {}).get("phase_seconds") or {}
    inside = ((run or {}).get("summary") or {}).get("wall_seconds")
    text = ", ".join(f"{k} {v:.2f}" for k, v in ps.items())
    if inside is not None and run:
        text += f"; outside its wall_seconds (report, run start/end) {run['wall_seconds'] - inside:.2f} s"
    return f"phase s: {text}" if text else "no phase seconds (the run failed)"


def _threads(run: dict[str, Any]) -> str:
    return "thread s: " + ", ".join(f"{k} {v:.2f}" for k, v in run["thread_seconds"].items())


def judge(p: dict[str, Any], sizes: BenchSizes) -> list[Goal]:
    """The goals of docs/design.md section 4 against this run; absolute ones (seconds, MB) only on W."""
    r, core, flow = p["ratios"], p["core"], p["flow"]
    cold, warm = flow.get("cold") or {}, flow.get("warm") or {}
    same = flow.get("same_work") or {}
    beside_cold = flow.get("core_beside_cold") or core["main"]
    at_w = sizes.is_w
    reduced = f"{sizes.symbols:,} x {sizes.years:g} years is not W"

    def ratio_goal(
        name: str, target: str, value: float | None, ok: Callable[[float], bool], why: str
    ) -> Goal:
        met = None if value is None else ok(value)
        return Goal(name, target, value, met, "" if value is not None else "could not be measured", why)

    goals = [
        Goal(
            "W in the core, s",
            f"<= {CORE_W_GOAL_SECONDS:g} s",
            core["main"]["wall_seconds"],
            core["main"]["wall_seconds"] <= CORE_W_GOAL_SECONDS if at_w else None,
            "" if at_w else reduced,
            _threads(core["main"]),
        ),
        Goal(
            "W through Prefect, cold, s",
            f"<= {FLOW_W_GOAL_SECONDS:g} s",
            cold.get("wall_seconds"),
            (cold.get("wall_seconds", math.inf) <= FLOW_W_GOAL_SECONDS) if at_w else None,
            "" if at_w else reduced,
            _phases(cold),
        ),
        Goal(
            "peak RSS of the process tree, flow cold, MB",
            f"<= {MEMORY_GOAL_MB:g} MB",
            cold.get("peak_rss_with_children_mb"),
            (cold.get("peak_rss_with_children_mb", math.inf) <= MEMORY_GOAL_MB) if at_w else None,
            "" if at_w else reduced,
            f"RSS before the run {cold.get('start_rss_mb', 0):,.0f} MB (imports, earlier runs); the core alone "
            f"peaked at {core['main']['peak_rss_mb']:,.0f} MB from {core['main']['start_rss_mb']:,.0f} MB",
        ),
        ratio_goal(
            "warm / cold",
            f"<= {WARM_GOAL:.0%}",
            r["flow_warm_over_cold"],
            lambda v: v <= WARM_GOAL,
            _phases(warm),
        ),
        ratio_goal(
            "Prefect overhead: flow / core, same work",
            f"<= {OVERHEAD_GOAL}x",
            r["flow_same_work_over_core"],
            lambda v: v <= OVERHEAD_GOAL,
            f"best of {len(same.get('runs_seconds') or [])} interleaved pairs: the bare core "
            f"{_same_work(beside_cold):.2f} s (runs {beside_cold.get('runs_seconds')}; "
            f"{_threads(beside_cold)}), the flow cold without report or database "
            f"{same.get('wall_seconds', math.nan):.2f} s (runs {same.get('runs_seconds')}; {_phases(same)}); "
            f"as a user runs it (report, database) {cold.get('wall_seconds', math.nan):.2f} s = "
            f"{r['flow_cold_over_core'] or math.nan:.2f}x",
        ),
        ratio_goal(
            f"{sizes.workers} workers vs 1",
            f">= {WORKERS_GOAL}x",
            r["workers_2_over_1"],
            lambda v: v >= WORKERS_GOAL,
            f"1 worker {core['one_worker']['wall_seconds']:.2f} s ({_threads(core['one_worker'])}); "
            f"{sizes.workers} workers {core['main']['wall_seconds']:.2f} s ({_threads(core['main'])})",
        ),
        ratio_goal(
            f"time({sizes.symbols:,}) / time({max(1, sizes.symbols // 4):,}) symbols",
            f"<= {SYMBOLS_GOAL}",
            r["symbols_4x_time_ratio"],
            lambda v: v <= SYMBOLS_GOAL,
            "per size: "
            + ", ".join(
                f"{x['symbols']:,}: {x['wall_seconds']:.2f} s ({x['chunks']} chunks)"
                for x in core["symbols_scaling"]
            ),
        ),
        ratio_goal(
            "statistics of luck, share of W in the core",
            f"<= {LUCK_GOAL:.0%}",
            r["luck_share_of_core"],
            lambda v: v <= LUCK_GOAL,
            f"the grid kernel with the trials' returns {r['luck_kernel_overhead'] or math.nan:.1%} slower "
            f"on one chunk; the merge's PBO, deflated Sharpe and SPA "
            f"{core['main']['thread_seconds'].get('overfitting', math.nan):.2f} s of "
            f"{core['main']['wall_seconds']:.2f} s",
        ),
    ]
    vb = p["slice"].get("vectorbt") or {}
    vb_note = "" if vb.get("available") else "vectorbt not installed"
    for name, key, target in (
        ("vs vectorbt, core study, same slice", "core_study_vs_vectorbt", VECTORBT_CORE_GOAL),
        ("vs vectorbt, core at scale (W rate / slice rate)", "core_at_scale_vs_vectorbt", VECTORBT_CORE_GOAL),
        ("vs vectorbt, end to end (flow), same slice", "flow_vs_vectorbt", VECTORBT_FLOW_GOAL),
        (
            "vs vectorbt, end to end at scale (flow W rate / slice rate)",
            "flow_at_scale_vs_vectorbt",
            VECTORBT_FLOW_GOAL,
        ),
    ):
        g = ratio_goal(
            name,
            f">= {target:g}x throughput",
            r[key],
            lambda v, t=target: v >= t,  # type: ignore[misc]
            f"vectorbt {vb.get('wall_seconds', math.nan):.2f} s on the slice; core study beside it "
            f"{(vb.get('core_beside') or {}).get('study', {}).get('wall_seconds', math.nan):.3f} s; flow on the slice "
            f"{(p['flow'].get('slice') or {}).get('wall_seconds', math.nan):.2f} s ({_phases(p['flow'].get('slice'))})",
        )
        goals.append(Goal(g.name, g.target, g.value, g.met, vb_note or g.note, g.why))
    goals += _rank_goals(p, r, at_w, reduced)
    goals += _command_goals(p, r, at_w, reduced)
    return goals


def _command_goals(p: dict[str, Any], r: dict[str, Any], at_w: bool, reduced: str) -> list[Goal]:
    """The study as a user runs it: the command's wait beyond its flow, warm and first runs, the demo on a
    fresh clone, and the whole tree's memory with the project's server."""
    commands = p.get("commands")
    if not commands:
        return []
    run, demo = commands.get("run") or {}, commands.get("demo") or {}
    cold, warm, first = run.get("cold") or {}, run.get("warm") or {}, run.get("first") or {}
    whole = _whole_tree_mb({**cold, "server_rss_mb": run.get("server_rss_mb")})

    def judged(value: float | None, target: float, at_most: bool = True) -> bool | None:
        return None if value is None else (value <= target if at_most else value >= target)

    def seconds(x: dict[str, Any]) -> str:
        return (
            f"command {x.get('wall_seconds', math.nan):.2f} s, flow {x.get('flow_seconds') or math.nan:.2f} s"
        )

    return [
        Goal(
            "cold command / its flow (the project's server up)",
            f"<= {COMMAND_OVER_FLOW_GOAL}x",
            r["command_cold_over_flow"],
            judged(r["command_cold_over_flow"], COMMAND_OVER_FLOW_GOAL),
            "",
            f"{seconds(cold)}: the rest is the interpreter, imports, parameters, the report and the run's start",
        ),
        Goal(
            "warm command on W, s",
            f"<= {COMMAND_WARM_GOAL_SECONDS:g} s",
            warm.get("wall_seconds"),
            judged(warm.get("wall_seconds"), COMMAND_WARM_GOAL_SECONDS) if at_w else None,
            "" if at_w else reduced,
            seconds(warm),
        ),
        Goal(
            "warm command / cold command",
            f"<= {COMMAND_WARM_SHARE_GOAL:.0%}",
            r["command_warm_over_cold"],
            judged(r["command_warm_over_cold"], COMMAND_WARM_SHARE_GOAL),
            "",
            f"warm: {seconds(warm)}; cold: {seconds(cold)}",
        ),
        Goal(
            "first command of a project / a later cold one",
            f"<= {COMMAND_FIRST_GOAL}x",
            r["command_first_over_cold"],
            judged(r["command_first_over_cold"], COMMAND_FIRST_GOAL),
            "",
            f"first (starts the server on a new home): {seconds(first)}; cold: {seconds(cold)}",
        ),
        Goal(
            "the demo on a fresh clone: its flow / its flow on a second run",
            f"<= {DEMO_FIRST_GOAL}x",
            r["demo_first_flow_over_second"],
            judged(r["demo_first_flow_over_second"], DEMO_FIRST_GOAL),
            "",
            f"{demo.get('symbols')} symbols x {demo.get('years')} years; first: {seconds(demo.get('first') or {})}; "
            f"second: {seconds(demo.get('second') or {})}",
        ),
        Goal(
            "peak RSS, cold command's process tree and the project's server, MB",
            f"<= {MEMORY_GOAL_MB:g} MB",
            whole,
            judged(whole, MEMORY_GOAL_MB) if at_w else None,
            "" if at_w else reduced,
            f"the command's tree {cold.get('peak_rss_with_children_mb') or math.nan:,.0f} MB (its process "
            f"{cold.get('peak_rss_mb') or math.nan:,.0f} MB), the server {run.get('server_rss_mb') or math.nan:,.0f} MB",
        ),
    ]


def _whole_tree_mb(command: dict[str, Any]) -> float | None:
    """A command's peak RSS with the project's server beside it (a process of its own, sampled at the end)."""
    tree, server = command.get("peak_rss_with_children_mb"), command.get("server_rss_mb")
    return None if not tree or server is None else round(tree + server, 1)


def _rank_goals(p: dict[str, Any], r: dict[str, Any], at_w: bool, reduced: str) -> list[Goal]:
    """The cross-sectional study's goals: W through the flow in seconds and memory, warm / cold, and its
    throughput against vectorbt's ``from_orders``."""
    rank = p.get("ranking")
    if not rank:
        return []
    cold, warm = rank.get("cold") or {}, rank.get("warm") or {}
    vb = rank.get("vectorbt") or {}
    command = rank.get("command") or {}
    whole = _whole_tree_mb(command)
    seconds, peak = cold.get("wall_seconds", math.inf), whole if whole is not None else math.inf
    warm_ratio, vb_ratio = r["rank_flow_warm_over_cold"], r["rank_flow_at_scale_vs_vectorbt"]
    combos = f"momentum_rank, {rank.get('combinations')} combinations"
    return [
        Goal(
            "cross-sectional W through Prefect, cold, s",
            f"<= {RANK_FLOW_W_GOAL_SECONDS:g} s",
            cold.get("wall_seconds"),
            seconds <= RANK_FLOW_W_GOAL_SECONDS if at_w else None,
            "" if at_w else reduced,
            f"{combos}; {_phases(cold)}",
        ),
        Goal(
            "cross-sectional peak RSS, `backtest run` cold and the project's server, MB",
            f"<= {MEMORY_GOAL_MB:g} MB",
            whole,
            peak <= MEMORY_GOAL_MB if at_w and whole is not None else None,
            "" if at_w else reduced,
            f"the command's process tree {command.get('peak_rss_with_children_mb') or math.nan:,.0f} MB, the "
            f"server {command.get('server_rss_mb') or math.nan:,.0f} MB; the command "
            f"{command.get('wall_seconds', math.nan):.1f} s, its flow "
            f"{command.get('flow_seconds') or math.nan:.2f} s (a new process: imports, kernels from numba's cache); "
            f"in this process, after the other measurements, the flow peaked at "
            f"{cold.get('peak_rss_with_children_mb', math.nan):,.0f} MB from {cold.get('start_rss_mb', 0):,.0f} MB",
        ),
        Goal(
            "cross-sectional warm / cold",
            f"<= {WARM_GOAL:.0%}",
            warm_ratio,
            None if warm_ratio is None else warm_ratio <= WARM_GOAL,
            "" if warm_ratio is not None else "could not be measured",
            _phases(warm),
        ),
        Goal(
            "cross-sectional vs vectorbt from_orders, end to end at scale (flow W rate / slice rate)",
            f">= {VECTORBT_FLOW_GOAL:g}x throughput",
            vb_ratio,
            None if vb_ratio is None else vb_ratio >= VECTORBT_FLOW_GOAL,
            "" if vb.get("available") else "vectorbt not measured",
            f"vectorbt {vb.get('wall_seconds', math.nan):.2f} s on the slice; the core's portfolios beside it "
            f"{vb.get('core_beside_seconds', math.nan):.3f} s; the flow on the slice "
            f"{(rank.get('slice_flow') or {}).get('wall_seconds', math.nan):.2f} s",
        ),
    ]


def run_bench(
    sizes: BenchSizes,
    data: Path,
    results: Path | None,
    log: Log = print,
    *,
    rebuild: bool = False,
    keep_runs: bool = False,
) -> BenchRun:
    """Measure everything (see the module's docstring) and write the JSON result into ``results``.

    The caller has set Prefect's environment (``prepare_prefect_environment``) before anything imported it.
    """
    bench = BenchRun(sizes)
    p = bench.payload
    p["script"] = "bench"
    p["mode"] = sizes.mode
    p["machine"] = describe_machine()
    p["sizes"] = {
        **asdict(sizes),
        "scaling_symbols": list(sizes.scaling_symbols),
        "grid_symbols": sizes.grid_symbols,
        "comparison_symbols": sizes.comparison_symbols,
        "comparison_grid": COMPARISON_GRID,
        "comparison_fees_bps": COMPARISON_FEES_BPS,
        "is_W": sizes.is_w,
    }
    t_start = time.perf_counter()

    t0 = time.perf_counter()
    store, built = ensure_store(sizes.symbols, sizes.years, sizes.seed, data, log=log, rebuild=rebuild)
    p["data"] = {**built, "seconds_this_run": time.perf_counter() - t0, "store": str(store.root)}
    if built.get("reused"):
        log(
            f"data: built {built.get('created')}: generate {built.get('generate_seconds')} s, "
            f"ingest {built.get('ingest_seconds')} s ({built.get('rows', 0):,} rows)"
        )

    p["core"] = measure_core(store, sizes, log)
    piece = make_slice(store, sizes)
    p["slice"] = {
        "symbols": len(piece.symbols),
        "bars": piece.data.bars,
        "combinations": len(piece.combos),
        "bars_x_combinations": piece.work,
        "fees_bps": COMPARISON_FEES_BPS,
        "exact_ties": int(piece.ties.sum()),
    }
    sliced = measure_slice_core(store, piece, sizes, log)
    core_tr = sliced.pop("_core_tr")
    p["slice"].update(sliced)

    runs_dir = (
        universe_dir(sizes.symbols, sizes.years, sizes.seed, data)
        / "runs"
        / p["machine"]["date"].replace(":", "")
    )
    try:
        p["flow"] = measure_flow(store, sizes, piece, runs_dir, log)
        # the cross-sectional study, before vectorbt's import inflates this process's memory
        p["ranking"], rank_piece, rank_tr = measure_ranking(
            store, sizes.symbols, sizes.workers, sizes.comparison_symbols, runs_dir, run_flow, log
        )
        p["commands"] = {
            "run": measure_run_commands(store, runs_dir, log),
            "demo": measure_demo(runs_dir, sizes.demo_symbols, sizes.demo_years, log),
        }
    finally:
        if not keep_runs:
            shutil.rmtree(runs_dir, ignore_errors=True)
    p["slice"]["vectorbt"] = measure_vectorbt(store, piece, sizes, core_tr, log)
    if p["slice"]["vectorbt"].get("available"):
        p["ranking"]["vectorbt"] = measure_ranking_vectorbt(rank_piece, rank_tr, log)
    del piece, core_tr, rank_piece, rank_tr
    release_memory()

    flow = p["flow"]
    chunks = (flow["cold"].get("summary") or {}).get("counts", {}).get("chunks", 0)
    bench.problems += check_flow_run(flow["same_work"], 0, chunks, p["core"]["main"])
    bench.problems += check_flow_run(flow["cold"], 0, chunks, p["core"]["main"])
    bench.problems += check_flow_run(flow["warm"], chunks, 0, p["core"]["main"])
    slice_chunks = (flow["slice"].get("summary") or {}).get("counts", {}).get("chunks", 0)
    bench.problems += check_flow_run(flow["slice"], 0, slice_chunks, p["slice"]["study"])
    rank = p["ranking"]
    rank_tasks = ((rank["cold"].get("summary") or {}).get("counts") or {}).get("chunks", 0)
    bench.problems += check_rank_run(rank["cold"], 0, rank_tasks, None)
    bench.problems += check_rank_run(rank["warm"], rank_tasks, 0, None)
    bench.problems += check_rank_run(rank["slice_flow"], None, None, rank["slice_study"])
    if rank["command"].get("state") != "Completed":
        bench.problems.append(f"ranking, `backtest run`: {rank['command'].get('error') or 'not Completed'}")
    commands = p["commands"]
    for label, run in [*commands["run"].items(), *((f"demo {k}", v) for k, v in commands["demo"].items())]:
        if isinstance(run, dict) and run.get("state") != "Completed":
            bench.problems.append(f"command {label}: {run.get('error') or run.get('state')}")
    misses = ((commands["run"].get("warm") or {}).get("cache") or {}).get("misses")
    if misses:
        bench.problems.append(f"command warm: {misses} cache misses, expected none")
    for name in ("naive", "vectorbt"):
        check = (rank.get(name) or {}).get("check")
        if check and not check["ok"]:
            bench.problems.append(
                f"ranking, {name}: total returns differ from the core's by up to {check['max_abs_diff']:.3g} "
                f"(tolerance {check['tolerance']:g}) at combination {check['worst']}"
            )
    for name in ("naive", "vectorbt"):
        check = (p["slice"].get(name) or {}).get("check")
        if check and not check["ok"]:
            bench.problems.append(
                f"{name}: total returns differ from the core's by up to {check['max_abs_diff']:.3g} "
                f"(tolerance {check['tolerance']:g}) at {check['worst']}"
            )

    p["ratios"] = compute_ratios(p)
    bench.goals = judge(p, sizes)
    p["goals"] = [asdict(g) for g in bench.goals]
    p["problems"] = bench.problems
    p["total_seconds"] = time.perf_counter() - t_start
    p["lifetime_max_rss_mb"] = max_rss_mb()
    if results is not None:
        bench.path = write_results("bench", p, results)
    return bench
