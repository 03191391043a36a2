"""Row checks on freshly read price files: bad rows are quarantined with a reason, good rows go on.

Validation happens once, at the entry point, so everything downstream (store, kernels, metrics) can rely on
clean data: strictly increasing dates, positive prices with low <= open, close <= high, and non-negative
volume. One bad row never costs the file: it is rejected with its line number and a reason a person can act on,
and the rest of the file is kept. The checks are vectorised over the whole file (pyarrow/numpy masks); Python
only loops over the rejected rows to word their reasons.

Conventions:
- a row can fail several checks; its reason lists them all, separated by ``"; "``;
- ordering is checked only among rows that passed the row checks: a duplicate date keeps the first row, a row
  dated before the previous accepted row is rejected as out of order;
- a file whose good rows are strictly descending is reversed (newest-first downloads are common) and a note
  says so, instead of rejecting all but one row;
- zero volume is valid (halted or thin days exist in real data), blank lines are skipped with a note.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from backtest.csvformats import RawCsv, parse_csv_bytes, read_csv_file
from backtest.errors import DataError

__all__ = [
    "NUMERIC_FIELDS",
    "PRICE_FIELDS",
    "REJECTS_SCHEMA",
    "STORED_SCHEMA",
    "Problem",
    "ValidatedCsv",
    "validate",
    "validate_bytes",
    "validate_file",
]

PRICE_FIELDS: tuple[str, ...] = ("open", "high", "low", "close")
NUMERIC_FIELDS: tuple[str, ...] = (*PRICE_FIELDS, "volume")
#: The shape every validated table has, and what the store writes.
STORED_SCHEMA = pa.schema(
    [("date", pa.date32()), *((name, pa.float64()) for name in NUMERIC_FIELDS)],
)
REJECTS_SCHEMA = pa.schema([("line", pa.int64()), ("reason", pa.string()), ("raw", pa.string())])

# What pyarrow's string -> double cast accepts, minus nan/inf (rejected separately as non-finite).
_NUMBER_RE = r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$"
_DATE_FORMATS: tuple[str, ...] = ("%Y-%m-%d", "%Y%m%d")


@dataclass(frozen=True)
class Problem:
    """Something wrong with a file (``line`` None) or one of its rows."""

    file: str
    line: int | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "reason": self.reason}


@dataclass(frozen=True, eq=False)
class ValidatedCsv:
    """The good rows of one file (``table``, in ``STORED_SCHEMA``) and the rejected ones (``rejects``).

    ``rejects`` (``REJECTS_SCHEMA``: ``line``, ``reason``, ``raw`` = the row's text) is sorted by line. Both
    stay Arrow tables: building pandas frames would cost more than validating a clean file. Every data line of
    the file is accounted for: ``rows + rejected_rows + blank_lines == data_lines``.
    """

    path: Path
    layout: str
    symbol: str
    table: pa.Table
    rejects: pa.Table
    notes: tuple[str, ...]
    data_lines: int
    blank_lines: int
    source_size: int
    source_fingerprint: str

    @property
    def rows(self) -> int:
        return self.table.num_rows

    @property
    def rejected_rows(self) -> int:
        return self.rejects.num_rows

    def problems(self) -> list[Problem]:
        name = self.path.name
        lines = self.rejects["line"].to_pylist()
        reasons = self.rejects["reason"].to_pylist()
        return [Problem(name, line, reason) for line, reason in zip(lines, reasons, strict=True)]

    def rejects_frame(self) -> pd.DataFrame:
        return self.rejects.to_pandas()

    def frame(self) -> pd.DataFrame:
        """The good rows as a pandas frame (``date`` as datetime64)."""
        frame = self.table.to_pandas(date_as_object=False)
        frame["date"] = frame["date"].astype("datetime64[s]")
        return frame


def _mask(array: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A boolean pyarrow array as numpy, nulls counting as False."""
    return np.asarray(pc.fill_null(array, False).to_numpy(zero_copy_only=False), dtype=bool)


def _parse_numbers(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Values (NaN where unusable), missing mask, non-numeric mask.

    The fast path is one cast; only a column that fails it pays for trimming and a regex, so clean files cost
    a single pass per column.
    """
    missing = _mask(column.is_null())
    try:
        values = pc.cast(column, pa.float64())
    except pa.ArrowInvalid:
        trimmed = pc.utf8_trim_whitespace(column)
        missing |= _mask(pc.equal(trimmed, ""))
        numeric = pc.match_substring_regex(trimmed, _NUMBER_RE)
        values = pc.cast(pc.if_else(numeric, trimmed, pa.scalar(None, pa.string())), pa.float64())
    array = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)
    non_numeric = ~missing & ~np.isfinite(array)
    return array, missing, non_numeric


def _parse_dates(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Days since the epoch (int64, 0 where unusable), missing mask, bad-date mask.

    ISO dates go through one strict cast; otherwise each accepted format is parsed and formatted back, so that
    impossible dates such as 2013-02-30 (which strptime would roll over into March) are rejected.
    """
    missing = _mask(column.is_null())
    try:
        dates = pc.cast(column, pa.date32())
    except pa.ArrowInvalid:
        trimmed = pc.utf8_trim_whitespace(column)
        missing |= _mask(pc.equal(trimmed, ""))
        dates = pa.chunked_array([pa.nulls(len(column), pa.date32())])
        for fmt in _DATE_FORMATS:
            stamps = pc.strptime(trimmed, format=fmt, unit="s", error_is_null=True)
            exact = pc.equal(pc.strftime(stamps, format=fmt), trimmed)
            candidate = pc.if_else(exact, pc.cast(stamps, pa.date32()), pa.scalar(None, pa.date32()))
            dates = pc.coalesce(dates, candidate)
    valid = _mask(dates.is_valid())
    days = np.asarray(pc.fill_null(pc.cast(dates, pa.int32()), 0).to_numpy(zero_copy_only=False), np.int64)
    bad = ~missing & ~valid
    return days, missing, bad


def _text(column: pa.ChunkedArray, index: int) -> str:
    value = column[index].as_py()
    text = "" if value is None else str(value)
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _day(days: int) -> str:
    return str(np.datetime64(int(days), "D"))


def _raw_lines(table: pa.Table, rows: np.ndarray) -> list[str]:
    """The rejected rows' text, rebuilt from their cells (the table keeps the file's column order)."""
    if len(rows) == 0:
        return []
    taken = table.take(pa.array(rows, type=pa.int64()))
    cells = []
    for column in taken.columns:
        text = pc.fill_null(column, "")
        # Re-quote cells that needed quotes in the file, so the raw text still splits into the same cells.
        needs_quotes = pc.match_substring_regex(text, r'[,"]')
        quoted = pc.binary_join_element_wise('"', pc.replace_substring(text, '"', '""'), '"', "")
        cells.append(pc.if_else(needs_quotes, quoted, text))
    return pc.binary_join_element_wise(*cells, ",").to_pylist()


def _file_symbol(raw: RawCsv, name_column: pa.ChunkedArray | None) -> str:
    if name_column is None:
        symbol = raw.stem_symbol or ""
        if not symbol:
            raise DataError(f"cannot derive a symbol from the file name {raw.path.name!r}")
        return symbol
    names = pc.utf8_trim_whitespace(name_column)
    counts = pc.value_counts(pc.drop_null(pc.if_else(pc.equal(names, ""), None, names)))
    if len(counts) == 0:
        raise DataError(f"no symbol: the {raw.layout.symbol_field!r} column is empty on every row")
    # Most frequent name wins (first seen on ties): one mistyped row must not rename the whole file.
    values = counts.field("values").to_pylist()
    tallies = counts.field("counts").to_numpy()
    return str(values[int(np.argmax(tallies))])


def validate(raw: RawCsv) -> ValidatedCsv:
    """Check every row of a parsed file; DataError only when no symbol can be found for it."""
    table = raw.table
    n = table.num_rows
    reasons: defaultdict[int, list[str]] = defaultdict(list)

    def add(mask: np.ndarray, word: Callable[[int], str]) -> None:
        for i in np.flatnonzero(mask):
            reasons[int(i)].append(word(int(i)))

    name_field = raw.layout.symbol_field
    name_column = table[name_field] if name_field else None
    symbol = _file_symbol(raw, name_column)

    days, date_missing, date_bad = _parse_dates(table["date"])
    values: dict[str, np.ndarray] = {}
    missing: dict[str, np.ndarray] = {"date": date_missing}
    non_numeric: dict[str, np.ndarray] = {}
    for field in NUMERIC_FIELDS:
        values[field], missing[field], non_numeric[field] = _parse_numbers(table[field])
    if name_column is not None and name_field is not None:
        names = pc.utf8_trim_whitespace(name_column)
        missing[name_field] = _mask(pc.fill_null(pc.equal(names, ""), True))
        other = _mask(pc.not_equal(names, symbol)) & ~missing[name_field]
        add(other, lambda i: f"{name_field} {_text(names, i)} differs from the file's symbol {symbol!r}")

    stacked = np.vstack(list(missing.values())) if n else np.zeros((len(missing), 0), bool)
    fields = list(missing)

    def word_missing(i: int) -> str:
        names_missing = [fields[k] for k in np.flatnonzero(stacked[:, i])]
        label = "missing field" if len(names_missing) == 1 else "missing fields"
        return f"{label}: {', '.join(names_missing)}"

    add(stacked.any(axis=0), word_missing)
    for field in NUMERIC_FIELDS:
        column = table[field]
        add(non_numeric[field], lambda i, f=field, c=column: f"non-numeric {f}: {_text(c, i)}")
    add(date_bad, lambda i: f"bad date: {_text(table['date'], i)} (expected YYYY-MM-DD or YYYYMMDD)")

    with np.errstate(invalid="ignore"):
        for field in PRICE_FIELDS:
            v = values[field]
            add(v <= 0, lambda i, f=field, v=v: f"non-positive {f}: {v[i]:g}")
        vol = values["volume"]
        add(vol < 0, lambda i: f"negative volume: {vol[i]:g}")
        o, h, lo, c = values["open"], values["high"], values["low"], values["close"]
        add(h < lo, lambda i: f"high < low: {h[i]:g} < {lo[i]:g}")
        ranged = h >= lo
        add(
            ranged & ((c < lo) | (c > h)),
            lambda i: f"close outside [low, high]: {c[i]:g} not in [{lo[i]:g}, {h[i]:g}]",
        )
        add(
            ranged & ((o < lo) | (o > h)),
            lambda i: f"open outside [low, high]: {o[i]:g} not in [{lo[i]:g}, {h[i]:g}]",
        )

    notes: list[str] = []
    row_ok = np.ones(n, dtype=bool)
    if reasons:
        row_ok[np.fromiter(reasons, dtype=np.int64)] = False
    order = np.flatnonzero(row_ok)
    d = days[order]
    if len(d) >= 2 and bool((np.diff(d) < 0).all()):
        order, d = order[::-1], d[::-1]
        notes.append(f"dates were in descending order; the {len(d)} good rows were reversed")

    # Among rows in processing order, a row is kept when its date is after every earlier good row's date; the
    # running maximum over all earlier rows equals that over earlier *kept* rows, since a rejected row never
    # raises it.
    running = np.maximum.accumulate(d) if len(d) else d
    previous = np.concatenate(([np.iinfo(np.int64).min], running[:-1])) if len(d) else d
    accepted = d > previous
    kept_days = d[accepted]
    kept_rows = order[accepted]
    last_kept = np.maximum.accumulate(np.where(accepted, np.arange(len(d)), -1))
    for k in np.flatnonzero(~accepted):
        row = int(order[k])
        pos = int(np.searchsorted(kept_days, d[k]))
        if pos < len(kept_days) and kept_days[pos] == d[k]:
            first = int(raw.lines[kept_rows[pos]])
            reasons[row].append(f"duplicate date {_day(d[k])} (first at line {first})")
        else:
            before = int(order[last_kept[k - 1]])
            reasons[row].append(
                f"date out of order: {_day(d[k])} is before {_day(days[before])} of line {int(raw.lines[before])}"
            )

    good = pa.table(
        {
            "date": pa.array(days[kept_rows].astype(np.int32), type=pa.int32()).cast(pa.date32()),
            **{field: pa.array(values[field][kept_rows], type=pa.float64()) for field in NUMERIC_FIELDS},
        },
        schema=STORED_SCHEMA,
    )

    rejected = np.array(sorted(reasons), dtype=np.int64)
    lines = np.concatenate([raw.lines[rejected], np.array([b.line for b in raw.bad_rows], dtype=np.int64)])
    order_by_line = np.argsort(lines, kind="stable")
    texts = np.array(
        ["; ".join(reasons[int(i)]) for i in rejected] + [b.reason for b in raw.bad_rows], dtype=object
    )
    raws = np.array(_raw_lines(table, rejected) + [b.text for b in raw.bad_rows], dtype=object)
    rejects = pa.table(
        {
            "line": pa.array(lines[order_by_line], type=pa.int64()),
            "reason": pa.array(texts[order_by_line], type=pa.string()),
            "raw": pa.array(raws[order_by_line], type=pa.string()),
        },
        schema=REJECTS_SCHEMA,
    )
    if raw.blank_lines:
        notes.append(f"{raw.blank_lines} blank line(s) skipped")
    return ValidatedCsv(
        path=raw.path,
        layout=raw.layout.name,
        symbol=symbol,
        table=good,
        rejects=rejects,
        notes=tuple(notes),
        data_lines=raw.data_lines,
        blank_lines=raw.blank_lines,
        source_size=raw.size,
        source_fingerprint=raw.fingerprint,
    )


def validate_bytes(path: Path | str, data: bytes, *, fingerprint: str | None = None) -> ValidatedCsv:
    """Parse and validate bytes already read from ``path`` (DataError for a file-level problem)."""
    return validate(parse_csv_bytes(Path(path), data, fingerprint=fingerprint))


def validate_file(path: Path | str) -> ValidatedCsv:
    """Read, parse and validate one file (DataError for a file-level problem)."""
    return validate(read_csv_file(path))
