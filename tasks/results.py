"""Tasks of the collect step: merge persisted chunk results into the study's outputs, and prune the cache."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from prefect import task

from backtest.engine.planning import ChunkSpec
from backtest.engine.study import ChunkResult, StudyPlan
from backtest.results.cache import CacheLayout, CacheLimits, PruneReport, prune
from backtest.results.outputs import collect_cached, prune_collected, read_chunks


@task(name="collect-results", persist_result=False)
def collect_results(
    plan: StudyPlan, specs: Sequence[ChunkSpec], cache: CacheLayout, out: str, key: str
) -> dict[str, Any]:
    """The merged tables in ``out``: linked from the cache when these exact chunks were merged before,
    otherwise each chunk's persisted result is read once, in universe order, and merged into the cache.
    ``key`` is the merged tables' cache key (``collected_key`` of the chunks' keys and the merge options)."""
    keys = [s.key for s in specs]

    def chunks() -> Iterator[tuple[str, ChunkResult]]:
        files = read_chunks(cache.result_file(key) for key in keys)
        yield from zip((s.name for s in specs), files, strict=True)

    done = collect_cached(plan, chunks(), Path(out), cache.collected, key)
    return {
        "figures": done.figures,
        "chunks": done.chunks,
        "timings": done.timings,
        "reused": done.reused,
        "key": done.key,
    }


@task(name="prune-cache", persist_result=False)
def prune_cache(cache: CacheLayout, limits: CacheLimits, keep: Sequence[str], merged: str) -> PruneReport:
    """Keep the cache under its size limit and expiry (the current run's entries are kept: its chunks or its
    score and portfolio files ``keep``, and its merged tables ``merged``).

    The merged tables share the size limit: they get what the chunk results and price files leave.
    """
    report = prune(
        cache.results,
        cache.records,
        limits.max_bytes,
        limits.max_age_seconds,
        frozenset(keep),
        extra=(cache.prices, cache.ranking),
    )
    left = max(0, limits.max_bytes - report.bytes_after)
    prune_collected(cache.collected, merged, left, limits.max_age_seconds)
    return report
