"""Walk-forward folds: consecutive train, validate and test windows, and their layout on a calendar.

Windows are date ranges with exclusive ends, defined from the study's first date in whole months, so that
every chunk of symbols sees exactly the same folds whatever its own calendar. Fold k starts ``k`` test
lengths after the first date (or at the first date for every fold with ``anchored``), so test windows tile
the history without gaps or overlaps. The last test window is cut at the end of the data.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from backtest.config import FoldSpec
from backtest.errors import ConfigError

WINDOWS: tuple[str, ...] = ("train", "validate", "test")


@dataclass(frozen=True)
class Fold:
    """One fold's three windows, each ``[start, end)``."""

    index: int
    train_start: dt.date
    train_end: dt.date
    validate_start: dt.date
    validate_end: dt.date
    test_start: dt.date
    test_end: dt.date

    def window(self, name: str) -> tuple[dt.date, dt.date]:
        return getattr(self, f"{name}_start"), getattr(self, f"{name}_end")

    def to_dict(self) -> dict:
        return {k: (v.isoformat() if isinstance(v, dt.date) else v) for k, v in asdict(self).items()}


def _add_months(start: dt.date, months: int) -> dt.date:
    return (pd.Timestamp(start) + pd.DateOffset(months=months)).date()


def make_folds(first: dt.date, last: dt.date, spec: FoldSpec) -> list[Fold]:
    """Folds between ``first`` and ``last`` (inclusive) dates; an error says how to fit at least one."""
    train_m, validate_m, test_m = spec.months()
    end = last + dt.timedelta(days=1)
    folds: list[Fold] = []
    k = 0
    while True:
        offset = k * test_m
        train_start = first if spec.anchored else _add_months(first, offset)
        train_end = _add_months(first, offset + train_m)
        validate_end = _add_months(first, offset + train_m + validate_m)
        test_end = min(_add_months(first, offset + train_m + validate_m + test_m), end)
        if validate_end >= end:
            break
        folds.append(Fold(k, train_start, train_end, train_end, validate_end, validate_end, test_end))
        k += 1
    if not folds:
        years = (last - first).days / 365.25
        raise ConfigError(
            f"the data from {first} to {last} ({years:.1f} years) is too short for one fold of "
            f"{spec.train_years:g}+{spec.validate_years:g}+{spec.test_years:g} years (train+validate+test): "
            "use shorter windows (e.g. --train-years 2 --validate-years 1 --test-years 1) or more history"
        )
    return folds


@dataclass(frozen=True, eq=False)
class FoldLayout:
    """Folds mapped onto one calendar: segment boundaries (calendar indices) and windows as segment ranges.

    The segments are the pieces between consecutive distinct window boundaries; window ``3*k + w`` (w = 0
    train, 1 validate, 2 test) of fold k covers segments ``win_segs[3*k + w, 0] <= s < win_segs[..., 1]``.
    """

    seg_bounds: np.ndarray
    win_segs: np.ndarray
    win_bounds: np.ndarray

    @classmethod
    def build(cls, folds: Sequence[Fold], dates: np.ndarray) -> FoldLayout:
        edges = sorted({d for f in folds for name in WINDOWS for d in f.window(name)})
        edge_pos = {d: i for i, d in enumerate(edges)}
        edge_dates = np.array(edges, dtype="datetime64[D]")
        seg_bounds = np.searchsorted(dates, edge_dates, side="left").astype(np.int64)
        win_segs = np.array(
            [[edge_pos[f.window(n)[0]], edge_pos[f.window(n)[1]]] for f in folds for n in WINDOWS],
            dtype=np.int64,
        ).reshape(-1, 2)
        return cls(seg_bounds=seg_bounds, win_segs=win_segs, win_bounds=seg_bounds[win_segs])

    def window_bars(self, fold: int, window: str) -> tuple[int, int]:
        """Calendar index range ``[lo, hi)`` of a fold's window."""
        lo, hi = self.win_bounds[3 * fold + WINDOWS.index(window)]
        return int(lo), int(hi)


def check_warmup(folds: Sequence[Fold], warmup_bars: int, strategy: str) -> None:
    """Refuse train windows shorter than the slowest indicator: they could never trade."""
    if not folds or warmup_bars <= 0:
        return
    f = folds[0]
    bars = np.busday_count(f.train_start, f.train_end)
    if bars <= warmup_bars:
        raise ConfigError(
            f"the train window ({f.train_start} to {f.train_end}, about {bars} trading days) is not longer than "
            f"the slowest indicator of {strategy} ({warmup_bars} bars): lengthen --train-years or shorten the "
            "indicator windows"
        )
