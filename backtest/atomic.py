"""Atomic file writes: a hidden temporary beside the target, renamed over it once complete.

A temporary's name says which machine, process and thread write it (``.<name>.<host>.<pid>.<thread>.tmp``):
concurrent writers of one target never share a temporary (a retried chunk may write its price file while its
first try still does), and a clean-up step can tell a temporary whose writer is gone (a worker SIGKILLed
part-way, out of memory) from one still being written.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
