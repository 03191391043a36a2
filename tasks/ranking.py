"""The cross-sectional study's tasks: a chunk's scores, a block's portfolios (a few lines over the core).

Their results are files named by content keys (backtest.ranking.files): a task whose file is already there
and whole returns at once, reporting ``cached``; a failed chunk or block is the only one recomputed on a
re-run. Prefect's own result cache is not used: the return values are a path and a flag.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from backtest.engine.planning import ChunkSpec
from backtest.ranking.files import MarketLoader, cut, save_scores, whole
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


@task(name="score-chunk", task_run_name="scores-{job.index:04d}", **_TASK_OPTIONS)
def score_chunk(job: ScoreJob) -> dict[str, Any]:
    """The chunk's scores for every score combination, as one float32 file (symbols x the chunk's days)."""
    path = Path(job.path)
    if whole(path):
        return {"path": str(path), "cached": True, "seconds": 0.0}
    t = time.perf_counter()
    panel, price_file = job.source.load(job.spec)
    panel = cut(panel, np.datetime64(job.plan.last_date, "D"))
    save_scores(chunk_scores(job.plan, panel), path)
    if price_file is not None:
        price_file.result()
    return {"path": str(path), "cached": False, "seconds": time.perf_counter() - t}


@task(name="form-portfolios", task_run_name="portfolios-{job.index:02d}", **_TASK_OPTIONS)
def form_portfolios(job: BlockJob) -> dict[str, Any]:
    """Every combination of the block simulated over the whole universe (docs/cross_sectional.md)."""
    path = Path(job.path)
    if whole(path):
        return {"path": str(path), "cached": True, "seconds": 0.0}
    t = time.perf_counter()
    last = np.datetime64(job.plan.last_date, "D")
    panels = [cut(job.source.load(spec)[0], last) for spec in job.specs]
    loader = MarketLoader(panels, [Path(p) for p in job.score_files], job.membership)
    block = form_block(job.plan, loader.market, loader.scores, job.combos)
    block.save(path)
    return {"path": str(path), "cached": False, "seconds": time.perf_counter() - t}
