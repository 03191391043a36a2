"""Chunk results handed from a chunk task to the merge in the same process, instead of read back from a file.

With the thread runner the chunk tasks run in the flow's own process: the result a task has just encoded into
its file is still in memory when the flow's ahead-collector merges that chunk. Decoding it again cost CPU
for the out-of-sample rows of every chunk, taken from the cores the other chunks compute on, and, for the
small tables in the file's footer, time holding the GIL (py-spy).

A consumer first says which chunks it will merge (``expect``), and a task's result is kept only when some
consumer expects it, so nothing piles up in a process where nobody merges (process and Dask workers, a task
run on its own). The consumer ``take``s each chunk's result (None: read the file) and ``forget``s the rest
when it is done. The result offered is the one encoded into the file, its ``oos_returns`` the Arrow table of
rows the file holds, so a merge from here writes what a merge from the file writes (tested byte for byte).

The merge takes chunks in universe order, so the results of chunks that finish ahead of a slow one wait here;
at most ``max_bytes`` of rows (room for a few of W's chunks; the small tables are a few hundred KB): beyond
that an offer is refused and that chunk is read from its file, so a chunk retried after a long backoff cannot
make the whole study's rows pile up.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:
    from backtest.engine.study import ChunkResult

__all__ = ["RESULTS", "ResultHandoff"]


class ResultHandoff:
    """Chunk results (their out-of-sample rows as Arrow tables) by cache key, kept only while a consumer in this
    process expects them. Thread-safe: tasks offer from the runner's threads while the consumer takes on its own."""

    def __init__(self, max_bytes: int = 128 * 2**20) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._expected: Counter[str] = Counter()
        self._results: dict[str, ChunkResult] = {}

    def expect(self, keys: Iterable[str]) -> None:
        with self._lock:
            self._expected.update(keys)

    def offer(self, key: str, result: ChunkResult) -> bool:
        """Keep ``result`` for ``key`` if a consumer expects it and its rows fit (a retried task's later result
        replaces it); False: the consumer will read the file."""
        if not isinstance(result.oos_returns, pa.Table):
            raise TypeError("hand over the rows as the file holds them: oos_returns as oos_rows' Arrow table")
        with self._lock:
            if self._expected[key] <= 0:
                return False
            held = sum(_rows_bytes(r) for k, r in self._results.items() if k != key)
            if held + _rows_bytes(result) > self.max_bytes:
                self._results.pop(key, None)
                return False
            self._results[key] = result
            return True

    def take(self, key: str) -> ChunkResult | None:
        """The result offered for ``key``, or None (never offered: read it from the result file)."""
        with self._lock:
            return self._results.pop(key, None)

    def forget(self, keys: Iterable[str]) -> None:
        """A consumer is done with ``keys``: what nobody else expects is dropped."""
        with self._lock:
            for key in keys:
                self._expected[key] -= 1
                if self._expected[key] <= 0:
                    del self._expected[key]
                    self._results.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._results)


def _rows_bytes(result: ChunkResult) -> int:
    return int(result.oos_returns.nbytes)


#: this process's handoff (the chunk task offers into it, ``backtest.results.outputs.CollectAhead`` takes from it)
RESULTS = ResultHandoff()
