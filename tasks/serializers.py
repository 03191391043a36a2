"""The Prefect serializer that makes a chunk's persisted result a real Parquet file (see backtest.results.chunkio)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Literal

from prefect.serializers import Serializer

from backtest.engine.study import ChunkResult
from backtest.results.chunkio import chunk_from_bytes, chunk_to_bytes

if TYPE_CHECKING:
    import pyarrow as pa


class StoredChunk:
    """A chunk result as its Parquet bytes (what the cache holds), decoded only when asked.

    The chunk task returns its result in this form, and a cache hit reads it back in this form. Prefect
    keeps every task's return value in its final state, and the flow keeps the states of all chunks until
    the last one finishes: as frames, a whole market's out-of-sample rows would pile up in memory (about
    450 MB for W); as compressed bytes, a tenth of that. The flow never looks inside (the collect step
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
