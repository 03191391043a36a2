"""Storage of the chunk cache's records that only ever leads to our own Parquet serializer.

A cache hit reads the record (JSON) first and then decodes the result file with the serializer the record
names. A store folder can come from elsewhere (copied, shared, downloaded): a record naming Prefect's
``pickle`` serializer, or pointing at a file outside the cache's results folder, would make a cache hit
unpickle, and so run, whatever that file holds. Such a record is refused here, and so is one whose result
file is gone; Prefect then treats the chunk as not cached and recomputes it, overwriting the record with a
good one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect.filesystems import LocalFileSystem

from tasks.serializers import ERROR_PREFIX, ChunkResultSerializer

__all__ = ["ChunkRecordStorage", "UnsafeRecord", "check_record"]

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
