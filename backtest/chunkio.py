"""A chunk's results as one self-describing Parquet file (the cache's on-disk format).

A chunk produces several tables of different lengths; they travel together as one file so that a cached
chunk is one atomic object. The file holds a single row whose columns are the tables (each a list of
structs), plus the chunk's symbols and timings in the schema metadata. It is plain Parquet: no pickle, so a
cache folder received from elsewhere cannot run code when read.
"""

from __future__ import annotations

import io
import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from backtest.errors import DataError
from backtest.study import ChunkResult

FORMAT = "backtest.chunk-result/1"


def chunk_to_table(result: ChunkResult) -> pa.Table:
    columns = {}
    for name in ChunkResult.TABLES:
        table = pa.Table.from_pandas(getattr(result, name), preserve_index=False).combine_chunks()
        struct = pa.StructArray.from_arrays(
            [c.chunk(0) if c.num_chunks else pa.array([], c.type) for c in table.columns],
            fields=list(table.schema),
        )
        columns[name] = pa.ListArray.from_arrays(pa.array([0, len(struct)], pa.int32()), struct)
    meta = {
        "format": FORMAT,
        "symbols": list(result.symbols),
        "timings": result.timings,
    }
    return pa.table(columns).replace_schema_metadata({"backtest": json.dumps(meta)})


def chunk_from_table(table: pa.Table) -> ChunkResult:
    raw = (table.schema.metadata or {}).get(b"backtest")
    meta = json.loads(raw) if raw else {}
    if meta.get("format") != FORMAT:
        raise DataError(f"not a chunk result file (format {meta.get('format')!r}, expected {FORMAT!r})")
    frames = {}
    for name in ChunkResult.TABLES:
        struct = table.column(name).chunk(0).values
        flat = pa.Table.from_arrays(struct.flatten(), names=[f.name for f in struct.type])
        frames[name] = flat.to_pandas()
    if "symbol" in frames["oos_returns"]:
        frames["oos_returns"]["symbol"] = pd.Categorical(
            frames["oos_returns"]["symbol"], categories=meta["symbols"]
        )
    return ChunkResult(symbols=tuple(meta["symbols"]), timings=dict(meta["timings"]), **frames)


def chunk_to_bytes(result: ChunkResult) -> bytes:
    # lz4 rather than zstd: every chunk is encoded once and decoded at least once (collect), and on W lz4
    # saves about a third of both for 8 % larger files
    sink = io.BytesIO()
    pq.write_table(chunk_to_table(result), sink, compression="lz4")
    return sink.getvalue()


def chunk_from_bytes(data: bytes) -> ChunkResult:
    return chunk_from_table(pq.read_table(io.BytesIO(data)))
