"""The main flow: the three-phase walk-forward study over a whole store, chunk by chunk."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.context import get_run_context
from prefect.futures import as_completed
from prefect.states import Completed, Failed, State
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from backtest.atomic import write_json
from backtest.data.store import Store
from backtest.db.prices import open_price_source
from backtest.engine.planning import (
    ChunkSpec,
    Universe,
    estimate_bars,
    make_plan,
    plan_chunks,
    resolve_universe,
)
from backtest.engine.study import StudyPlan
from backtest.errors import BacktestError
from backtest.observe.preload import preload
from backtest.observe.profiling import REPORT_FILE, wall_timings
from backtest.observe.report import PLOT_TITLES
from backtest.results.cache import CacheLayout, CacheLimits
from backtest.results.handoff import RESULTS
from backtest.results.outputs import CollectAhead, collected_key
from backtest.results.summary import CACHED, ChunkOutcome, PhaseClock, RunSummary
from flows.monitoring import RunWatch
from flows.params import StudyParams
from tasks import artifacts
from tasks.caching import chunk_cache_policy
from tasks.chunks import ChunkJob, PriceSource, backtest_chunk
from tasks.db import mark_queries, record_run
from tasks.report import must_draw, preload_report, publish_report
from tasks.results import collect_results, prune_cache


def make_task_runner(kind: str, workers: int, dask_address: str | None = None) -> TaskRunner:
    """The runner for the chunk tasks: bounded threads (numba releases the GIL), processes, or Dask."""
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "processes":
        return ProcessPoolTaskRunner(max_workers=workers)
    if kind == "dask":
        from prefect_dask import DaskTaskRunner

        if dask_address:
            return DaskTaskRunner(address=dask_address)
        # Dask's dashboard listens on every interface by default: keep the local cluster on loopback.
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": "127.0.0.1:0",
            }
        )
    raise ValueError(f"unknown runner {kind!r}: choose threads, processes or dask")


@flow(name="three-phase-study", log_prints=False, persist_result=False)
def three_phase_study(params: StudyParams = StudyParams()) -> Any:  # noqa: B008 - pydantic default
    """Plan the chunks, load and backtest each (cached by its inputs), collect, publish, prune, report."""
    preload("arch.bootstrap")  # the statistics of luck's SPA test (1.5 s to import), needed at the end
    watch = RunWatch(get_run_context().flow_run, params.alerts, params.monitor_interval)
    with watch:  # the resource monitor samples the run's process tree until the flow returns or fails
        if params.kind() == "ranking":
            from flows.cross_sectional import run_cross_sectional

            workers = params.worker_count()
            return run_cross_sectional(
                params, watch, lambda: make_task_runner(params.runner, workers, params.dask_address)
            )
        return _run_study(params, watch)


@dataclass(frozen=True)
class StudyRun:
    """What the planning step decided: the run's chunks and where everything goes."""

    run_id: str
    store: Store
    universe: Universe
    plan: StudyPlan
    specs: list[ChunkSpec]
    cache: CacheLayout
    out: Path
    workers: int

    @functools.cached_property
    def merged_key(self) -> str:
        """The cache key of the merged tables of these chunks (and of the merge-only options)."""
        return collected_key([s.key for s in self.specs], self.plan.config.merge_digest())


