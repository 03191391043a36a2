"""The Prefect serializer that makes a chunk's persisted result a real Parquet file (see backtest.chunkio)."""

from __future__ import annotations

from typing import Literal

from prefect.serializers import Serializer

from backtest.chunkio import chunk_from_bytes, chunk_to_bytes
from backtest.study import ChunkResult


class StoredChunk:
    """A chunk result as read back from the cache: its Parquet bytes, decoded only when asked.

    A cache hit hands the task's result to the flow, which never looks inside (the collect step reads the
    files itself): decoding every cached chunk on a warm run would be wasted work.
    """

    __slots__ = ("blob",)

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def load(self) -> ChunkResult:
        return chunk_from_bytes(self.blob)


class ChunkResultSerializer(Serializer):
    """Writes a ChunkResult as Parquet (with ``key_storage`` the result file is exactly these bytes)."""

    type: Literal["backtest-chunk-parquet"] = "backtest-chunk-parquet"

    def dumps(self, obj: ChunkResult | StoredChunk) -> bytes:
        return obj.blob if isinstance(obj, StoredChunk) else chunk_to_bytes(obj)

    def loads(self, blob: bytes) -> StoredChunk:
        return StoredChunk(blob)
