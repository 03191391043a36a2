"""Point-in-time membership files (``symbol,start,end``): who may be held on which day.

Read and checked once, at the start, with errors that name the file, the line and the problem; the file's
normalised content is part of the study's cache key, so editing it recomputes what it changes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from backtest.errors import DataError

COLUMNS = ("symbol", "start", "end")


def read_universe(path: Path | str) -> pd.DataFrame:
    """The membership intervals (both ends inclusive; an empty end: still a member), one row per interval."""
    path = Path(path)
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except FileNotFoundError:
        raise DataError(f"{path}: no such universe file") from None
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: not a CSV file of symbol,start,end ({exc})") from None
    raw.columns = [c.strip().lower() for c in raw.columns]
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        raise DataError(
            f"{path}: the universe file needs the columns symbol,start,end; missing {', '.join(missing)}"
        )
    rows = []
    for n, (symbol, start, end) in enumerate(raw[list(COLUMNS)].itertuples(index=False), start=2):
        symbol = symbol.strip()
        if not symbol:
            raise DataError(f"{path}, line {n}: the symbol is empty")
        first = _date(path, n, "start", start)
        if first is None:
            raise DataError(f"{path}, line {n}: the start date is empty (write YYYY-MM-DD)")
        last = _date(path, n, "end", end)
        if last is not None and last < first:
            raise DataError(f"{path}, line {n}: end {last.date()} is before start {first.date()}")
        rows.append((symbol, first, last))
    if not rows:
        raise DataError(f"{path}: the universe file has no rows")
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _date(path: Path, line: int, name: str, text: str) -> pd.Timestamp | None:
    text = text.strip()
    if not text:
        return None
    try:
        return pd.Timestamp(text).normalize()
    except (ValueError, TypeError):
        raise DataError(f"{path}, line {line}: {name} {text!r} is not a date (write YYYY-MM-DD)") from None


def universe_digest(frame: pd.DataFrame) -> str:
    """A hash of the intervals, whatever the file's formatting and row order."""
    text = frame.sort_values(list(COLUMNS), na_position="first").to_csv(index=False, date_format="%Y-%m-%d")
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def membership_mask(frame: pd.DataFrame, symbols: tuple[str, ...], dates: np.ndarray) -> np.ndarray:
    """Symbols x days: True where the symbol is a member that day (symbols absent from the file: never)."""
    mask = np.zeros((len(symbols), len(dates)), dtype=np.bool_)
    position = {s: i for i, s in enumerate(symbols)}
    days = dates.astype("datetime64[D]")
    for symbol, start, end in frame.itertuples(index=False):
        i = position.get(symbol)
        if i is None:
            continue
        lo = np.searchsorted(days, np.datetime64(start.date(), "D"), side="left")
        hi = (
            len(days)
            if end is None or pd.isna(end)
            else np.searchsorted(days, np.datetime64(end.date(), "D"), side="right")
        )
        mask[i, lo:hi] = True
    return mask


def members_without_prices(frame: pd.DataFrame, symbols: tuple[str, ...]) -> list[str]:
    """Symbols of the universe file the store has no prices for (reported, not an error)."""
    known = set(symbols)
    return sorted({s for s in frame["symbol"] if s not in known})
