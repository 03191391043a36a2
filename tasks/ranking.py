"""The cross-sectional study's tasks: a chunk's scores, a block's portfolios (a few lines over the core).

Their results are files named by content keys (backtest.ranking.files): a task whose file is already there
and whole returns at once, reporting ``cached``; a failed chunk or block is the only one recomputed on a
re-run. Prefect's own result cache is not used: the return values are a path and a flag.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff

from backtest.data.panel import PricePanel
from backtest.data.panelio import prices_file
from backtest.engine.planning import ChunkSpec
from backtest.observe.profiling import Measured, add_task_figures, measure, wall_timings
from backtest.ranking.files import ChunkCloses, MarketLoader, collect_study, cut, save_scores, whole
from backtest.ranking.study import RankingPlan, chunk_scores, form_block
from tasks.chunks import PriceSource, retry_transient


class ScoreJob:
    """One chunk's score computation: plain (Prefect does not walk it), read-only, picklable."""

    __slots__ = ("path", "plan", "source", "spec")

    def __init__(self, spec: ChunkSpec, plan: RankingPlan, source: PriceSource, path: str) -> None:
        self.spec, self.plan, self.source, self.path = spec, plan, source, path

    @property
    def index(self) -> int:
        return self.spec.index

    def __repr__(self) -> str:
        return f"ScoreJob({self.spec.describe()})"


class BlockJob:
    """One block of combinations' portfolios over the whole universe."""

    __slots__ = ("combos", "index", "membership", "path", "plan", "score_files", "source", "specs")

    def __init__(
        self,
        index: int,
        combos: list[int],
        plan: RankingPlan,
        specs: list[ChunkSpec],
        score_files: list[str],
        source: PriceSource,
        membership: Any,
        path: str,
    ) -> None:
        self.index, self.combos, self.plan, self.specs = index, combos, plan, specs
        self.score_files, self.source, self.membership, self.path = score_files, source, membership, path

    def __repr__(self) -> str:
        return f"BlockJob({self.index}: {len(self.combos)} combinations)"


_TASK_OPTIONS: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_condition_fn": retry_transient,
    "cache_policy": NO_CACHE,
    "persist_result": False,
}


_MARKET_LOCK = threading.Lock()
_MARKET: dict[tuple[str, ...], MarketLoader] = {}


def shared_market(job: BlockJob) -> MarketLoader:
    """The whole market for a block, built once per process and shared by the blocks on its threads.

    A market is the whole universe's closes (160 MB for 4,000 symbols x 20 years, twice that with the opens
    of next_open fills): two worker threads building one each would double the run's peak. The other blocks
    wait for the first to build it.
    """
    key = (*(s.key for s in job.specs), job.plan.last_date.isoformat(), repr(job.plan.universe_digest))
    with _MARKET_LOCK:
        if key not in _MARKET:
            _MARKET.clear()  # one market at a time: the previous run's is let go
            last = np.datetime64(job.plan.last_date, "D")
            opens = job.plan.config.execution == "next_open"
            readers = [ChunkReader(job.source, spec, last, opens) for spec in job.specs]
            _MARKET[key] = MarketLoader(readers, [Path(p) for p in job.score_files], job.membership, opens)
        return _MARKET[key]


class ChunkReader:
    """A chunk's closes from its price file (written by its score task), or its whole panel when that is
    gone (fetched once, then kept for the market's second reading)."""

    def __init__(self, source: PriceSource, spec: ChunkSpec, last: np.datetime64, opens: bool) -> None:
        self.source, self.spec, self.last, self.opens = source, spec, last, opens
        self._fetched: PricePanel | None = None

    def __call__(self) -> ChunkCloses | PricePanel:
        if self._fetched is not None:
            return self._fetched
        path = prices_file(Path(self.source.cache_dir), self.spec.data_fingerprint, self.source.last)
        try:
            return ChunkCloses.read(path, self.last, self.opens)
        except FileNotFoundError:
            panel, written = self.source.load(self.spec)
            if written is not None:
                written.result()
            self._fetched = cut(panel, self.last)
            return self._fetched


def release_market() -> None:
    """Let the shared market go (the flow calls it once every block has run)."""
    with _MARKET_LOCK:
        _MARKET.clear()


@task(name="score-chunk", task_run_name="scores-{job.index:04d}", **_TASK_OPTIONS)
def score_chunk(job: ScoreJob) -> dict[str, Any]:
    """The chunk's scores for every score combination, as one float32 file (symbols x the chunk's days).
    Returns its path, whether it was already there, and the task's timings (backtest.observe.profiling)."""
    path = Path(job.path)
    if whole(path):
        return {"path": str(path), "cached": True, "timings": None}
    with measure() as total:
        with measure() as load:
            panel, price_file = job.source.load(job.spec)
            panel = cut(panel, np.datetime64(job.plan.last_date, "D"))
        with measure() as scored:
            save_scores(chunk_scores(job.plan, panel), path)
        with measure() as written:
            if price_file is not None:
                price_file.result()  # on disk before the chunk counts as done: the blocks read it
    fetched = price_file is not None
    timings = {
        "fetch": load.wall + written.wall if fetched else 0.0,
        "load": 0.0 if fetched else load.wall,
        "scores": scored.wall,
    }
    return _done(path, timings, load, total, fetched)


@task(name="form-portfolios", task_run_name="portfolios-{job.index:02d}", **_TASK_OPTIONS)
def form_portfolios(job: BlockJob) -> dict[str, Any]:
    """Every combination of the block simulated over the whole universe (docs/cross_sectional.md)."""
    path = Path(job.path)
    if whole(path):
        return {"path": str(path), "cached": True, "timings": None}
    with measure() as total:
        with measure() as load:
            loader = shared_market(job)  # built by the first block of the process, the others wait for it
        with measure() as formed:
            block = form_block(job.plan, loader.market, loader.pieces, job.combos)
            block.save(path)
    return _done(path, {"load": load.wall, "portfolios": formed.wall}, load, total, False)


def _done(
    path: Path, timings: dict[str, float], load: Measured, total: Measured, fetched: bool
) -> dict[str, Any]:
    add_task_figures(timings, load, total, TaskRunContext.get().task_run.run_count, fetched)
    get_run_logger().info(
        "%s written in %.2f s, CPU %.2f s (%s)",
        path.name,
        total.wall,
        total.cpu,
        ", ".join(f"{k} {v:.2f} s" for k, v in wall_timings(timings).items()),
    )
    return {"path": str(path), "cached": False, "timings": timings}


@task(name="collect-study", persist_result=False)
def collect_ranking(
    plan: RankingPlan, symbols: list[str], block_files: list[str], out: str, cache: str, key: str
) -> dict[str, Any]:
    """Phases 1-3 on the blocks' portfolios, the study's tables in ``out`` (linked from the cache on a re-run
    with the same blocks)."""
    done = collect_study(plan, symbols, [Path(p) for p in block_files], Path(out), Path(cache), key)
    return {"figures": done.figures, "reused": done.reused, "key": done.key, "timings": done.timings}
