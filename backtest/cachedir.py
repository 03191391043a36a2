"""Limits on the result cache: nothing in it grows without bound.

Prefect writes a chunk's result file and, in a separate folder, its cache record (same name). Pruning removes
the oldest pairs until the folder is under its size limit, and every pair older than the expiry; the record
goes first, so a half-pruned pair is a cache miss, never a record pointing at a missing file.

Files are written as hidden temporaries (``temporary_for``) and renamed when complete; a writer killed
part-way (a worker process SIGKILLed, out of memory) leaves its temporary behind. Pruning removes a temporary
once its writer is gone: it names a process of this machine that no longer runs, or it has not changed for
``STALE_TEMP_SECONDS`` (a writer on another machine sharing the folder).
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

#: a temporary untouched this long is abandoned whoever wrote it
STALE_TEMP_SECONDS = 3600.0
#: this machine, in temporaries' names: a process id means something only on the machine that wrote it
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def temporary_for(path: Path) -> Path:
    """Where to write ``path`` before renaming it: hidden, and named after this machine, process and thread
    (a retried chunk may write the same file while its first try still does)."""
    return path.with_name(f".{path.name}.{_HOST}.{os.getpid()}.{threading.get_ident()}.tmp")


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
    if results.is_dir():
        for f in results.iterdir():
            if f.is_file() and not f.name.startswith("."):
                st = f.stat()
                entries.append((max(st.st_mtime, st.st_atime), st.st_size, [records / f.name, f], f.name))
    for folder in extra:
        if folder.is_dir():
            for f in folder.iterdir():
                if f.is_file() and not f.name.startswith("."):
                    st = f.stat()
                    entries.append((max(st.st_mtime, st.st_atime), st.st_size, [f], f.name))
    for folder in (results, records, *extra):
        _remove_abandoned_temporaries(folder, now)
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


def _remove_abandoned_temporaries(folder: Path, now: float) -> None:
    if not folder.is_dir():
        return
    for f in folder.glob(".*.tmp"):
        try:
            idle = now - f.stat().st_mtime
        except FileNotFoundError:
            continue  # renamed or removed meanwhile
        if idle > STALE_TEMP_SECONDS or _writer_gone(f.name):
            f.unlink(missing_ok=True)


def _writer_gone(name: str) -> bool:
    """Whether a temporary names (``temporary_for``) a process of this machine that no longer runs."""
    parts = name.split(".")
    if len(parts) < 6 or parts[-4] != _HOST or not parts[-3].isdigit():
        return False  # another machine's, or not one of ours: only the age rule applies
    try:
        os.kill(int(parts[-3]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # someone else's process
    return False
