"""Persisting computed chunks as the flow's persist step does, for the tests of what is read back."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from backtest.db.results import ChunkRecord, PersistReport, persist_run


def persist(
    url: str,
    chunks: Sequence[ChunkRecord],
    flow_run_id: str = "flow-1",
    include_oos: bool = True,
    state: str = "Completed",
    summary: dict | None = None,
) -> PersistReport:
    return persist_run(
        url,
        flow_run_id=flow_run_id,
        strategy="sma_crossover",
        config={"strategy": "sma_crossover", "grid": {"fast": [5, 10]}},
        price_source="test",
        started_at=dt.datetime.now(dt.UTC),
        chunks=chunks,
        state=state,
        summary=summary or {"state": state, "wall_seconds": 1.5, "nan": float("nan")},
        include_oos=include_oos,
    )
