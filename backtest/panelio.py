"""A chunk's prices as one columnar file: the load/cache step's hand-over between tasks.

One row per symbol, each price field a fixed-size list over the chunk's calendar (NaN where the symbol has no
bar), the calendar in the schema metadata: reading it back is a reshape, not a pivot.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from backtest.errors import DataError
from backtest.panel import PRICE_FIELDS, PricePanel

FORMAT = "backtest.panel/1"


def write_panel(panel: PricePanel, path: Path) -> Path:
    """Write atomically (temporary file, then rename): a reader never sees half a chunk."""
    n = panel.n_bars
    columns = {"symbol": pa.array(panel.symbols, pa.string())}
    for name in PRICE_FIELDS:
        values = pa.array(getattr(panel, name).ravel(), pa.float64(), from_pandas=False)
        columns[name] = pa.FixedSizeListArray.from_arrays(values, n)
    meta = {"format": FORMAT, "dates": panel.dates.astype(np.int64).tolist()}
    table = pa.table(columns).replace_schema_metadata({"backtest": json.dumps(meta)})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, compression="none", use_dictionary=False)
    os.replace(tmp, path)
    return path


def read_panel(path: Path) -> PricePanel:
    table = pq.read_table(path)
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
