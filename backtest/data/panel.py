"""The in-memory shape of a chunk of prices: one calendar, 2-D arrays of symbols x bars.

Every strategy and kernel works on this shape. Missing bars (before listing, after delisting, occasional
missing days) are NaN in every price field; nothing is forward-filled, so no fake returns appear.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

PRICE_FIELDS: tuple[str, ...] = ("open", "high", "low", "close", "volume")


@dataclass(frozen=True, eq=False)
class PricePanel:
    """OHLCV of several symbols on a shared, sorted calendar of trading days.

    ``dates`` is ``datetime64[D]``; each price array is float64 of shape ``(len(symbols), len(dates))`` and
    C-contiguous, so one symbol's history is one contiguous row (what the numba kernels iterate over).
    """

    symbols: tuple[str, ...]
    dates: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray

    def __post_init__(self) -> None:
        shape = (len(self.symbols), len(self.dates))
        if self.dates.dtype != np.dtype("datetime64[D]"):
            raise TypeError(f"PricePanel.dates must be datetime64[D], got {self.dates.dtype}")
        if len(self.dates) > 1 and not (np.diff(self.dates.astype(np.int64)) > 0).all():
            raise ValueError("PricePanel.dates must be strictly increasing")
        for name in PRICE_FIELDS:
            arr = getattr(self, name)
            if arr.shape != shape or arr.dtype != np.float64 or not arr.flags.c_contiguous:
                raise ValueError(
                    f"PricePanel.{name} must be a C-contiguous float64 array of shape {shape}, "
                    f"got {arr.dtype} {arr.shape}"
                )
            if arr.flags.writeable:
                # a read-only view: prices are never written, and the kernels then see one type of array,
                # whether the prices were fetched from the store or mapped from a price file (each type is
                # another compilation of every kernel, on a machine that never ran them)
                arr = arr.view()
                arr.flags.writeable = False
                object.__setattr__(self, name, arr)

    @property
    def n_symbols(self) -> int:
        return len(self.symbols)

    @property
    def n_bars(self) -> int:
        return len(self.dates)

    @property
    def valid(self) -> np.ndarray:
        """Boolean mask (symbols x bars) of the bars a symbol actually has."""
        return ~np.isnan(self.close)

    @classmethod
    def from_frames(cls, frames: Mapping[str, pd.DataFrame]) -> PricePanel:
        """Align per-symbol frames (columns ``date`` and the OHLCV fields) on the union of their dates."""
        symbols = tuple(frames)
        date_arrays = [np.asarray(f["date"].to_numpy(), dtype="datetime64[D]") for f in frames.values()]
        dates = np.unique(np.concatenate(date_arrays)) if date_arrays else np.array([], "datetime64[D]")
        arrays = {name: np.full((len(symbols), len(dates)), np.nan) for name in PRICE_FIELDS}
        for i, (frame, fdates) in enumerate(zip(frames.values(), date_arrays, strict=True)):
            pos = np.searchsorted(dates, fdates)
            for name in PRICE_FIELDS:
                arrays[name][i, pos] = frame[name].to_numpy(dtype=np.float64)
        return cls(symbols=symbols, dates=dates, **arrays)

    def select(self, symbols: Sequence[str]) -> PricePanel:
        """A panel of a subset of symbols, on the calendar of the days at least one of them trades."""
        index = {s: i for i, s in enumerate(self.symbols)}
        rows = np.array([index[s] for s in symbols], dtype=np.int64)
        keep = ~np.isnan(self.close[rows]).all(axis=0) if len(rows) else np.zeros(self.n_bars, bool)
        return PricePanel(
            symbols=tuple(symbols),
            dates=self.dates[keep],
            **{name: np.ascontiguousarray(getattr(self, name)[rows][:, keep]) for name in PRICE_FIELDS},
        )

    def frame(self, symbol: str) -> pd.DataFrame:
        """One symbol's own bars as a frame indexed by date (no NaN rows)."""
        i = self.symbols.index(symbol)
        ok = ~np.isnan(self.close[i])
        return pd.DataFrame(
            {name: getattr(self, name)[i, ok] for name in PRICE_FIELDS},
            index=pd.DatetimeIndex(self.dates[ok], name="date"),
        )
