"""The Prefect cache plumbing of the chunk task, in one place: what a cached chunk is on disk, which records
a cache hit may trust, and the locks that keep two runs from computing one chunk.

- Serializer: a chunk's persisted result is a real Parquet file (backtest.results.chunkio), and a failed
  run's exception is stored as a small JSON record instead of pickle, so nothing read back can run code.
- Records: a cache hit reads the record (JSON) first, then decodes the result file with the serializer the
  record names. A store folder can come from elsewhere (copied, shared, downloaded): a record naming
  Prefect's ``pickle`` serializer, or pointing outside the cache's results folder, would make a hit
  unpickle, and so run, whatever that file holds. Such a record is refused, and so is one whose result file
  is gone or cut short; Prefect then treats the chunk as not cached and recomputes it.
- Locks: Prefect's ``FileSystemLockManager`` writes a lock file with no expiry and removes it when the
  transaction ends, so a run killed with SIGKILL would leave a lock the next run waits on forever. This one
  also writes which process holds it (host, PID and the process's start time, so a recycled PID does not
  count) and breaks a lock whose process has ended; locks of other hosts (a Dask cluster sharing the
  folder) cannot be checked from here and are respected.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from pathlib import Path
from typing import Any, Literal

import psutil
import pyarrow as pa
from prefect.cache_policies import CachePolicy
from prefect.filesystems import LocalFileSystem
from prefect.locking.filesystem import FileSystemLockManager
from prefect.serializers import Serializer

from backtest.atomic import create_exclusive, write_text
from backtest.engine.study import ChunkResult
from backtest.results.chunkio import chunk_from_bytes, chunk_to_bytes

__all__ = [
    "ChunkFailure",
    "ChunkRecordStorage",
    "ChunkResultSerializer",
    "ProcessLockManager",
    "StoredChunk",
    "UnsafeRecord",
    "check_record",
    "chunk_cache_policy",
    "holder_process_is_gone",
    "this_process",
]


# -- the serializer: chunk results as Parquet ----------------------------------------------------------------
class StoredChunk:
    """A chunk result as its Parquet bytes (what the cache holds), decoded only when asked.

    The chunk task returns its result in this form, and a cache hit reads it back in this form. Prefect
    keeps every task's return value in its final state, and the flow keeps the states of all chunks until
    the last one finishes: as frames, a whole market's out-of-sample rows would pile up in memory; as
    compressed bytes, a small fraction of that. The flow never looks inside (the collect step
    reads the files itself), so nothing is decoded on the way.
    """

    __slots__ = ("blob",)

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    @classmethod
    def encode(cls, result: ChunkResult, rows: pa.Table | None = None) -> StoredChunk:
        """``rows``: ``backtest.results.chunkio.oos_rows(result)``, when the caller already made it."""
        return cls(chunk_to_bytes(result, rows))

    def load(self) -> ChunkResult:
        return chunk_from_bytes(self.blob)


class ChunkFailure(RuntimeError):
    """A failed chunk's exception as read back from storage: its type and message, never executable data."""


ERROR_PREFIX = b"BACKTEST-ERROR\n"


class ChunkResultSerializer(Serializer):
    """Writes a ChunkResult as Parquet (with ``key_storage`` the result file is exactly these bytes).

    Prefect also persists a failed run's exception with the task's serializer: that is written as a small
    JSON record (type and message) instead of pickle, so nothing read back from storage can run code.
    """

    type: Literal["backtest-chunk-parquet"] = "backtest-chunk-parquet"

    def dumps(self, obj: ChunkResult | StoredChunk | BaseException) -> bytes:
        if isinstance(obj, BaseException):
            return ERROR_PREFIX + json.dumps({"type": type(obj).__name__, "message": str(obj)}).encode()
        return obj.blob if isinstance(obj, StoredChunk) else chunk_to_bytes(obj)

    def loads(self, blob: bytes) -> StoredChunk | ChunkFailure:
        if blob.startswith(ERROR_PREFIX):
            record = json.loads(blob[len(ERROR_PREFIX) :])
            return ChunkFailure(f"{record['type']}: {record['message']}")
        return StoredChunk(blob)


# -- the records a cache hit may trust -----------------------------------------------------------------------
SERIALIZER_TYPE = ChunkResultSerializer().type


class UnsafeRecord(ValueError):
    """A cache record that names another serializer or a result outside the results folder."""


def check_record(content: bytes, results_dir: Path) -> None:
    """Raise UnsafeRecord unless the record names our serializer and a file directly in ``results_dir``."""
    try:
        record: Any = json.loads(content)
        serializer = record["serializer"]["type"]
        storage_key = Path(record["storage_key"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UnsafeRecord(f"unreadable cache record: {exc}") from None
    if serializer != SERIALIZER_TYPE:
        raise UnsafeRecord(f"cache record names serializer {serializer!r}, not {SERIALIZER_TYPE!r}")
    if storage_key.resolve().parent != results_dir.resolve():
        raise UnsafeRecord(f"cache record points outside the results folder: {str(storage_key)!r}")
    if not storage_key.is_file():
        # the result file was removed (by hand, or a crash between two prunes): a miss, never a failed chunk
        raise UnsafeRecord(f"cache record points at a result file that is gone: {str(storage_key)!r}")
    if not _whole_result_file(storage_key):
        # Prefect writes a result file in place: one cut short (a full disk, a copy interrupted) would be a hit
        # that fails the collect on every run; as a miss, the chunk is computed and the file written again
        raise UnsafeRecord(f"cache record points at a result file that is not whole: {str(storage_key)!r}")


_PARQUET_MAGIC = b"PAR1"


def _whole_result_file(path: Path) -> bool:
    """A Parquet file begins and ends with its magic bytes (a failed run's record is small JSON text)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(ERROR_PREFIX))
            if head.startswith(ERROR_PREFIX):
                return True
            handle.seek(-len(_PARQUET_MAGIC), 2)
            return head.startswith(_PARQUET_MAGIC) and handle.read() == _PARQUET_MAGIC
    except OSError:
        return False


class ChunkRecordStorage(LocalFileSystem):
    """``LocalFileSystem`` for the records (``key_storage``) that refuses records it cannot trust."""

    _block_type_name = "Backtest chunk records"
    results_dir: str

    def read_path(self, path: str, _sync: bool | None = None) -> bytes:
        content = LocalFileSystem.read_path(self, path, _sync=True)
        check_record(content, Path(self.results_dir))
        return content

    async def aread_path(self, path: str) -> bytes:
        content = await LocalFileSystem.aread_path(self, path)
        check_record(content, Path(self.results_dir))
        return content


# -- locks that die with their process -----------------------------------------------------------------------
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


# -- the chunk task's cache policy ---------------------------------------------------------------------------
def _chunk_key(context: Any, parameters: dict[str, Any]) -> str:
    return parameters["job"].spec.key


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
