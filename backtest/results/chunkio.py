"""A chunk's results as one self-describing Parquet file (the cache's on-disk format).

A chunk produces several tables of different lengths; they travel together as one file so that a cached
chunk is one atomic object. The file's rows are the chunk's out-of-sample returns (hundreds of thousands of
rows: the only big table), as plain top-level columns. The small tables (a few thousand rows each) ride in the
Parquet footer's key-value metadata, each as a compressed Arrow IPC stream (base64, since Parquet metadata
values are text), beside the chunk's symbols and timings (JSON). It stays plain Parquet: no pickle, so a cache
folder received from elsewhere cannot run code when read.

Why this layout (measured on 250-symbol chunks of the reference workload W, old and new side by side in one
script on a shared 2-core machine): the earlier layout, one row whose columns were the tables as
``list<struct>``, cost several times more CPU to encode and to decode, most of it in the nested writer and
reader, than top-level non-nullable columns with NaN kept as NaN (no validity bitmaps, no definition levels),
no statistics, a dictionary only for dates and symbols and lz4, for a file of the same size. Every chunk is
encoded in a worker thread beside the numba kernels: Parquet and IPC writers into Arrow's own buffers run
outside the GIL, so the encode holds it only briefly (``py-spy --gil``; the old encode, writing into a Python
``BytesIO``, held it several times longer). The small tables in the footer cost nothing to the row data, and
a reader that needs only them (the database writer) reads only the footer; padding them into the row data
instead (extra row groups, or columns of nulls) was several times slower than the whole encode.

A file of another format (format 1, the nested layout of earlier versions; format 2, without the trials'
returns) is refused with a DataError. The
cache never meets one: a chunk's cache key covers this module's code, so its files are misses and pruned.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from backtest.engine.study import ChunkResult
from backtest.errors import DataError

FORMAT = "backtest.chunk-result/3"
_META = b"backtest"
_TABLE_PREFIX = "backtest.table."
#: every table but the out-of-sample returns: small, kept in the footer
SMALL_TABLES: tuple[str, ...] = tuple(name for name in ChunkResult.TABLES if name != "oos_returns")
#: lz4 for the rows: each chunk is encoded once and decoded at least once (collect); on W, zstd level 1
#: writes the returns a little smaller but takes much longer
_COMPRESSION = "lz4"
_IPC_OPTIONS = ipc.IpcWriteOptions(compression="lz4")


def _column_array(column: pd.Series) -> pa.Array:
    """One frame column as an Arrow array, without a validity bitmap wherever the column cannot be missing.

    NumPy number and date columns go over as they are (NaN stays NaN, zero-copy); a categorical becomes a
    dictionary whose values are all its categories, so unused ones survive the round trip.
    """
    dtype = column.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        codes = column.cat.codes.to_numpy()
        missing = codes < 0
        return pa.DictionaryArray.from_arrays(
            pa.array(codes, mask=missing if missing.any() else None),
            pa.array(np.asarray(dtype.categories, dtype=object)),  # symbols: Arrow strings
            ordered=bool(dtype.ordered),
        )
    if isinstance(dtype, np.dtype) and dtype.kind == "M":
        # the integers as they are (zero-copy), NaT as null
        ticks = column.to_numpy().view(np.int64)
        missing = ticks == np.iinfo(np.int64).min
        unit = np.datetime_data(dtype)[0]
        return pa.array(ticks, mask=missing if missing.any() else None).view(pa.timestamp(unit))
    if isinstance(dtype, np.dtype) and dtype.kind in "biuf":
        return pa.array(column.to_numpy())
    return pa.array(column, from_pandas=True)


def _rows_table(frame: pd.DataFrame) -> pa.Table:
    arrays = [_column_array(frame[name]) for name in frame.columns]
    fields = [
        pa.field(str(name), a.type, nullable=a.null_count > 0)
        for name, a in zip(frame.columns, arrays, strict=True)
    ]
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _encode_small(frame: pd.DataFrame) -> str:
    # without pandas' metadata: the frame is rebuilt from the Arrow types alone, exactly as written
    table = _rows_table(frame)
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema, options=_IPC_OPTIONS) as writer:
        writer.write_table(table)
    return base64.b64encode(sink.getvalue()).decode("ascii")


def _decode_small(text: bytes) -> pd.DataFrame:
    with ipc.open_stream(base64.b64decode(text, validate=True)) as reader:
        return reader.read_all().to_pandas(split_blocks=True)


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """Symbols and dates repeat on every row: a dictionary makes them small. A dictionary for the numbers
    (returns nearly all distinct, trades and holdings mostly 0 and 1) costs more time (hashing every value)
    than it saves space over plain values and lz4."""
    return [f.name for f in schema if pa.types.is_dictionary(f.type) or pa.types.is_timestamp(f.type)]


def oos_rows(result: ChunkResult) -> pa.Table:
    """A chunk's out-of-sample rows as the Arrow table its result file holds (and ``read_chunk`` with
    ``oos_as_arrow`` gives back): mostly zero-copy views of the result's columns."""
    return _rows_table(result.oos_returns)


