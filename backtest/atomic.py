"""Atomic file writes, the project's one mechanism: a hidden temporary beside the target, renamed over it
(or, for a file that must not exist yet, linked to it) once complete.

A temporary's name says which machine, process and thread write it (``.<name>.<host>.<pid>.<thread>.tmp``):
concurrent writers of one target never share a temporary (a retried chunk may write its price file while its
first try still does), and a clean-up step can tell a temporary whose writer is gone (a worker SIGKILLed
part-way, out of memory) from one still being written.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

#: a temporary untouched this long is abandoned, whoever wrote it (a process id says nothing about another
#: machine sharing the folder)
STALE_TEMP_SECONDS = 3600.0
#: this machine, in temporaries' names
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def temporary_for(path: Path, suffix: str = ".tmp") -> Path:
    """Where to write ``path`` before renaming it: hidden, named after this machine, process and thread."""
    return path.with_name(f".{path.name}.{_HOST}.{os.getpid()}.{threading.get_ident()}{suffix}")


@contextmanager
def atomic_path(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary sibling of ``path`` to write: renamed over ``path`` when the block succeeds, removed when
    it fails (a full disk leaves neither half a file nor a stray temporary)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_for(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: Path, data: bytes, *, durable: bool = False, sync_dir: bool = True) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a partial one.

    ``durable`` fsyncs the data before the rename, so a power cut cannot publish an empty file; the folder's
    own fsync (which makes the rename itself durable) can be left to the caller with ``sync_dir=False`` when
    it syncs the folder once for a whole batch of files.
    """
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
    if durable and sync_dir:
        fsync_dir(path.parent)
    return path


def write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_tables(out: Path, tables: dict[str, Any]) -> dict[str, Path]:
    """Each DataFrame of ``tables`` as ``out/<name>.parquet``, one atomic write each: a run killed part-way
    leaves whole tables and no partial one."""
    paths = {}
    for name, frame in tables.items():
        path = out / f"{name}.parquet"
        with atomic_path(path) as tmp:
            frame.to_parquet(tmp, index=False)
        paths[name] = path
    return paths


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """``data`` as indented JSON; NaN and infinities become null (JSON has no such numbers)."""
    return write_text(path, json.dumps(json_safe(data), indent=2, sort_keys=False, default=str) + "\n")


def create_exclusive(path: Path, text: str) -> bool:
    """Create ``path`` holding ``text`` in one step, unless it exists (then return False and leave it).

    The content is written first and then hard-linked into place, so no reader ever sees the file empty,
    which ``open(..., "x")`` followed by a write would show.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_for(path)
    tmp.write_text(text, encoding="utf-8")
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def fsync_dir(folder: Path) -> None:
    """Make the renames into ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def abandoned(path: Path, now: float | None = None) -> bool:
    """Whether ``path`` is a temporary nobody will finish: its writer, a process of this machine, no longer
    runs, or it has not changed for ``STALE_TEMP_SECONDS``. Anything not named as a temporary is not."""
    if not (path.name.startswith(".") and path.name.endswith(".tmp")):
        return False
    try:
        idle = (time.time() if now is None else now) - path.stat().st_mtime
    except FileNotFoundError:
        return False  # renamed or removed meanwhile
    return idle > STALE_TEMP_SECONDS or _writer_gone(path.name)


def _writer_gone(name: str) -> bool:
    parts = name.split(".")
    if len(parts) < 6 or parts[-4] != _HOST or not parts[-3].isdigit():
        return False  # another machine's, or not named by temporary_for: only the age rule applies
    try:
        os.kill(int(parts[-3]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # someone else's process
    return False
