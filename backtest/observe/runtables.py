"""A run's output folder as the report reads it: each result table read at most once, only the columns it
needs; and the naming of the grid's parameters the plots and the tables share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

#: table -> the columns the plots read from it, besides every ``param_*`` column (other tables: all columns)
PLOT_COLUMNS: dict[str, tuple[str, ...]] = {
    "portfolio.parquet": (
        "date",
        "fold",
        "ret",
        "equity",
        "benchmark_ret",
        "benchmark_equity",
        "n_holdings",
        "turnover",
    ),
    "selections.parquet": ("fold", "basis", "is_score", "val_score", "test_score", "test_start"),
    "grid_scores.parquet": ("window", "mean_score"),
}


class RunTables:
    """The result tables of one output folder, each read at most once and only in the columns the plots use
    (the selections feed two plots; their symbol column, the widest, is never read)."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self._frames: dict[str, pd.DataFrame | None] = {}

    def __getitem__(self, name: str) -> pd.DataFrame | None:
        """The table ``name`` (None when the run did not write it)."""
        if name not in self._frames:
            self._frames[name] = self._read(name)
        return self._frames[name]

    def _read(self, name: str) -> pd.DataFrame | None:
        path = self.out / name
        if not path.exists():
            return None
        file = pq.ParquetFile(path)
        wanted = PLOT_COLUMNS.get(name)
        if wanted is None:
            return file.read().to_pandas()
        names = file.schema_arrow.names
        columns = [c for c in names if c in wanted or c.startswith("param_")]
        return file.read(columns=columns).to_pandas()


def param_columns(frame: pd.DataFrame) -> list[str]:
    """The parameters that vary, most distinct values first (a fixed flag such as ``short`` has nothing to
    show)."""
    cols = [c for c in frame.columns if c.startswith("param_")]
    varying = [c for c in cols if frame[c].nunique(dropna=True) > 1]
    return sorted(varying, key=lambda c: -frame[c].nunique(dropna=True))


def param_label(value: Any) -> str:
    """A parameter value as a tick label: numbers compact, names (a ranking study's side, weighting) as
    they are."""
    return f"{value:g}" if isinstance(value, int | float | np.number) else str(value)
