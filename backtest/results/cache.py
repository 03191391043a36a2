"""The result cache under a store: its folders (``CacheLayout``, the one place that names them) and its limits,
so that nothing in it grows without bound.

Prefect writes a chunk's result file and, in a separate folder, its cache record (same name). Pruning removes
the oldest pairs until the folder is under its size limit, and every pair older than the expiry; the record
goes first, so a half-pruned pair is a cache miss, never a record pointing at a missing file.

A writer killed part-way leaves its hidden temporary (backtest.atomic) behind; pruning removes those whose
writer is gone as it lists the folders.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from backtest.atomic import abandoned


@dataclass(frozen=True)
class CacheLayout:
    """The cache's folders under ``root`` (``<store>/cache``). Small and picklable: tasks receive it whole.

    ``results`` and ``records`` are Prefect's result files and cache records of the chunks (same names, the
    chunk keys), ``locks`` the chunks' lock files, ``prices`` each chunk's price file, ``collected`` the
    merged tables of a set of chunks (one folder per ``collected_key``), ``ranking`` a cross-sectional
    study's score files (per chunk) and portfolio files (per block of combinations), named by their keys.
    """

    root: Path

    @classmethod
    def of_store(cls, store_root: Path | str) -> CacheLayout:
        return cls(Path(store_root) / "cache")

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def records(self) -> Path:
        return self.root / "records"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    @property
    def prices(self) -> Path:
        return self.root / "prices"

    @property
    def collected(self) -> Path:
        return self.root / "collected"

    @property
    def ranking(self) -> Path:
        return self.root / "ranking"

    def result_file(self, key: str) -> Path:
        return self.results / key


@dataclass(frozen=True)
class CacheLimits:
    """How big and how old the cache may grow: beyond either, the least recently used entries go."""

    max_bytes: int
    max_age_seconds: float


@dataclass(frozen=True)
class PruneReport:
    kept: int
    removed: int
    bytes_before: int
    bytes_after: int

    def to_dict(self) -> dict[str, int]:
        return {
            "kept": self.kept,
            "removed": self.removed,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
        }


def prune(
    results: Path,
    records: Path,
    max_bytes: int,
    max_age_seconds: float,
    keep: frozenset[str] = frozenset(),
    extra: tuple[Path, ...] = (),
) -> PruneReport:
    """Remove expired entries, then the least recently used until under ``max_bytes``.

    ``keep`` names entries the current run uses (never removed). ``extra`` folders hold plain cache files
    (such as chunk price files) under the same limits.
    """
    now = time.time()
    entries: list[tuple[float, int, list[Path], str]] = []
    for f in _cache_files(results, now):
        st = f.stat()
        entries.append((max(st.st_mtime, st.st_atime), st.st_size, [records / f.name, f], f.name))
    for folder in extra:
        for f in _cache_files(folder, now):
            st = f.stat()
            entries.append((max(st.st_mtime, st.st_atime), st.st_size, [f], f.name))
    # records whose result file is gone are dead weight: drop them
    if records.is_dir():
        for r in records.iterdir():
            if r.is_file() and not (results / r.name).exists() and r.name not in keep:
                r.unlink(missing_ok=True)
    total = sum(e[1] for e in entries)
    before = total
    removed = 0
    for used, size, paths, name in sorted(entries):
        if name in keep:
            for p in paths:
                os.utime(p, None)  # used by the current run: most recently used from now on
            continue
        if now - used > max_age_seconds or total > max_bytes:
            for p in paths:
                p.unlink(missing_ok=True)
            total -= size
            removed += 1
    return PruneReport(kept=len(entries) - removed, removed=removed, bytes_before=before, bytes_after=total)


def _cache_files(folder: Path, now: float) -> Iterator[Path]:
    """The folder's cache files; on the way, the temporaries of writers that are gone are removed."""
    if not folder.is_dir():
        return
    for f in folder.iterdir():
        if not f.name.startswith("."):
            if f.is_file():
                yield f
        elif abandoned(f, now):
            f.unlink(missing_ok=True)
