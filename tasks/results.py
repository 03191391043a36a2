"""Tasks of the collect step: merge persisted chunk results into the study's outputs, and prune the cache."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from prefect import task

from backtest.engine.planning import ChunkSpec
from backtest.engine.study import ChunkResult, StudyPlan
from backtest.results.cache import PruneReport, prune
from backtest.results.outputs import collect_cached, collected_key, prune_collected, read_chunks


@task(name="collect-results", persist_result=False)
def collect_results(
    plan: StudyPlan,
    specs: Sequence[ChunkSpec],
    results_dir: str,
    out: str,
    collected_dir: str | None = None,
) -> dict[str, Any]:
    """The merged tables in ``out``: linked from the cache when these exact chunks were merged before,
    otherwise each chunk's persisted result is read once, in universe order, and merged into the cache."""
    keys = [s.key for s in specs]
    cache = Path(collected_dir) if collected_dir else Path(results_dir).parent / "collected"

    def chunks() -> Iterator[tuple[str, ChunkResult]]:
        files = read_chunks(Path(results_dir) / key for key in keys)
        yield from zip((s.name for s in specs), files, strict=True)

    done = collect_cached(plan, chunks(), Path(out), cache, collected_key(keys))
    return {
        "figures": done.figures,
        "chunks": done.chunks,
        "timings": done.timings,
        "reused": done.reused,
        "key": done.key,
    }


@task(name="prune-cache", persist_result=False)
def prune_cache(
    results_dir: str,
    records_dir: str,
    prices_dir: str,
    max_bytes: int,
    max_age_seconds: float,
    keep: Sequence[str],
    collected_dir: str | None = None,
) -> PruneReport:
    """Keep the cache folders under their size limit and expiry (the current run's entries are kept).

    The merged tables (``collected_dir``) share the size limit: they get what the chunk results leave.
    """
    report = prune(
        Path(results_dir),
        Path(records_dir),
        max_bytes,
        max_age_seconds,
        frozenset(keep),
        extra=(Path(prices_dir),),
    )
    cache = Path(collected_dir) if collected_dir else Path(results_dir).parent / "collected"
    prune_collected(cache, collected_key(list(keep)), max(0, max_bytes - report.bytes_after), max_age_seconds)
    return report
