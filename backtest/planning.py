"""Planning a study over a store: the universe, its chunks, and each chunk's cache key.

Cache keys are built from cheap identifiers only (DESIGN.md section 3): the fingerprint of the chunk's stored
data (from the catalog, no prices read), the study's dates and folds, the configuration, the strategy's source
and the core's code. Anything that could change a chunk's numbers is in its key; nothing else is, so an
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
from backtest.errors import ConfigError, DataError
from backtest.study import StudyPlan, chunked

#: the modules whose code decides a chunk's numbers: editing any of them invalidates every cached chunk
_NUMERIC_MODULES = ("signals_nb.py", "simulate_nb.py", "study.py", "folds.py", "config.py", "chunkio.py")
#: bytes a chunk needs per symbol and bar: 5 price arrays, 5 out-of-sample arrays, scratch and copies
_BYTES_PER_SYMBOL_BAR = 8 * 16
#: aim for chunks of at least this much work, so Prefect's per-task cost stays small beside it
_MIN_CHUNK_BAR_COMBOS = 25_000_000


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


def choose_chunk_size(
    n_symbols: int, n_bars: int, n_combos: int, workers: int, memory_bytes: int | None = None
) -> int:
    """Symbols per chunk: enough chunks to balance the workers, each big enough to dwarf the per-task cost,
    and small enough that ``workers`` chunks in flight fit in a quarter of the available memory."""
    if n_symbols <= 0:
        return 1
    memory = memory_bytes if memory_bytes is not None else psutil.virtual_memory().available
    by_memory = max(1, int(memory / 4 / max(workers, 1) / (max(n_bars, 1) * _BYTES_PER_SYMBOL_BAR)))
    by_balance = math.ceil(n_symbols / (8 * max(workers, 1)))
    by_overhead = math.ceil(_MIN_CHUNK_BAR_COMBOS / max(n_bars * n_combos, 1))
    return max(1, min(by_memory, max(by_balance, by_overhead), n_symbols))


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


def chunk_key(plan: StudyPlan, symbols: Sequence[str], data_fingerprint: str, code: str) -> str:
    """The cache key of a chunk's results."""
    digest = hashlib.blake2b(digest_size=20)
    for part in (
        "\0".join(symbols),
        data_fingerprint,
        plan.config.digest(),
        plan.strategy.name,
        plan.strategy.source_hash(),
        repr(plan.combos.tolist()),
        "|".join(f.to_dict().__repr__() for f in plan.folds),
        code,
    ):
        digest.update(part.encode("utf-8", "surrogatepass") + b"\n")
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
        raise ConfigError(f"--chunk-size must be at least 1, got {chunk_size}")
    n_bars = max(1, int((universe.last - universe.first).days * 252 / 365.25))
    size = chunk_size or choose_chunk_size(len(universe.symbols), n_bars, len(plan.combos), workers)
    code = code_fingerprint()
    specs = []
    for i, symbols in enumerate(chunked(list(universe.symbols), size)):
        fp = fingerprint(symbols)
        specs.append(
            ChunkSpec(index=i, symbols=symbols, data_fingerprint=fp, key=chunk_key(plan, symbols, fp, code))
        )
    return specs


def make_plan(config: StudyConfig, universe: Universe) -> StudyPlan:
    return StudyPlan.create(config, universe.first, universe.last)
