"""What a study run reports about itself: each chunk's outcome and the run summary (``summary.json``).

Typed here so that the flow fills named fields step by step instead of growing a dict, and so that the
document's shape is written down once; ``to_dict`` gives the JSON the CLI, the report, the artifacts and
the database read. The run watch adds its measured figures (profile, peak memory, alerts) to that document.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

CACHED = "Cached"


@dataclass(frozen=True)
class ChunkOutcome:
    """How one chunk ended: its Prefect state's name, and the error when it failed."""

    chunk: str
    symbols: int
    state: str
    key: str
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None

    def to_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "chunk": self.chunk,
            "symbols": self.symbols,
            "state": self.state,
            "key": self.key,
        }
        if self.error is not None:
            row["error"] = self.error
        return row


@dataclass
class RunSummary:
    """The run's ``summary.json``, filled in by the flow's steps in order: plan, chunks, collect, prune,
    persist. Fields a step did not reach (a failed chunk skips the collect) stay out of the document."""

    flow_run_id: str
    config: dict[str, Any]
    counts: dict[str, int]
    folds: list[dict[str, Any]]
    out: str
    outcomes: list[ChunkOutcome] = field(default_factory=list)
    prices_fetched: int = 0
    collect_reused: bool | None = None
    collected_key: str | None = None
    figures: dict[str, Any] | None = None
    chunk_seconds: dict[str, float] | None = None
    pruned: dict[str, int] | None = None
    db: dict[str, Any] | None = None
    phase_seconds: dict[str, float] = field(default_factory=dict)
    wall_seconds: float | None = None

    @property
    def failed(self) -> list[ChunkOutcome]:
        return [o for o in self.outcomes if o.failed]

    @property
    def hits(self) -> int:
        return sum(o.state == CACHED for o in self.outcomes)

    @property
    def state(self) -> str:
        return "Failed" if self.failed else "Completed"

    def to_dict(self) -> dict[str, Any]:
        failed = self.failed
        cache: dict[str, Any] = {
            "hits": self.hits,
            "misses": self.counts["chunks"] - self.hits - len(failed),
            "failed": len(failed),
            "prices_fetched": self.prices_fetched,  # computed chunks whose price file was made in this run
        }
        if self.collect_reused is not None:
            cache["collect_reused"] = self.collect_reused
        if self.pruned is not None:
            cache["pruned"] = self.pruned
        doc: dict[str, Any] = {
            "flow_run_id": self.flow_run_id,
            "state": self.state,
            "config": self.config,
            "counts": self.counts,
            "folds": self.folds,
            "cache": cache,
            "failed_chunks": [{"chunk": o.chunk, "error": o.error} for o in failed],
            "out": self.out,
        }
        optional = {
            "collected_key": self.collected_key,
            "figures": self.figures,
            "chunk_seconds": self.chunk_seconds,
            "db": self.db,
        }
        doc.update({k: v for k, v in optional.items() if v is not None})
        doc["phase_seconds"] = dict(self.phase_seconds)
        if self.wall_seconds is not None:
            doc["wall_seconds"] = self.wall_seconds
        return doc


class PhaseClock:
    """Wall seconds of a run's named steps, and of the whole run since the clock was made."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.phases: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = time.perf_counter() - t

    def elapsed(self) -> float:
        return time.perf_counter() - self.started
