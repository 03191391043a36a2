"""A file lock manager for the chunk cache whose locks die with the process that took them.

Prefect's ``FileSystemLockManager`` writes a lock file with no expiry and removes it when the transaction
ends. A run killed with SIGKILL (or a worker process killed mid-chunk) never removes it, and the next run
that needs the same chunk waits for that lock forever. This manager also writes which process holds the lock
(host, PID and the process's start time, so a recycled PID does not count) and breaks a lock whose process
has ended. Locks taken on other hosts (a Dask cluster sharing the folder) cannot be checked from here and
are respected. The lock file is created with its content in one step (``link`` of a written temporary
file), so no reader ever sees an empty lock.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from pathlib import Path
from typing import Any

import psutil
from prefect.locking.filesystem import FileSystemLockManager

from backtest.atomic import create_exclusive, write_text

__all__ = ["ProcessLockManager", "holder_process_is_gone", "this_process"]


def this_process() -> dict[str, Any]:
    """Who holds a lock: enough to tell later, on this host, whether that process still runs."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": psutil.Process().create_time()}


def holder_process_is_gone(info: dict[str, Any]) -> bool:
    """Whether a lock's recorded process is of this host and has ended (or its PID now names another one)."""
    pid, started = info.get("pid"), info.get("started")
    if info.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    try:
        return abs(psutil.Process(pid).create_time() - float(started or 0.0)) > 1e-3
    except psutil.NoSuchProcess:
        return True


class ProcessLockManager(FileSystemLockManager):
    """``FileSystemLockManager`` whose locks are broken when their holder process has died on this host."""

    def acquire_lock(
        self,
        key: str,
        holder: str,
        acquire_timeout: float | None = None,
        hold_timeout: float | None = None,
    ) -> bool:
        self._ensure_lock_files_directory_exists()
        path = self._lock_path_for_key(key)
        held_by_other = self.is_locked(key) and not self.is_lock_holder(key, holder)
        if held_by_other and not self.wait_for_lock(key, acquire_timeout):
            return False
        expiration = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=hold_timeout) if hold_timeout else None
        record = {"holder": holder, "expiration": str(expiration) if expiration else None, **this_process()}
        if not create_exclusive(path, json.dumps(record)):
            if not self.is_lock_holder(key, holder):
                return self.acquire_lock(key, holder, acquire_timeout, hold_timeout)
            write_text(path, json.dumps(record))  # re-entrant: refresh our own record
        self._locks[key] = {"holder": holder, "expiration": expiration, "path": path}
        return True

    async def aacquire_lock(
        self,
        key: str,
        holder: str,
        acquire_timeout: float | None = None,
        hold_timeout: float | None = None,
    ) -> bool:
        return self.acquire_lock(key, holder, acquire_timeout, hold_timeout)

    def is_locked(self, key: str, use_cache: bool = False) -> bool:
        info = self._get_lock_info(key, use_cache=use_cache)
        if info is not None and holder_process_is_gone(info):
            Path(info["path"]).unlink(missing_ok=True)
            self._locks.pop(key, None)
            return False
        return super().is_locked(key, use_cache=use_cache)
