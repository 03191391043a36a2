"""The ingest task: one call of the core's ``ingest_folder``, returning a small summary, never the data."""

from __future__ import annotations

from prefect import task
from pydantic import BaseModel, ConfigDict

from backtest.data.ingest import ingest_folder
from backtest.data.store import Store
from tasks.chunks import retry_transient

#: problems carried in the summary; the complete list stays in the store's rejects folder
MAX_PROBLEMS = 50


class IngestSummary(BaseModel):
    """What an ingest run achieved, small enough to pass between tasks and into an artifact."""

    model_config = ConfigDict(frozen=True)

    source: str
    store: str
    ok: bool
    elapsed_s: float
    totals: dict[str, int]
    problems: list[dict[str, str | int | None]]


@task(
    name="ingest-folder",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_transient,
    persist_result=False,
)
def ingest_prices_task(source: str, store: str, workers: int | None = None) -> IngestSummary:
    """Validate ``source`` into ``store``; a busy disk is retried, bad rows are reported by the core."""
    report = ingest_folder(source, Store(store), workers=workers)
    return IngestSummary(
        source=report.source,
        store=report.store,
        ok=report.ok,
        elapsed_s=round(report.elapsed_s, 3),
        totals=report.totals(),
        problems=[p.to_dict() for p in report.problems[:MAX_PROBLEMS]],
    )