def _run_study(params: StudyParams, watch: RunWatch) -> Any:
    clock = PhaseClock()
    db_mark = mark_queries()
    with clock.phase("plan"):
        run = plan_run(params)
    if not isinstance(run, StudyRun):
        return run  # a clean Failed state: the input cannot make a study
    watch.plan(run.specs, run.cache.results)
    if params.report and must_draw(run.cache.collected / run.merged_key, PLOT_TITLES):
        preload_report()  # matplotlib's import overlaps the run instead of delaying the report
    summary = RunSummary(
        flow_run_id=run.run_id,
        config=params.public_dump(),
        counts=_counts(run),
        folds=[f.to_dict() for f in run.plan.folds],
        out=str(run.out),
    )
    with clock.phase("backtest"):
        collected_ahead = submit_chunks(params, run, watch, summary)
    watch.backtest_done()
    summary.prices_fetched = watch.prices_fetched()
    with clock.phase("collect"):
        if not summary.failed:
            collect(run, watch, summary, collected_ahead)
    with clock.phase("prune"):
        limits = CacheLimits(int(params.cache_max_gb * 1e9), params.cache_max_age_days * 86400.0)
        summary.pruned = prune_cache(run.cache, limits, [s.key for s in run.specs], run.merged_key).to_dict()
    if params.persist:  # the run and its results into the database, then light maintenance
        with clock.phase("db"):
            summary.wall_seconds = clock.elapsed()
            price_source = params.db or str(run.store.root)
            summary.db = record_run(
                params.results_db(), price_source, run.specs, run.cache, summary, db_mark, params.persist_oos
            )
    summary.phase_seconds = clock.phases
    summary.wall_seconds = clock.elapsed()
    doc = report(params, run, watch, summary)
    return final_state(summary, doc)


def plan_run(params: StudyParams) -> StudyRun | State:
    """The universe, the study plan and its chunks, or a Failed state saying why the input cannot make one."""
    logger = get_run_logger()
    store = Store(params.store)
    workers = params.worker_count()
    try:
        source = open_price_source(store.root, params.db)  # the Parquet store, or the database --db
        universe = resolve_universe(source.catalog(), params.symbols)
        plan = make_plan(params.to_config(), universe)
        specs = plan_chunks(plan, universe, source.data_fingerprint, params.chunk_size, workers)
    except BacktestError as exc:
        # Bad input (windows longer than the data, unknown symbols...): a clean Failed state, no traceback.
        logger.info("the study cannot start: %s", exc)
        return Failed(message=f"{type(exc).__name__}: {exc}")
    run_id = str(get_run_context().flow_run.id)
    out = Path(params.out) if params.out else store.root / "runs" / run_id
    logger.info(
        "%d symbols from %s to %s, %d folds x %d combinations, %d chunks on %d %s workers",
        len(universe.symbols),
        universe.first,
        universe.last,
        len(plan.folds),
        len(plan.combos),
        len(specs),
        workers,
        params.runner,
    )
    return StudyRun(run_id, store, universe, plan, specs, CacheLayout.of_store(store.root), out, workers)


def submit_chunks(params: StudyParams, run: StudyRun, watch: RunWatch, summary: RunSummary) -> bool:
    """Run every chunk task (a cache hit when its inputs are unchanged) and note each outcome as it ends;
    the chunks' results are merged in order meanwhile. Returns whether that merge completed."""
    logger = get_run_logger()
    cache, specs = run.cache, run.specs
    chunk_task = backtest_chunk.with_options(
        cache_policy=chunk_cache_policy(cache.records, cache.locks), result_storage=cache.results
    )
    watch.start_progress()
    keys = [spec.key for spec in specs]
    # merges each chunk's results as soon as it and the ones before it are there, as the core's merge does
    ahead = CollectAhead(
        run.plan,
        [s.name for s in specs],
        [cache.result_file(k) for k in keys],
        cache.collected,
        run.merged_key,
        handoff=RESULTS,  # the results of chunks computed on this process's threads, without decoding them again
    )
    position = {spec.name: i for i, spec in enumerate(specs)}
    try:
        with make_task_runner(params.runner, run.workers, params.dask_address) as runner:
            prices = PriceSource(str(run.store.root), run.plan.last_date, str(cache.prices), params.db)
            futures = [runner.submit(chunk_task, {"job": ChunkJob(spec, run.plan, prices)}) for spec in specs]
            by_future = dict(zip((f.task_run_id for f in futures), specs, strict=True))
            for future in as_completed(futures):
                spec = by_future[future.task_run_id]
                try:
                    future.wait()
                    state = future.state
                except Exception as exc:
                    # The process computing it died (SIGKILL, out of memory): it failed, the others go on.
                    state = Failed(message=f"its worker process died ({type(exc).__name__}: {exc})")
                error = None if state.is_completed() else _error_text(state)
                if error is None:
                    ahead.ready(position[spec.name])
                    logger.info(
                        "%s: %s", spec.describe(), "cache hit" if state.name == CACHED else "computed"
                    )
                else:
                    ahead.abandon()
                    logger.error("%s failed: %s", spec.describe(), error)
                summary.outcomes.append(
                    ChunkOutcome(spec.name, len(spec.symbols), state.name, spec.key, error)
                )
                watch.chunk_finished(spec.name, state)
            del futures, future, state
    finally:
        if len(summary.outcomes) < len(specs):
            ahead.abandon()  # the loop did not finish: nothing more will be ready
        collected_ahead = ahead.wait()
    return collected_ahead