def chunk_to_bytes(result: ChunkResult, rows: pa.Table | None = None) -> bytes:
    """The chunk's result file; ``rows`` is ``oos_rows(result)`` when the caller already has it."""
    meta = {"format": FORMAT, "symbols": list(result.symbols), "timings": result.timings}
    rows = (oos_rows(result) if rows is None else rows).replace_schema_metadata({_META: json.dumps(meta)})
    sink = pa.BufferOutputStream()  # Arrow's own buffer: a Python file object would take the GIL per write
    with pq.ParquetWriter(
        sink,
        rows.schema,
        compression=_COMPRESSION,
        use_dictionary=_dictionary_columns(rows.schema),
        write_statistics=False,
    ) as writer:
        writer.write_table(rows)
        # footer entries of their own: in the schema's metadata they would be stored twice (the Arrow schema
        # Parquet keeps for Arrow readers holds a copy of it)
        writer.add_key_value_metadata(
            {_TABLE_PREFIX + name: _encode_small(getattr(result, name)) for name in SMALL_TABLES}
        )
    return sink.getvalue().to_pybytes()


def _open(source: bytes | Path | str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(pa.BufferReader(source) if isinstance(source, bytes) else source)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"not a chunk result file: {exc}") from None


def _meta_of(file: pq.ParquetFile) -> tuple[str | None, dict[bytes, bytes], dict[str, Any]]:
    kv = file.metadata.metadata or {}
    raw = (file.schema_arrow.metadata or {}).get(_META)
    try:
        meta = json.loads(raw) if raw else {}
    except ValueError:
        meta = {}
    return (meta.get("format") if isinstance(meta, dict) else None), kv, meta


def _symbol_categories(frame: pd.DataFrame, symbols: Sequence[str]) -> None:
    """The oos ``symbol`` column's categories are the chunk's symbols (a file without rows keeps none)."""
    if "symbol" not in frame:
        return
    column = frame["symbol"]
    if isinstance(column.dtype, pd.CategoricalDtype):
        categories = column.cat.categories
        if len(categories) == len(symbols) and categories.to_numpy(dtype=object).tolist() == list(symbols):
            return
    frame["symbol"] = pd.Categorical(column, categories=list(symbols))


def read_tables(
    source: bytes | Path | str, names: Sequence[str], *, oos_as_arrow: bool = False
) -> tuple[tuple[str, ...], dict[str, float], dict[str, pd.DataFrame | pa.Table]]:
    """Some tables of a chunk result file: (symbols, timings, frames by name), reading only what they need.

    Without ``oos_returns`` among ``names`` only the footer is read. With ``oos_as_arrow`` the out-of-sample
    rows stay an Arrow table (what ``backtest.results.outputs.collect`` streams into its own Parquet file without a
    detour through pandas). Anything that is not a chunk result of a known format raises DataError.
    """
    unknown = set(names) - set(ChunkResult.TABLES)
    if unknown:
        raise ValueError(f"no such chunk result tables: {sorted(unknown)}")
    with _open(source) as file:
        fmt, kv, meta = _meta_of(file)
        if fmt != FORMAT:
            raise DataError(f"not a chunk result file (format {fmt!r}, expected {FORMAT!r})")
        try:
            symbols = tuple(meta["symbols"])
            timings = {str(k): float(v) for k, v in meta.get("timings", {}).items()}
            frames: dict[str, pd.DataFrame | pa.Table] = {}
            for name in names:
                if name != "oos_returns":
                    frames[name] = _decode_small(kv[(_TABLE_PREFIX + name).encode()])
            if "oos_returns" in names:
                rows = file.read().replace_schema_metadata(None)
                frames["oos_returns"] = rows if oos_as_arrow else rows.to_pandas(split_blocks=True)
        except (pa.ArrowException, OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"unreadable chunk result file ({fmt}): {type(exc).__name__}: {exc}") from None
    oos = frames.get("oos_returns")
    if isinstance(oos, pd.DataFrame):
        _symbol_categories(oos, symbols)
    return symbols, timings, frames


def read_chunk(source: bytes | Path | str, *, oos_as_arrow: bool = False) -> ChunkResult:
    """A whole chunk result; with ``oos_as_arrow`` its ``oos_returns`` is an Arrow table (see read_tables)."""
    symbols, timings, frames = read_tables(source, ChunkResult.TABLES, oos_as_arrow=oos_as_arrow)
    return ChunkResult(symbols=symbols, timings=timings, **frames)  # type: ignore[arg-type]


def chunk_from_bytes(data: bytes) -> ChunkResult:
    return read_chunk(data)
