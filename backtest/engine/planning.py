"""Planning a study over a store: the universe, its chunks, and each chunk's cache key.

Cache keys are built from cheap identifiers only (docs/design.md section 3): the fingerprint of the chunk's
stored data (from the catalog, no prices read), the study's dates and folds, the configuration, the strategy's
source and the core's code. Anything that could change a chunk's numbers is in its key; nothing else is, so an
unchanged chunk is served from cache and a changed symbol recomputes only its own chunk.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

import backtest
from backtest.config import StudyConfig
from backtest.engine.study import StudyPlan, chunked
from backtest.errors import ConfigError, DataError

#: the modules whose code decides a chunk's numbers: editing any of them invalidates every cached chunk
_NUMERIC_MODULES = (
    "engine/signals_nb.py",
    "engine/simulate_nb.py",
    "engine/study.py",
    "engine/folds.py",
    "config.py",
    "results/chunkio.py",
    "overfitting/moments_nb.py",
    "overfitting/sharpe.py",
    "overfitting/trials.py",
)
# -- what a chunk costs: the one source of these figures for the chooser and the recommendations. Calibrated
# on this project's 2-core machine with 2 workers, the thread runner and a Prefect server on loopback, while
# other work ran beside (on a quiet machine the times are smaller, in about the same ratio; docs/benchmarks.md
# has the measurements). Times are worker-seconds: one worker busy that long.
#: orchestration per chunk: its task run, the chunk result's persistence and the server's records. Taken as
#: the slope of the flow's backtest step against the chunk count at fixed work, with one task per chunk (a
#: load task and a backtest task per chunk cost clearly more). The profile's
#: ``per_task_overhead_seconds`` is larger and grows with the chunk, as it also holds the prices' loading and
#: the result encoding.
TASK_OVERHEAD_SECONDS = 0.1
#: work per bar and grid combination (the numba kernels of the three phases): ``run_chunk`` at a small and a
#: large grid, best of 3
SECONDS_PER_BAR_COMBO = 3.2e-9
#: work per bar whatever the grid: loading the prices from the store and the rest of ``run_chunk`` (returns,
#: out-of-sample tables, metrics)
SECONDS_PER_BAR = 0.7e-6
#: the largest chunk, in symbols x bars (250 symbols of 20 years), for memory and no measured gain beyond:
#: bigger chunks took the flow on W with 2 workers past the design's peak target of 1 GB, and were not
#: reliably faster
MAX_CHUNK_SYMBOL_BARS = 1_300_000
#: peak memory a chunk in flight adds, per symbol and bar: least squares over measured runs of the flow
CHUNK_BYTES_PER_SYMBOL_BAR = 153
#: orchestration at most this share of a chunk's work
MAX_TASK_OVERHEAD_SHARE = 0.10
#: chunks per worker wanted, for load balance at the end of the run and for progress to move, as long as
#: each chunk still carries enough work to keep the orchestration share below ``MAX_TASK_OVERHEAD_SHARE``
CHUNKS_PER_WORKER = 4


def code_fingerprint() -> str:
    """Hash of the core version and of the source of the modules that compute a chunk."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(backtest.__version__.encode())
    root = Path(backtest.__file__).parent
    for name in _NUMERIC_MODULES:
        digest.update(name.encode() + b"\0" + (root / name).read_bytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class ChunkSpec:
    """One chunk of the universe: what a backtest task receives (small, cheap to pass and to hash)."""

    index: int
    symbols: tuple[str, ...]
    data_fingerprint: str
    key: str

    @property
    def name(self) -> str:
        return f"chunk-{self.index:04d}"

    def describe(self) -> str:
        first, last = self.symbols[0], self.symbols[-1]
        return f"{self.name} ({len(self.symbols)} symbols, {first}..{last})"


@dataclass(frozen=True)
class ChunkChoice:
    """A chunk size with the figures that decided it (for the log, the recommendations and their tests)."""

    size: int
    chunks: int
    work_seconds: float  # estimated work of one chunk, worker-seconds
    overhead_share: float  # per-task cost / work of one chunk
    reason: str  # balance, overhead, one-per-worker, size-limit


def work_per_symbol(n_bars: int, n_combos: int) -> float:
    """Estimated worker-seconds of one symbol's three phases and load (the measured rates above)."""
    return max(n_bars, 1) * (SECONDS_PER_BAR + max(n_combos, 1) * SECONDS_PER_BAR_COMBO)


def size_chunks(
    n_symbols: int,
    work_seconds: float,
    workers: int,
    max_size: int | None = None,
    task_seconds: float = TASK_OVERHEAD_SECONDS,
) -> ChunkChoice:
    """Symbols per chunk for ``n_symbols`` symbols of ``work_seconds`` each on ``workers`` workers.

    Why these rules: each chunk costs ``task_seconds`` of orchestration however small it is, so a chunk must
    carry at least ``1 / MAX_TASK_OVERHEAD_SHARE`` times that in work; beyond that, more chunks only help
    balance and progress, and ``CHUNKS_PER_WORKER`` per worker give both (the last chunk to finish leaves
    the other workers idle for a fraction of a chunk: a quarter of the run's per-worker share at most). Never
    fewer chunks than workers (unless there are fewer symbols), never more symbols than ``max_size``
    (``size_limit``: efficiency and memory). Chunk counts come in whole rounds of ``workers`` chunks where
    the rules allow, since a last round with idle workers costs a whole chunk's time, and the symbols are
    spread evenly over the chunks.
    """
    workers = max(workers, 1)
    if n_symbols <= 0:
        return ChunkChoice(1, 0, 0.0, 0.0, "balance")
    by_balance = math.ceil(n_symbols / (CHUNKS_PER_WORKER * workers))  # the size for that many chunks
    by_overhead = (  # the least size worth a task (a measured work's last bits do not add a symbol)
        math.ceil(task_seconds / (MAX_TASK_OVERHEAD_SHARE * work_seconds) * (1 - 1e-9))
        if work_seconds > 0
        else n_symbols
    )
    if by_balance >= by_overhead:
        chunks, reason = math.ceil(n_symbols / by_balance), "balance"
    else:
        chunks, reason = n_symbols // by_overhead, "overhead"  # every chunk at least by_overhead symbols
    if chunks <= workers:
        chunks, reason = min(workers, n_symbols), "one-per-worker"
    else:
        chunks -= chunks % workers  # whole rounds: fewer, bigger chunks, never a higher overhead share
    if max_size is not None and math.ceil(n_symbols / chunks) > max_size:
        chunks, reason = math.ceil(n_symbols / max(max_size, 1)), "size-limit"
        chunks = min(chunks + -chunks % workers, n_symbols)  # whole rounds again, by smaller chunks
    size = math.ceil(n_symbols / chunks)
    chunks = math.ceil(n_symbols / size)
    work = size * work_seconds
    return ChunkChoice(size, chunks, work, task_seconds / work if work > 0 else math.inf, reason)


def size_limit(n_bars: int, workers: int, memory_bytes: int | None = None) -> int:
    """Most symbols per chunk: the chunk limit (``MAX_CHUNK_SYMBOL_BARS``), and ``workers``
    chunks in flight in at most a quarter of the available memory ``memory_bytes`` (default: what psutil
    says; the rest is for the flow, the server and the other programs on the machine)."""
    memory = memory_bytes if memory_bytes is not None else psutil.virtual_memory().available
    by_memory = memory / 4 / max(workers, 1) / (max(n_bars, 1) * CHUNK_BYTES_PER_SYMBOL_BAR)
    return max(1, int(min(by_memory, MAX_CHUNK_SYMBOL_BARS / max(n_bars, 1))))


def choose_chunk_size(
    n_symbols: int, n_bars: int, n_combos: int, workers: int, memory_bytes: int | None = None
) -> int:
    """Symbols per chunk for a study of ``n_bars`` bars and ``n_combos`` combinations (see ``size_chunks``)."""
    return plan_chunk_size(n_symbols, n_bars, n_combos, workers, memory_bytes).size


def plan_chunk_size(
    n_symbols: int, n_bars: int, n_combos: int, workers: int, memory_bytes: int | None = None
) -> ChunkChoice:
    """``choose_chunk_size`` with the figures behind the choice."""
    return size_chunks(
        n_symbols,
        work_per_symbol(n_bars, n_combos),
        workers,
        size_limit(n_bars, workers, memory_bytes),
    )


@dataclass(frozen=True, eq=False)
class Universe:
    """The symbols of a study with the dates that fix its folds."""

    symbols: tuple[str, ...]
    first: dt.date
    last: dt.date
    rows: int = 0


def resolve_universe(catalog_frame, symbols: Sequence[str] | None = None) -> Universe:
    """Pick the study's symbols from a store catalog (all by default) and their overall date range."""
    if catalog_frame.empty:
        raise DataError("the store is empty: ingest prices first (`backtest ingest SOURCE --store DIR`)")
    frame = catalog_frame.set_index("symbol")
    if symbols:
        missing = [s for s in symbols if s not in frame.index]
        if missing:
            raise DataError(f"symbols not in the store: {', '.join(missing[:20])}")
        frame = frame.loc[list(dict.fromkeys(symbols))]
    frame = frame[frame["rows"] > 0]
    if frame.empty:
        raise DataError("none of the requested symbols has any stored prices")
    return Universe(
        symbols=tuple(sorted(frame.index)),
        first=_as_date(frame["first_date"].min()),
        last=_as_date(frame["last_date"].max()),
        rows=int(frame["rows"].sum()),
    )


def _as_date(value: object) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value)[:10])


