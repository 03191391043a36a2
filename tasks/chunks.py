"""The chunk task of the study: load/cache and backtest one chunk, a few lines over the core."""

from __future__ import annotations

import datetime as dt
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff

from backtest.data.panel import PricePanel
from backtest.data.panelio import chunk_prices
from backtest.db.prices import open_price_source
from backtest.engine.planning import ChunkSpec
from backtest.engine.study import StudyPlan, run_chunk
from backtest.observe.profiling import add_task_figures, measure, wall_timings
from backtest.results import handoff
from backtest.results.chunkio import oos_rows
from tasks.caching import ChunkResultSerializer, StoredChunk

#: errors that can pass on a second try (a busy disk, a dropped connection, a worker short of memory);
#: anything else is a data or code error that would fail again, so it is not retried
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (OSError, TimeoutError, ConnectionError, MemoryError)


def is_transient(exc: BaseException | None) -> bool:
    """A transient error, raised directly or as the cause of another (a strategy's I/O failure, say)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, TRANSIENT_ERRORS) and not isinstance(exc, FileNotFoundError | PermissionError):
            return True
        exc, seen = exc.__cause__, seen + 1
    return False


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's ``retry_condition_fn``: retry only transient errors."""
    exc = state.result(raise_on_failure=False)
    return is_transient(exc if isinstance(exc, BaseException) else None)


@dataclass(frozen=True)
class PriceSource:
    """Where a chunk task finds its prices: the chunk's cached price file, fetched from the store (or the
    database ``db``) when it is missing. Small and picklable, so process and Dask workers get it as it is."""

    store_root: str
    last: dt.date
    cache_dir: str
    db: str | None = None
    #: a later stage of the run reads the price files it writes (``write_panel``'s ``read_soon``)
    read_soon: bool = False

    def load(self, spec: ChunkSpec) -> tuple[PricePanel, Future[Path] | None]:
        """The chunk's prices, and when they had to be fetched from the source (no price file yet), the write
        of their file, going on while the chunk computes."""
        return chunk_prices(
            open_price_source(self.store_root, self.db),
            spec.symbols,
            spec.data_fingerprint,
            self.last,
            Path(self.cache_dir),
            self.read_soon,
        )


class ChunkJob:
    """What one chunk task computes: the chunk, the study's plan, and where its prices are.

    A plain object on purpose: Prefect walks the dataclasses, tuples and dicts among a task's arguments element
    by element, twice per task run, looking for futures: for a chunk's spec of hundreds of symbols and for the
    plan, a noticeable share of what a warm run's cache hits cost. An object of its own class is taken as one
    value. (Prefect's ``quote`` does that too, but prefect-dask hands the task the wrapper itself.) Read-only,
    and picklable as it is for process and Dask workers.
    """

    __slots__ = ("plan", "source", "spec")

    def __init__(self, spec: ChunkSpec, plan: StudyPlan, source: PriceSource) -> None:
        object.__setattr__(self, "spec", spec)
        object.__setattr__(self, "plan", plan)
        object.__setattr__(self, "source", source)

    spec: ChunkSpec
    plan: StudyPlan
    source: PriceSource

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"a ChunkJob is read-only ({name})")

    def __reduce__(self) -> tuple[type[ChunkJob], tuple[ChunkSpec, StudyPlan, PriceSource]]:
        return (ChunkJob, (self.spec, self.plan, self.source))

    @property
    def index(self) -> int:
        """The chunk's position in the universe (the task run is named after it)."""
        return self.spec.index

    def __repr__(self) -> str:
        return f"ChunkJob({self.spec.describe()})"


@task(
    name="backtest-chunk",
    task_run_name="backtest-{job.index:04d}",
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_condition_fn=retry_transient,
    persist_result=True,
    cache_result_in_memory=False,
    result_serializer=ChunkResultSerializer(),
)
def backtest_chunk(job: ChunkJob) -> StoredChunk:
    """The load/cache step and all three phases for one chunk; the result is persisted as Parquet (the cache).

    One task per chunk, not a load task and a backtest task: every task run costs CPU between the engine and
    the server (separate load tasks made the chunk step of a run of small chunks measurably longer), and
    loading is part of the chunk's work, retried with it. The prices come from the chunk's cached price file,
    read memory-mapped (``load`` in the timings), or, when it is missing, from the source, and the file is
    written for the next run (``fetch``, with ``fetched`` 1.0). The timings also carry the task's CPU time and
    attempt number (backtest.observe.profiling).
    """
    spec, plan = job.spec, job.plan
    with measure() as total:
        with measure() as load:
            prices, price_file = job.source.load(spec)
            panel = [prices]  # handed over below, not kept in this frame
            del prices
        result = run_chunk(panel.pop(), plan)  # no reference kept here: run_chunk frees the prices early
        with measure() as written:
            if price_file is not None:
                price_file.result()  # on disk before the chunk counts as done; raises what the write raised
    fetched = price_file is not None
    timings = result.timings
    timings["fetch"] = load.wall + written.wall if fetched else 0.0
    timings["load"] = timings.get("load", 0.0) + (0.0 if fetched else load.wall)
    add_task_figures(timings, load, total, TaskRunContext.get().task_run.run_count, fetched)
    get_run_logger().info(
        "%s: %d symbols computed in %.2f s, CPU %.2f s (%s)",
        spec.name,
        len(spec.symbols),
        total.wall,
        total.cpu,
        ", ".join(f"{k} {v:.2f} s" for k, v in wall_timings(timings).items()),
    )
    rows = oos_rows(result)
    # small: Prefect keeps it in the task's state until the flow ends
    stored = StoredChunk.encode(result, rows)
    # for the flow's merge, when it runs in this process (backtest.results.handoff); through the module: a process pool
    # pickles this function by value, and the handoff itself (a lock) cannot be pickled
    handoff.RESULTS.offer(spec.key, replace(result, oos_returns=rows))
    return stored