def collect(run: StudyRun, watch: RunWatch, summary: RunSummary, collected_ahead: bool) -> None:
    """The study's tables in ``out``, merged from the chunks' persisted results (or reused from the cache)."""
    # quoted: Prefect would walk every symbol of every chunk twice to look for futures
    collected = collect_results(quote(run.plan), quote(run.specs), run.cache, str(run.out), run.merged_key)
    # a cache entry made by ``ahead`` during this run is this run's collect, not a reused one
    summary.collect_reused = collected["reused"] and not collected_ahead
    summary.collected_key = collected["key"]
    summary.figures = collected["figures"]
    summary.chunk_seconds = wall_timings(collected["timings"])
    states = {o.chunk: o.state for o in summary.outcomes}
    rows = [{**row, "state": states[row["chunk"]]} for row in collected["chunks"]]
    watch.post("the chunk table", lambda: artifacts.chunk_table(rows))


def report(params: StudyParams, run: StudyRun, watch: RunWatch, summary: RunSummary) -> dict[str, Any]:
    """Profile, summary.json, the summary artifact and (when asked) the HTML report; returns the summary."""
    doc = summary.to_dict()
    watch.finish(doc, summary.phase_seconds, doc["wall_seconds"], run.out, run.workers, params.runner)
    doc["report"] = str(run.out / REPORT_FILE) if params.report else None
    write_json(run.out / "summary.json", doc)
    text = artifacts.summary_text(doc)  # now: the summary document changes after this point
    watch.post("the summary", lambda: artifacts.summary_markdown(text))
    if params.report:
        results_cache = str(run.cache.collected / summary.collected_key) if summary.collected_key else None
        built = publish_report(str(run.out), results_cache, return_state=True)
        if built.is_failed():
            get_run_logger().error("the report could not be built: %s", _error_text(built))
    return doc


def final_state(summary: RunSummary, doc: dict[str, Any]) -> State:
    failed, chunks = summary.failed, summary.counts["chunks"]
    if failed:
        names = ", ".join(o.chunk for o in failed)
        return Failed(
            message=f"{len(failed)} of {chunks} chunks failed ({names}); the others are persisted. "
            "Re-run the same study (or retry this flow run) to recompute only the failed chunks.",
            # no data: Prefect reads a Failed state's data as its exception; the summary is in summary.json
        )
    return Completed(message=f"{chunks} chunks ({summary.hits} from cache)", data=doc)


def _counts(run: StudyRun) -> dict[str, int]:
    universe, plan = run.universe, run.plan
    return {
        "symbols": len(universe.symbols),
        "chunks": len(run.specs),
        "folds": len(plan.folds),
        "combinations": len(plan.combos),
        "bars": estimate_bars(universe.first, universe.last),  # a chunk's width, as the chunk size saw it
        "bars_x_combinations": universe.rows * len(plan.combos),
    }


def _error_text(state: Any) -> str:
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, BaseException):
        return f"{type(exc).__name__}: {exc}"
    return state.message or "failed"