def estimate_bars(first: dt.date, last: dt.date) -> int:
    """Bars of a daily panel from ``first`` to ``last`` (252 a year): the width of every chunk's arrays, what
    the chunk size is chosen for, from the catalog's dates alone."""
    return max(1, int((last - first).days * 252 / 365.25))


def plan_identity(plan: StudyPlan, code: str) -> bytes:
    """What every chunk key of a study shares: configuration, strategy and its source, combinations, folds, and
    the core's code. Made once per study, not once per chunk: it hashes the strategy's source and the folds,
    which every chunk's key would otherwise pay for again."""
    parts = (
        plan.config.digest(),
        plan.strategy.name,
        plan.strategy.source_hash(),
        repr(plan.combos.tolist()),
        "|".join(f.to_dict().__repr__() for f in plan.folds),
        code,
    )
    return b"".join(part.encode("utf-8", "surrogatepass") + b"\n" for part in parts)


def chunk_key(identity: bytes, symbols: Sequence[str], data_fingerprint: str) -> str:
    """The cache key of a chunk's results: its symbols, their data, and the study's ``plan_identity``."""
    digest = hashlib.blake2b(digest_size=20)
    for part in ("\0".join(symbols), data_fingerprint):
        digest.update(part.encode("utf-8", "surrogatepass") + b"\n")
    digest.update(identity)
    return f"chunk-{digest.hexdigest()}"


def plan_chunks(
    plan: StudyPlan,
    universe: Universe,
    fingerprint: Callable[[Sequence[str]], str],
    chunk_size: int | None,
    workers: int,
) -> list[ChunkSpec]:
    """Split the universe into chunks with their data fingerprints and cache keys."""
    if chunk_size is not None and chunk_size < 1:
        raise ConfigError(f"chunk_size must be at least 1, got {chunk_size}")
    n_bars = estimate_bars(universe.first, universe.last)
    size = chunk_size or choose_chunk_size(len(universe.symbols), n_bars, len(plan.combos), workers)
    identity = plan_identity(plan, code_fingerprint())
    specs = []
    for i, symbols in enumerate(chunked(list(universe.symbols), size)):
        fp = fingerprint(symbols)
        specs.append(
            ChunkSpec(index=i, symbols=symbols, data_fingerprint=fp, key=chunk_key(identity, symbols, fp))
        )
    return specs


def make_plan(config: StudyConfig, universe: Universe) -> StudyPlan:
    return StudyPlan.create(config, universe.first, universe.last)
