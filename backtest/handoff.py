"""Chunk results handed from a chunk task to the merge in the same process, instead of read back from a file.

With the thread runner the chunk tasks run in the flow's own process: the out-of-sample rows a task has just
encoded into its result file are still in memory when the flow's ahead-collector merges that chunk, and
decoding them again from the file cost 20-45 ms a chunk of W (0.3-0.7 CPU-seconds a run, taken from the
cores the other chunks compute on). Only the rows are handed over: they are the bulk of the decoding, and the
small tables are read from the file's footer as before.

A consumer first says which chunks it will merge (``expect``), and a task's rows are kept only when some
consumer expects them, so nothing piles up in a process where nobody merges (process and Dask workers, a task
run on its own). The consumer ``take``s each chunk's rows (None: read the file) and ``forget``s the rest when
it is done. The rows offered are the Arrow table that was encoded into the result file, so a merge from here
writes what a merge from the file writes.

The merge takes chunks in universe order, so the rows of chunks that finish ahead of a slow one wait here; at
most ``max_bytes`` of them (W's chunks hold 24-25 MiB each, measured): beyond that an offer is refused and that chunk
is read from its file, so a chunk retried after a long backoff cannot make the whole study's rows pile up.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable

import pyarrow as pa

__all__ = ["ROWS", "RowHandoff"]


class RowHandoff:
    """Out-of-sample rows of chunk results by cache key, kept only while a consumer in this process expects
    them. Thread-safe: tasks offer from the runner's threads while the consumer takes on its own."""

    def __init__(self, max_bytes: int = 128 * 2**20) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._expected: Counter[str] = Counter()
        self._rows: dict[str, pa.Table] = {}

    def expect(self, keys: Iterable[str]) -> None:
        with self._lock:
            self._expected.update(keys)

    def offer(self, key: str, rows: pa.Table) -> bool:
        """Keep ``rows`` for ``key`` if a consumer expects them and they fit (a retried task's later rows replace
        them); False: the consumer will read the file."""
        with self._lock:
            if self._expected[key] <= 0:
                return False
            held = sum(t.nbytes for k, t in self._rows.items() if k != key)
            if held + rows.nbytes > self.max_bytes:
                self._rows.pop(key, None)
                return False
            self._rows[key] = rows
            return True

    def take(self, key: str) -> pa.Table | None:
        """The rows offered for ``key``, or None (never offered: read them from the result file)."""
        with self._lock:
            return self._rows.pop(key, None)

    def forget(self, keys: Iterable[str]) -> None:
        """A consumer is done with ``keys``: what nobody else expects is dropped."""
        with self._lock:
            for key in keys:
                self._expected[key] -= 1
                if self._expected[key] <= 0:
                    del self._expected[key]
                    self._rows.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._rows)


#: this process's handoff (the chunk task offers into it, ``backtest.outputs.CollectAhead`` takes from it)
ROWS = RowHandoff()
