"""Tasks of the collect step: merge persisted chunk results into the study's outputs, and prune the cache."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import task

from backtest.cachedir import PruneReport, prune
from backtest.outputs import chunk_row, collect, read_chunks, study_figures
from backtest.planning import ChunkSpec
from backtest.study import StudyPlan


@task(name="collect-results", persist_result=False)
def collect_results(
    plan: StudyPlan, specs: Sequence[ChunkSpec], results_dir: str, out: str
) -> dict[str, Any]:
    """Read each chunk's persisted Parquet result once, in universe order, and write the merged tables."""
    rows: list[dict[str, Any]] = []

    def chunks():
        for spec, chunk in zip(specs, read_chunks(Path(results_dir) / s.key for s in specs), strict=True):
            rows.append(chunk_row(spec.name, chunk))
            yield chunk

    result = collect(plan, chunks(), Path(out))
    return {"figures": study_figures(result), "chunks": rows, "timings": result.timings}


@task(name="prune-cache", persist_result=False)
def prune_cache(
    results_dir: str,
    records_dir: str,
    prices_dir: str,
    max_bytes: int,
    max_age_seconds: float,
    keep: Sequence[str],
) -> PruneReport:
    """Keep the cache folders under their size limit and expiry (the current run's entries are kept)."""
    return prune(
        Path(results_dir),
        Path(records_dir),
        max_bytes,
        max_age_seconds,
        frozenset(keep),
        extra=(Path(prices_dir),),
    )
