"""Tasks of the study's load/cache and backtest steps: a few lines each over the core."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff

from backtest.db.prices import open_price_source
from backtest.panelio import read_panel, write_panel
from backtest.planning import ChunkSpec
from backtest.profiling import add_task_figures, measure, wall_timings
from backtest.study import StudyPlan, run_chunk
from tasks.locks import ProcessLockManager
from tasks.records import ChunkRecordStorage
from tasks.serializers import ChunkResultSerializer, StoredChunk

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


def _chunk_key(context: Any, parameters: dict[str, Any]) -> str:
    return parameters["spec"].key


def chunk_cache_policy(records: Path, locks: Path, results: Path | None = None) -> CachePolicy:
    """Cache chunks by their key across runs; two runs never compute the same chunk at once.

    Records are read through ChunkRecordStorage, so a cache hit can only decode our Parquet results from
    ``results`` (default: ``records``' sibling ``results`` folder), never unpickle a planted file.
    """
    results = results or records.parent / "results"
    return CachePolicy.from_cache_key_fn(_chunk_key).configure(
        key_storage=ChunkRecordStorage(basepath=str(records), results_dir=str(results)),
        isolation_level="SERIALIZABLE",
        lock_manager=ProcessLockManager(lock_files_directory=locks),
    )


@dataclass(frozen=True)
class PriceSource:
    """Where a chunk task loads its prices itself when the flow submitted no load task for it."""

    store_root: str
    last: dt.date
    cache_dir: str
    db: str | None = None


def has_cache_record(records: Path, spec: ChunkSpec) -> bool:
    """Whether the chunk's cache record exists, i.e. its backtest task will most likely be a cache hit.

    Only a hint that spares the flow a load task: the chunk task still decides, and loads its own prices
    when it has to run after all.
    """
    return (records / spec.key).is_file()


@dataclass(frozen=True)
class LoadedPrices:
    """A chunk's prices file, and when the load task made it available (epoch seconds, for the profiler)."""

    path: str
    started: float
    ended: float


def prices_file(cache_dir: Path, spec: ChunkSpec, last: dt.date) -> Path:
    """Content-addressed: the same symbols' data up to the same date is the same file."""
    return cache_dir / f"prices-{spec.data_fingerprint}-{last.isoformat()}.arrow"


@task(
    name="load-chunk",
    task_run_name="load-{spec.index:04d}",
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=1),
    retry_condition_fn=retry_transient,
    persist_result=False,
)
def load_chunk(
    store_root: str, spec: ChunkSpec, last: dt.date, cache_dir: str, db: str | None = None
) -> LoadedPrices:
    """Make the chunk's prices available as one columnar file (kept until the cache is pruned).

    The source (the store, or the database ``db``) is read only when that file is missing. The task's own
    start and end travel with the path, so the profiler never depends on the server's records of it.
    """
    started = time.time()
    path = prices_file(Path(cache_dir), spec, last)
    if not path.exists():
        write_panel(open_price_source(store_root, db).load(spec.symbols, end=last), path)
    return LoadedPrices(str(path), started, time.time())


@task(
    name="backtest-chunk",
    task_run_name="backtest-{spec.index:04d}",
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_condition_fn=retry_transient,
    persist_result=True,
    cache_result_in_memory=False,
    result_serializer=ChunkResultSerializer(),
)
def backtest_chunk(
    spec: ChunkSpec, prices: LoadedPrices | None, plan: StudyPlan, source: PriceSource | None = None
) -> StoredChunk:
    """All three phases for one chunk of symbols; the result is persisted as Parquet (the cache).

    ``prices`` is None when the flow found the chunk's cache record and so submitted no load task: the
    chunk is then normally a cache hit and never runs; if it runs after all (the record vanished in between),
    it loads its prices from ``source`` itself, so correctness never depends on the flow's check.
    Its timings also carry the task's CPU time and attempt number (backtest.profiling), for the profiler.
    """
    with measure() as total:
        with measure() as load:
            if prices is None:
                if source is None:
                    raise ValueError(f"{spec.name}: neither a prices file nor a price source to load from")
                prices = load_chunk.fn(source.store_root, spec, source.last, source.cache_dir, source.db)
            panel = read_panel(Path(prices.path))
        result = run_chunk(panel, plan)
    result.timings["load"] = result.timings.get("load", 0.0) + load.wall
    add_task_figures(result.timings, load, total, TaskRunContext.get().task_run.run_count)
    get_run_logger().info(
        "%s: %d symbols computed in %.2f s, CPU %.2f s (%s)",
        spec.name,
        len(spec.symbols),
        total.wall,
        total.cpu,
        ", ".join(f"{k} {v:.2f} s" for k, v in wall_timings(result.timings).items()),
    )
    return StoredChunk.encode(result)  # small: Prefect keeps it in the task's state until the flow ends
