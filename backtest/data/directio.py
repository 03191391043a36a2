"""Writing a file around the page cache (``O_DIRECT``): for the cache files a run writes and a later run reads.

A cold run writes every chunk's prices (as large as the chunk's price arrays) and does not read them again:
the chunk computes from the panel it fetched. A buffered write puts those bytes in the page cache, and on the
2-core VMs this project runs on, memory new to the VM is expensive: written the ordinary way, the price files
of a cold flow cost a noticeable share of its CPU, most of it the guest's first touch of the page-cache pages.
Written with ``O_DIRECT``, the bytes go from the arrays to the disk through one small staging buffer that
stays resident, and the CPU left is the copy into it, a fraction of an ordinary write's; the disk takes
longer, which the caller can spend computing (backtest.data.panelio.chunk_prices writes on a thread of its
own). The later run that reads the file reads it from the disk.

Where ``O_DIRECT`` is missing (macOS, Windows) or refused (tmpfs on older kernels, some network file systems),
the file is written the ordinary way: the same bytes.
"""

from __future__ import annotations

import errno
import mmap
import os
import queue
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

#: offset, length and memory address of each direct write: the page size, a multiple of any block size in use
ALIGN = 4096
#: the staging buffer: a multiple of ALIGN; big enough that the disk sees few writes, small enough to keep
STAGING_BYTES = 4 * 1024 * 1024

_staging: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()  # one per concurrent writer, kept for the next


def write_uncached(path: Path, write: Callable[[pa.NativeFile], None]) -> bool:
    """Write to ``path`` what ``write`` writes to an Arrow output stream; return whether it went around the cache.

    ``write`` may be called twice (when the direct write is refused part-way), so it must write the same bytes
    each time.
    """
    flag = getattr(os, "O_DIRECT", 0)
    if flag:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | flag, 0o644)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
        else:
            try:
                _write_direct(fd, write)
                return True
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
            finally:
                os.close(fd)
    with pa.OSFile(str(path), "wb") as sink:
        write(sink)
    return False


def _write_direct(fd: int, write: Callable[[pa.NativeFile], None]) -> None:
    try:
        buffer = _staging.get_nowait()
    except queue.Empty:
        buffer = mmap.mmap(-1, STAGING_BYTES)  # page-aligned
    try:
        sink = _StagedDirectFile(fd, buffer)
        write(pa.PythonFile(sink, mode="w"))
        sink.finish()
    finally:
        _staging.put(buffer)


class _StagedDirectFile:
    """A write-only file object for ``pa.PythonFile``: bytes gather in the staging buffer, and each full
    buffer goes to the disk in one aligned write. Arrow hands the column data over as buffers, without
    copies, so each byte is copied once, into the staging buffer."""

    def __init__(self, fd: int, buffer: mmap.mmap) -> None:
        self._fd = fd
        self._view = memoryview(buffer)
        self._fill = 0
        self._size = 0
        self.closed = False

    def write(self, data: bytes | pa.Buffer) -> int:
        source = memoryview(data).cast("B")
        done, total, room = 0, len(source), len(self._view)
        while done < total:
            take = min(total - done, room - self._fill)
            self._view[self._fill : self._fill + take] = source[done : done + take]
            self._fill += take
            done += take
            if self._fill == room:
                self._drain(room)
        self._size += total
        return total

    def finish(self) -> None:
        """Write what is left, padded to the alignment, then cut the file to its true size."""
        if self._fill:
            padded = -(-self._fill // ALIGN) * ALIGN
            self._view[self._fill : padded] = bytes(padded - self._fill)  # zeros, not stale memory
            self._drain(padded)
        os.ftruncate(self._fd, self._size)

    def _drain(self, length: int) -> None:
        done = 0
        while done < length:
            done += os.write(self._fd, self._view[done:length])
        self._fill = 0

    def tell(self) -> int:
        return self._size

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False
