"""Writing a study's results: merged tables as Parquet and a JSON summary, every file atomically.

The out-of-sample returns of a whole market run to tens of millions of rows, so they are streamed into their
Parquet file chunk by chunk while the small tables are merged in memory.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from backtest.chunkio import chunk_from_bytes
from backtest.profiling import wall_timings
from backtest.study import ChunkResult, StudyPlan, StudyResult, combine

OOS_SCHEMA = pa.schema(
    [
        ("date", pa.timestamp("ms")),
        ("symbol", pa.dictionary(pa.int32(), pa.string())),
        ("fold", pa.int16()),
        ("ret", pa.float64()),
        ("traded", pa.float64()),
        ("held", pa.float64()),
    ]
)


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def read_chunks(paths: Iterable[Path]) -> Iterator[ChunkResult]:
    """Chunk result files decoded one at a time, so only one is in memory."""
    for path in paths:
        yield chunk_from_bytes(Path(path).read_bytes())


def collect(plan: StudyPlan, chunks: Iterable[ChunkResult], out: Path) -> StudyResult:
    """Merge chunk results into ``out``: oos_returns streamed, the other tables written after the merge."""
    out.mkdir(parents=True, exist_ok=True)
    target = out / "oos_returns.parquet"
    tmp = _tmp(target)
    writer = pq.ParquetWriter(tmp, OOS_SCHEMA, compression="zstd")
    try:

        def sink(frame: pd.DataFrame) -> None:
            writer.write_table(pa.Table.from_pandas(frame, schema=OOS_SCHEMA, preserve_index=False))

        result = combine(plan, chunks, oos_sink=sink)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    writer.close()
    os.replace(tmp, target)
    result.save(out)
    return result


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null (JSON has no such numbers)."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    tmp.write_text(json.dumps(_clean(data), indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)
    return path


def study_figures(result: StudyResult) -> dict[str, Any]:
    """The headline numbers of a finished study, for summary.json and the artifacts."""
    sel = result.selections
    chosen = sel[sel["basis"] != "skipped"]
    return {
        "symbols_with_results": len(result.symbol_metrics),
        "selections": len(chosen),
        "skipped_symbol_folds": int((sel["basis"] == "skipped").sum()),
        "in_sample_fallbacks": int((sel["basis"] == "in_sample").sum()),
        "mean_in_sample_score": float(chosen["is_score"].mean()) if len(chosen) else None,
        "mean_validation_score": float(chosen["val_score"].mean()) if len(chosen) else None,
        "mean_test_score": float(chosen["test_score"].mean()) if len(chosen) else None,
        "mean_degradation": float(chosen["degradation"].mean()) if len(chosen) else None,
        "portfolio": result.portfolio_metrics,
        "benchmark": result.benchmark_metrics,
        "oos_start": str(result.portfolio["date"].iloc[0].date()) if len(result.portfolio) else None,
        "oos_end": str(result.portfolio["date"].iloc[-1].date()) if len(result.portfolio) else None,
    }


def chunk_row(name: str, r: ChunkResult) -> dict[str, Any]:
    """One chunk's figures for the per-chunk table artifact."""
    m = r.symbol_metrics
    return {
        "chunk": name,
        "symbols": len(r.symbols),
        "with_results": len(m),
        "oos_rows": len(r.oos_returns),
        "mean_sharpe": round(float(m["sharpe"].mean()), 4) if len(m) else None,
        "mean_total_return": round(float(m["total_return"].mean()), 4) if len(m) else None,
        "compute_seconds": round(sum(wall_timings(r.timings).values()), 3),
    }
