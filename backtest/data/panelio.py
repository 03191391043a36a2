"""A chunk's prices as one columnar file: the study's price cache, made once per chunk of data.

One row per symbol, each price field a fixed-size list over the chunk's calendar (NaN where the symbol has no
bar), the calendar in the schema metadata: reading it back is a reshape, not a pivot.

The file is Arrow IPC, uncompressed, and is read memory-mapped: the price arrays of the panel are views of
the file's pages, so a chunk task reading its prices from here costs no decoding and no copy (far less than
reading the per-symbol files of the store). Parquet files of the same layout, written by earlier versions,
are still read.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from backtest.atomic import atomic_path
from backtest.data.directio import write_uncached
from backtest.data.panel import PRICE_FIELDS, PricePanel
from backtest.errors import DataError

if TYPE_CHECKING:
    from backtest.db.prices import PriceSource

FORMAT = "backtest.panel/1"
_PARQUET_MAGIC = b"PAR1"


def write_panel(panel: PricePanel, path: Path, read_soon: bool = False) -> Path:
    """Write atomically (temporary file, then rename): a reader never sees half a chunk.

    Around the page cache where the file system allows (backtest.data.directio): the run that writes the file
    computes from the panel it has, and memory new to a VM costs more than the disk write. With ``read_soon``
    (a later stage of the same run reads it, as a cross-sectional study's portfolios do) it goes through the
    page cache, where that reading finds it instead of going back to the disk.
    """
    n = panel.n_bars
    columns = {"symbol": pa.array(panel.symbols, pa.string())}
    for name in PRICE_FIELDS:
        values = pa.array(getattr(panel, name).ravel(), pa.float64(), from_pandas=False)
        columns[name] = pa.FixedSizeListArray.from_arrays(values, n)
    meta = {"format": FORMAT, "dates": panel.dates.astype(np.int64).tolist()}
    table = pa.table(columns).replace_schema_metadata({"backtest": json.dumps(meta)})
    with atomic_path(path) as tmp:
        if read_soon:
            with pa.OSFile(str(tmp), "wb") as sink:
                _write_ipc(table, sink)
        else:
            write_uncached(tmp, lambda sink: _write_ipc(table, sink))
    return path


def _write_ipc(table: pa.Table, sink: pa.NativeFile) -> None:
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def _read_table(path: Path) -> pa.Table:
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic == _PARQUET_MAGIC:
        return pq.read_table(path)
    try:
        with pa.memory_map(str(path)) as source:
            return pa.ipc.open_file(source).read_all()  # buffers keep the mapping alive after close
    except pa.ArrowInvalid as exc:
        raise DataError(f"{path} is not a chunk price file ({exc})") from None


def read_panel(path: Path) -> PricePanel:
    table = _read_table(path)
    raw = (table.schema.metadata or {}).get(b"backtest")
    meta = json.loads(raw) if raw else {}
    if meta.get("format") != FORMAT:
        raise DataError(f"{path} is not a chunk price file (format {meta.get('format')!r})")
    dates = np.array(meta["dates"], dtype=np.int64).astype("datetime64[D]")
    n_sym, n_bars = table.num_rows, len(dates)
    arrays = {}
    for name in PRICE_FIELDS:
        flat = table.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
        arrays[name] = np.ascontiguousarray(flat.reshape(n_sym, n_bars), dtype=np.float64)
    return PricePanel(symbols=tuple(table.column("symbol").to_pylist()), dates=dates, **arrays)


class PriceColumns(NamedTuple):
    """Some price fields of a chunk file, as views of its memory map (nothing copied, nothing paged in)."""

    symbols: tuple[str, ...]
    dates: np.ndarray
    fields: dict[str, np.ndarray]


def read_columns(path: Path, fields: Sequence[str]) -> PriceColumns:
    """Only ``fields`` of a chunk price file: a whole-market stage needs the closes of every chunk, and reading
    whole panels pages in (and copies) the four fields it never looks at."""
    table = _read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(b"backtest", b"{}"))
    if meta.get("format") != FORMAT:
        raise DataError(f"{path} is not a chunk price file (format {meta.get('format')!r})")
    dates = np.array(meta["dates"], dtype=np.int64).astype("datetime64[D]")
    n_sym, n_bars = table.num_rows, len(dates)
    arrays = {}
    for name in fields:
        column = table.column(name)
        chunk = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
        flat = chunk.flatten().to_numpy(zero_copy_only=False)
        arrays[name] = flat.reshape(n_sym, n_bars)
    return PriceColumns(tuple(table.column("symbol").to_pylist()), dates, arrays)


def prices_file(cache_dir: Path, data_fingerprint: str, last: dt.date) -> Path:
    """Content-addressed: the same symbols' data up to the same date is the same file."""
    return cache_dir / f"prices-{data_fingerprint}-{last.isoformat()}.arrow"


def chunk_prices(
    source: PriceSource,
    symbols: Sequence[str],
    data_fingerprint: str,
    last: dt.date,
    cache_dir: Path,
    read_soon: bool = False,
) -> tuple[PricePanel, Future[Path] | None]:
    """A chunk's prices, and the write of its price file when they were fetched (``None`` when read from it).

    They come from the chunk's price file when it exists. Otherwise they are fetched from ``source`` (the
    store or a database) and returned at once, and the file is written on a thread of its own while the chunk
    computes: the caller waits on the future before its chunk counts as done (it raises what the write
    raised). Reading the file back would only copy in what is already in memory (with a page fault for
    every page of it), and writing it in the chunk's own thread kept that thread waiting on the disk. The
    file outlives the run (until the cache is pruned): a study that changes only its strategy, grid or folds
    reads its prices from there.
    """
    path = prices_file(cache_dir, data_fingerprint, last)
    if path.exists():
        return read_panel(path), None
    panel = source.load(list(symbols), end=last)
    return panel, _file_writer().submit(write_panel, panel, path, read_soon)


_writer: tuple[int, ThreadPoolExecutor] | None = None
_writer_lock = threading.Lock()


def _file_writer() -> ThreadPoolExecutor:
    """This process's price-file writer (made anew in a forked child, whose copy has no threads)."""
    global _writer
    with _writer_lock:
        if _writer is None or _writer[0] != os.getpid():
            _writer = (os.getpid(), ThreadPoolExecutor(max_workers=4, thread_name_prefix="price-file"))
        return _writer[1]
