"""The cross-sectional study inside the study flow: scores per symbol chunk, portfolios per block of
combinations, then the walk-forward (docs/cross_sectional.md). ``three_phase_study`` runs this when the
strategy is a ranking one, so the command line, deployments and the UI form are the same for both kinds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.context import get_run_context
from prefect.futures import as_completed
from prefect.states import Completed, Failed, State
from prefect.utilities.annotations import quote

from backtest.atomic import write_json
from backtest.data.store import Store
from backtest.db.prices import open_price_source
from backtest.engine.planning import ChunkSpec, Universe, plan_chunks, resolve_universe
from backtest.errors import BacktestError
from backtest.observe.profiling import RANKING_PHASES, REPORT_FILE
from backtest.observe.report import RANKING_PLOT_TITLES
from backtest.ranking.files import block_key, ranking_code, score_key
from backtest.ranking.study import KIND, RankingPlan, blocks_of
from backtest.ranking.universe import members_without_prices, read_universe, universe_digest
from backtest.results.cache import CacheLayout, CacheLimits
from backtest.results.outputs import collected_key
from backtest.results.summary import CACHED, ChunkOutcome, PhaseClock, RunSummary
from flows.monitoring import RunWatch
from flows.params import StudyParams
from tasks import artifacts
from tasks.chunks import PriceSource
from tasks.db import mark_queries, record_ranking_run
from tasks.ranking import BlockJob, ScoreJob, collect_ranking, form_portfolios, release_market, score_chunk
from tasks.report import must_draw, preload_report, publish_report
from tasks.results import prune_cache

#: blocks of combinations per worker: enough for balance, few enough that each reads a score array once
BLOCKS_PER_WORKER = 2


@dataclass(frozen=True, eq=False)
class RankingRun:
    run_id: str
    store: Store
    universe: Universe
    plan: RankingPlan
    specs: list[ChunkSpec]  # keys: the chunks' score keys
    membership: Any
    cache: CacheLayout
    out: Path
    workers: int

    @property
    def score_files(self) -> list[str]:
        return [str(self.cache.ranking / f"{s.key}.npy") for s in self.specs]

    def blocks(self, source: PriceSource) -> list[BlockJob]:
        """The blocks of combinations, each named by what decides its portfolios (its file is its cache)."""
        code = ranking_code()
        keys = [s.key for s in self.specs]
        groups = blocks_of(self.plan, BLOCKS_PER_WORKER * self.workers)
        return [
            BlockJob(
                i,
                combos,
                self.plan,
                self.specs,
                self.score_files,
                source,
                self.membership,
                str(self.cache.ranking / f"{block_key(self.plan, keys, combos, code)}.npz"),
            )
            for i, combos in enumerate(groups)
        ]


def plan_ranking(params: StudyParams) -> RankingRun | State:
    """The universe, the plan, the chunks and their score keys; or a Failed state saying why not."""
    logger = get_run_logger()
    store = Store(params.store)
    workers = params.worker_count()
    try:
        source = open_price_source(store.root, params.db)
        universe = resolve_universe(source.catalog(), params.symbols)
        membership = read_universe(params.universe) if params.universe else None
        digest = universe_digest(membership) if membership is not None else None
        plan = RankingPlan.create(
            params.to_config(), params.construction(), universe.first, universe.last, digest
        )
        specs = plan_chunks(plan, universe, source.data_fingerprint, params.chunk_size, workers)  # type: ignore[arg-type]
    except BacktestError as exc:
        logger.info("the study cannot start: %s", exc)
        return Failed(message=f"{type(exc).__name__}: {exc}")
    if membership is not None:
        absent = members_without_prices(membership, universe.symbols)
        if absent:
            logger.warning(
                "%d members of %s have no prices in the store: %s",
                len(absent),
                params.universe,
                ", ".join(absent[:20]),
            )
    code = ranking_code()
    specs = [
        ChunkSpec(
            s.index, s.symbols, s.data_fingerprint, score_key(plan, s.symbols, s.data_fingerprint, code)
        )
        for s in specs
    ]
    run_id = str(get_run_context().flow_run.id)
    out = Path(params.out) if params.out else store.root / "runs" / run_id
    cache = CacheLayout.of_store(store.root)
    cache.ranking.mkdir(parents=True, exist_ok=True)
    logger.info(
        "cross-sectional: %d symbols from %s to %s, %d folds x %d combinations (%d scores), %d chunks",
        len(universe.symbols),
        universe.first,
        universe.last,
        len(plan.folds),
        len(plan.combos),
        len(plan.score_combos),
        len(specs),
    )
    return RankingRun(run_id, store, universe, plan, specs, membership, cache, out, workers)


@dataclass(frozen=True)
class BlockSpec(ChunkSpec):
    """A block of combinations as the run watch sees a task: no symbols of its own, keyed by its file."""

    @property
    def name(self) -> str:
        return f"block-{self.index:02d}"

    def describe(self) -> str:
        return self.name


def _watched(run: RankingRun, blocks: list[BlockJob]) -> list[ChunkSpec]:
    """The run's tasks as the run watch sees them: every score chunk, then every block, each keyed by its
    file."""
    scores = [ChunkSpec(s.index, s.symbols, s.data_fingerprint, f"{s.key}.npy") for s in run.specs]
    return scores + [BlockSpec(b.index, (), "", Path(b.path).name) for b in blocks]


def run_cross_sectional(params: StudyParams, watch: RunWatch, runner_factory: Any) -> Any:
    """Plan, scores per chunk, portfolios per block, the walk-forward, prune, persist, report."""
    clock = PhaseClock()
    db_mark = mark_queries()
    with clock.phase("plan"):
        run = plan_ranking(params)
    if not isinstance(run, RankingRun):
        return run  # a clean Failed state: the input cannot make a study
    # the blocks read the price files the score tasks write: through the page cache, not around it
    source = PriceSource(
        str(run.store.root), run.plan.last_date, str(run.cache.prices), params.db, read_soon=True
    )
    blocks = run.blocks(source)
    watched = _watched(run, blocks)
    watch.plan(watched, run.cache.ranking, RANKING_PHASES, footers=False)
    key = collected_key([Path(b.path).name for b in blocks], run.plan.config.merge_digest())
    if params.report and must_draw(run.cache.collected / key, RANKING_PLOT_TITLES):
        preload_report()  # matplotlib's import overlaps the run instead of delaying the report
    summary = _summary(params, run, len(blocks))
    with clock.phase("backtest"):
        watch.start_progress()
        submit(run, source, blocks, watched, watch, summary, runner_factory)
    watch.backtest_done()
    if not summary.failed:
        with clock.phase("collect"):
            collect(run, blocks, key, summary)
    with clock.phase("prune"):
        limits = CacheLimits(int(params.cache_max_gb * 1e9), params.cache_max_age_days * 86400.0)
        summary.pruned = prune_cache(run.cache, limits, [w.key for w in watched], key).to_dict()
    if params.persist:  # the run and its results into the database, then light maintenance
        with clock.phase("db"):
            summary.wall_seconds = clock.elapsed()
            summary.db = record_ranking_run(
                params.results_db(), params.db or str(run.store.root), _doc(summary), db_mark
            )
    summary.phase_seconds = clock.phases
    summary.wall_seconds = clock.elapsed()
    doc = report(params, run, watch, summary, key)
    if summary.failed:
        names = ", ".join(o.chunk for o in summary.failed)
        return Failed(
            message=f"{len(summary.failed)} of {len(watched)} tasks failed ({names}); the others are kept. "
            "Re-run the same study (or retry this flow run) to recompute only them."
        )
    return Completed(message=f"{len(watched)} tasks ({summary.hits} from cache)", data=doc)


def _summary(params: StudyParams, run: RankingRun, blocks: int) -> RunSummary:
    return RunSummary(
        flow_run_id=run.run_id,
        config=params.public_dump(),
        counts={
            "symbols": len(run.universe.symbols),
            "chunks": len(run.specs) + blocks,  # the cache's hits and misses count both kinds of task
            "score_chunks": len(run.specs),
            "blocks": blocks,
            "folds": len(run.plan.folds),
            "combinations": len(run.plan.combos),
            "bars": 0,
            "bars_x_combinations": run.universe.rows * len(run.plan.combos),
        },
        folds=[f.to_dict() for f in run.plan.folds],
        out=str(run.out),
    )


def _doc(summary: RunSummary) -> dict[str, Any]:
    doc = summary.to_dict()
    doc["kind"] = KIND
    return doc


def submit(
    run: RankingRun,
    source: PriceSource,
    blocks: list[BlockJob],
    watched: list[ChunkSpec],
    watch: RunWatch,
    summary: RunSummary,
    runner_factory: Any,
) -> None:
    """Every chunk's scores (a cache hit when its file is there), then every block's portfolios."""
    logger = get_run_logger()
    with runner_factory() as runner:
        jobs = [ScoreJob(s, run.plan, source, p) for s, p in zip(run.specs, run.score_files, strict=True)]
        _wait(runner, score_chunk, jobs, [w.name for w in watched[: len(jobs)]], summary, watch, logger)
        if summary.failed:
            return  # the portfolios need every chunk's scores
        try:
            _wait(
                runner,
                form_portfolios,
                blocks,
                [w.name for w in watched[len(jobs) :]],
                summary,
                watch,
                logger,
            )
        finally:
            release_market()


def collect(run: RankingRun, blocks: list[BlockJob], key: str, summary: RunSummary) -> None:
    """The walk-forward on the blocks' portfolios: the study's tables in ``out`` (reused from the cache)."""
    collected = collect_ranking(
        quote(run.plan),
        quote(list(run.universe.symbols)),
        [b.path for b in blocks],
        str(run.out),
        str(run.cache.collected),
        key,
    )
    summary.figures = collected["figures"]
    summary.collect_reused = collected["reused"]
    summary.collected_key = key


def report(
    params: StudyParams, run: RankingRun, watch: RunWatch, summary: RunSummary, key: str
) -> dict[str, Any]:
    """Profile, summary.json, the summary artifact and (when asked) the HTML report; returns the summary."""
    doc = _doc(summary)
    watch.finish(doc, summary.phase_seconds, doc["wall_seconds"], run.out, run.workers, params.runner)
    doc["report"] = str(run.out / REPORT_FILE) if params.report and not summary.failed else None
    write_json(run.out / "summary.json", doc)
    text = artifacts.summary_text(doc)
    watch.post("the summary", lambda: artifacts.summary_markdown(text))
    if doc["report"]:
        built = publish_report(str(run.out), str(run.cache.collected / key), return_state=True)
        if built.is_failed():
            get_run_logger().error("the report could not be built: %s", built.message)
    return doc


def _wait(
    runner: Any,
    task: Any,
    jobs: list[Any],
    names: list[str],
    summary: RunSummary,
    watch: RunWatch,
    logger: Any,
) -> None:
    """Submit every job, note each outcome as it ends (a failure does not stop the others)."""
    futures = [runner.submit(task, {"job": job}) for job in jobs]
    by_id = {f.task_run_id: (n, j) for f, n, j in zip(futures, names, jobs, strict=True)}
    for future in as_completed(futures):
        name, job = by_id[future.task_run_id]
        value: dict[str, Any] = {}
        try:
            value = future.result(raise_on_failure=True)
            state_name, error = (CACHED if value["cached"] else "Completed"), None
        except Exception as exc:
            state_name, error = "Failed", f"{type(exc).__name__}: {exc}"
            logger.error("%s failed: %s", name, error)
        size = len(job.spec.symbols) if isinstance(job, ScoreJob) else len(job.combos)
        summary.outcomes.append(ChunkOutcome(name, size, state_name, "", error))
        watch.chunk_finished(name, future.state, value.get("timings"), cached=bool(value.get("cached")))
