"""The main flow: the three-phase walk-forward study over a whole store, chunk by chunk."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.context import get_run_context
from prefect.futures import as_completed
from prefect.states import Completed, Failed
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from backtest.data.store import Store
from backtest.db.prices import open_price_source
from backtest.engine.planning import estimate_bars, make_plan, plan_chunks, resolve_universe
from backtest.errors import BacktestError
from backtest.observe.profiling import REPORT_FILE, wall_timings
from backtest.results.handoff import RESULTS
from backtest.results.outputs import CollectAhead, collected_key, write_json
from flows.monitoring import RunWatch
from flows.params import StudyParams
from tasks import artifacts
from tasks.chunks import ChunkJob, PriceSource, backtest_chunk, chunk_cache_policy
from tasks.db import mark_queries, record_run
from tasks.report import preload_report, publish_report
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


def cache_dirs(store: Store) -> dict[str, Path]:
    base = store.root / "cache"
    return {
        "results": base / "results",
        "records": base / "records",
        "locks": base / "locks",
        "prices": base / "prices",
        "collected": base / "collected",
    }


@flow(name="three-phase-study", log_prints=False, persist_result=False)
def three_phase_study(params: StudyParams = StudyParams()) -> Any:  # noqa: B008 - pydantic default
    """Plan the chunks, load and backtest each (cached by its inputs), collect, publish, prune, report."""
    if params.report:
        preload_report()  # matplotlib's import (about 0.3 s) overlaps the run instead of delaying the report
    watch = RunWatch(get_run_context().flow_run, params.alerts, params.monitor_interval)
    with watch:  # the resource monitor samples the run's process tree until the flow returns or fails
        return _run_study(params, watch)


def _run_study(params: StudyParams, watch: RunWatch) -> Any:
    t_start = time.perf_counter()
    logger = get_run_logger()
    run_id = str(get_run_context().flow_run.id)
    phases: dict[str, float] = {}
    t = time.perf_counter()

    store = Store(params.store)
    workers = params.worker_count()
    db_mark = mark_queries()
    try:
        source = open_price_source(store.root, params.db)  # the Parquet store, or the database --db
        universe = resolve_universe(source.catalog(), params.symbols)
        plan = make_plan(params.to_config(), universe)
        specs = plan_chunks(plan, universe, source.data_fingerprint, params.chunk_size, workers)
    except BacktestError as exc:
        # Bad input (windows longer than the data, unknown symbols...): a clean Failed state, no traceback.
        logger.info("the study cannot start: %s", exc)
        return Failed(message=f"{type(exc).__name__}: {exc}")
    dirs = cache_dirs(store)
    watch.plan(specs, dirs["results"])
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
    phases["plan"] = time.perf_counter() - t
    t = time.perf_counter()

    chunk_task = backtest_chunk.with_options(
        cache_policy=chunk_cache_policy(dirs["records"], dirs["locks"]), result_storage=dirs["results"]
    )
    watch.start_progress()
    outcomes: dict[str, dict[str, Any]] = {}
    keys = [spec.key for spec in specs]
    # merges each chunk's results as soon as it and the ones before it are there, as the core's merge does
    ahead = CollectAhead(
        plan,
        [s.name for s in specs],
        [dirs["results"] / k for k in keys],
        dirs["collected"],
        collected_key(keys),
        handoff=RESULTS,  # the results of chunks computed on this process's threads, without decoding them again
    )
    position = {spec.name: i for i, spec in enumerate(specs)}
    try:
        with make_task_runner(params.runner, workers, params.dask_address) as runner:
            prices = PriceSource(str(store.root), plan.last_date, str(dirs["prices"]), params.db)
            futures = [runner.submit(chunk_task, {"job": ChunkJob(spec, plan, prices)}) for spec in specs]
            by_future = dict(zip((f.task_run_id for f in futures), specs, strict=True))
            for future in as_completed(futures):
                spec = by_future[future.task_run_id]
                try:
                    future.wait()
                    state = future.state
                except Exception as exc:
                    # The process computing it died (SIGKILL, out of memory): it failed, the others go on.
                    state = Failed(message=f"its worker process died ({type(exc).__name__}: {exc})")
                outcome = {
                    "chunk": spec.name,
                    "symbols": len(spec.symbols),
                    "state": state.name,
                    "key": spec.key,
                }
                if state.is_completed():
                    ahead.ready(position[spec.name])
                    logger.info(
                        "%s: %s", spec.describe(), "cache hit" if state.name == "Cached" else "computed"
                    )
                else:
                    ahead.abandon()
                    outcome["error"] = _error_text(state)
                    logger.error("%s failed: %s", spec.describe(), outcome["error"])
                outcomes[spec.name] = outcome
                watch.chunk_finished(spec.name, state)
            del futures, future, state
    finally:
        if len(outcomes) < len(specs):
            ahead.abandon()  # the loop did not finish: nothing more will be ready
        collected_ahead = ahead.wait()
    phases["backtest"] = time.perf_counter() - t
    watch.backtest_done()
    t = time.perf_counter()

    failed = [o for o in outcomes.values() if "error" in o]
    hits = sum(o["state"] == "Cached" for o in outcomes.values())
    summary: dict[str, Any] = {
        "flow_run_id": run_id,
        "state": "Failed" if failed else "Completed",
        "config": params.public_dump(),
        "counts": {
            "symbols": len(universe.symbols),
            "chunks": len(specs),
            "folds": len(plan.folds),
            "combinations": len(plan.combos),
            "bars": estimate_bars(universe.first, universe.last),  # a chunk's width, as the chunk size saw it
            "bars_x_combinations": universe.rows * len(plan.combos),
        },
        "folds": [f.to_dict() for f in plan.folds],
        "cache": {
            "hits": hits,
            "misses": len(specs) - hits - len(failed),
            "failed": len(failed),
            "prices_fetched": watch.prices_fetched(),  # computed chunks whose price file was made in this run
        },
        "failed_chunks": [{"chunk": o["chunk"], "error": o["error"]} for o in failed],
        "out": str(out),
    }
    if not failed:
        # quoted: Prefect would walk every symbol of every chunk twice to look for futures (about 50 ms for W)
        collected = collect_results(
            quote(plan), quote(specs), str(dirs["results"]), str(out), str(dirs["collected"])
        )
        # a cache entry made by ``ahead`` during this run is this run's collect, not a reused one
        summary["cache"]["collect_reused"] = collected["reused"] and not collected_ahead
        summary["collected_key"] = collected["key"]
        summary["figures"] = collected["figures"]
        summary["chunk_seconds"] = wall_timings(collected["timings"])
        rows = [{**row, "state": outcomes[row["chunk"]]["state"]} for row in collected["chunks"]]
        watch.post("the chunk table", lambda: artifacts.chunk_table(rows))
    phases["collect"] = time.perf_counter() - t
    t = time.perf_counter()

    keep = [s.key for s in specs]
    pruned = prune_cache(
        str(dirs["results"]),
        str(dirs["records"]),
        str(dirs["prices"]),
        int(params.cache_max_gb * 1e9),
        params.cache_max_age_days * 86400.0,
        keep,
        str(dirs["collected"]),
    )
    summary["cache"]["pruned"] = pruned.to_dict()
    phases["prune"] = time.perf_counter() - t
    if params.persist:  # the run and its results into the database, then light maintenance
        t = time.perf_counter()
        summary["wall_seconds"] = t - t_start
        summary["db"] = record_run(
            params.results_db(), params.db or str(store.root), run_id, params.public_dump(),
            specs, outcomes, str(dirs["results"]), out, summary, db_mark, params.persist_oos,
            summary.get("collected_key"),
        )  # fmt: skip
        phases["db"] = time.perf_counter() - t
    summary["phase_seconds"] = phases
    summary["wall_seconds"] = time.perf_counter() - t_start
    watch.finish(summary, phases, summary["wall_seconds"], out, workers, params.runner)
    summary["report"] = str(out / REPORT_FILE) if params.report else None
    write_json(out / "summary.json", summary)
    text = artifacts.summary_text(summary)  # now: the summary dict changes after this point
    watch.post("the summary", lambda: artifacts.summary_markdown(text))
    if params.report:
        results_cache = (
            str(dirs["collected"] / summary["collected_key"]) if "collected_key" in summary else None
        )
        report = publish_report(str(out), results_cache, return_state=True)
        if report.is_failed():
            logger.error("the report could not be built: %s", _error_text(report))

    if failed:
        names = ", ".join(o["chunk"] for o in failed)
        return Failed(
            message=f"{len(failed)} of {len(specs)} chunks failed ({names}); the others are persisted. "
            "Re-run the same study (or retry this flow run) to recompute only the failed chunks.",
            # no data: Prefect reads a Failed state's data as its exception; the summary is in summary.json
        )
    return Completed(message=f"{len(specs)} chunks ({hits} from cache)", data=summary)


def _error_text(state: Any) -> str:
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, BaseException):
        return f"{type(exc).__name__}: {exc}"
    return state.message or "failed"
