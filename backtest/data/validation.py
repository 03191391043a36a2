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

import datetime as dt
import io
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from backtest.data.csvformats import (
    CsvSource,
    RawBatch,
    RawCsv,
    file_fingerprint,
    open_csv_source,
    source_fingerprint,
)
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
    "validate_source",
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
#: A price above this is a data error (a misplaced decimal point, a volume in a price column): the dearest
#: listed share trades near 10^6 in its currency.
MAX_PRICE = 1e9
#: Rejected rows listed per file (with line, reason and text); beyond this they are only counted, so that a
#: file of gigabytes of garbage cannot fill memory or the rejects folder.
MAX_LISTED_REJECTS = 100_000


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
    unlisted_rejects: int = 0

    @property
    def rows(self) -> int:
        return self.table.num_rows

    @property
    def rejected_rows(self) -> int:
        """All rejected rows, listed or not."""
        return self.rejects.num_rows + self.unlisted_rejects

    def problems(self) -> list[Problem]:
        name = self.path.name
        lines = self.rejects["line"].to_pylist()
        reasons = self.rejects["reason"].to_pylist()
        found = [Problem(name, line, reason) for line, reason in zip(lines, reasons, strict=True)]
        if self.unlisted_rejects:
            found.append(
                Problem(
                    name, None, f"{self.unlisted_rejects:,} more rejected rows are counted but not listed"
                )
            )
        return found

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


def _most_frequent_name(name_column: pa.ChunkedArray) -> str | None:
    names = pc.utf8_trim_whitespace(name_column)
    counts = pc.value_counts(pc.drop_null(pc.if_else(pc.equal(names, ""), None, names)))
    if len(counts) == 0:
        return None
    # Most frequent name wins (first seen on ties): one mistyped row must not rename the whole file.
    values = counts.field("values").to_pylist()
    tallies = counts.field("counts").to_numpy()
    return str(values[int(np.argmax(tallies))])


def _check_symbol(symbol: str) -> str:
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in symbol):
        raise DataError(f"symbol {symbol!r} contains control characters (NUL, tab, ...): not a ticker")
    return symbol


@dataclass
class _Checked:
    """The rows of one block that passed the row checks, ready for the ordering checks."""

    table: pa.Table  # the rows' text, for rejects found later
    days: np.ndarray
    values: dict[str, np.ndarray]
    lines: np.ndarray


class _Rejects:
    """Rejected rows, listed up to a limit and counted beyond it, so a file of garbage stays bounded."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self._parts: list[pa.Table] = []
        self._listed = 0

    def room(self) -> int:
        return max(0, self.limit - self._listed)

    def add(self, lines: np.ndarray, reasons: list[str], raws: list[str], total: int) -> None:
        """``total`` rows were rejected; the first ``len(lines)`` of them are listed."""
        self.count += total
        if len(lines):
            self._listed += len(lines)
            self._parts.append(
                pa.table(
                    {
                        "line": pa.array(lines, type=pa.int64()),
                        "reason": pa.array(reasons, type=pa.string()),
                        "raw": pa.array(raws, type=pa.string()),
                    },
                    schema=REJECTS_SCHEMA,
                )
            )

    def table(self) -> pa.Table:
        if not self._parts:
            return REJECTS_SCHEMA.empty_table()
        table = pa.concat_tables(self._parts)
        return table.take(pc.sort_indices(table, sort_keys=[("line", "ascending")]))


class _Validator:
    """Row checks per block, then the ordering checks across blocks, keeping only bounded state.

    Memory: the kept rows (strictly increasing dates no later than tomorrow, so at most one per calendar
    day) plus at most ``max_listed_rejects`` listed rejects; never the file's text.
    """

    def __init__(self, source: CsvSource, today: dt.date, max_listed_rejects: int) -> None:
        self.source = source
        self.name_field = source.layout.symbol_field
        self.symbol: str | None = None if self.name_field else source.stem_symbol
        if not self.name_field and not self.symbol:
            raise DataError(f"cannot derive a symbol from the file name {source.path.name!r}")
        if self.symbol:
            _check_symbol(self.symbol)
        self.latest = np.int64((today - dt.date(1970, 1, 1)).days + 1)  # tomorrow: other time zones
        self.rejects = _Rejects(max_listed_rejects)
        self.data_lines = 0
        self.blank_lines = 0
        self.notes: list[str] = []
        self._undecided = True  # while every good row so far is strictly older than the one before
        self._pending: list[_Checked] = []
        self._kept: list[_Checked] = []
        self._last_day: int | None = None
        self._last_line = 0
        self._non_utf8 = 0

    # -- row checks -------------------------------------------------------------------------------------

    def add(self, batch: RawBatch) -> None:
        self.data_lines += batch.data_lines
        self.blank_lines += batch.blank_lines
        if batch.bad_rows:
            listed = batch.bad_rows[: self.rejects.room()]
            self.rejects.add(
                np.array([b.line for b in listed], dtype=np.int64),
                [b.reason for b in listed],
                [b.text for b in listed],
                len(batch.bad_rows),
            )
        if batch.table.num_rows:
            checked = self._row_checks(batch)
            if len(checked.days):
                self._order(checked)

    def _row_checks(self, batch: RawBatch) -> _Checked:
        table = batch.table
        n = table.num_rows
        checks: list[tuple[np.ndarray, Callable[[int], str]]] = []

        name_field = self.name_field
        name_column = table[name_field] if name_field else None
        if name_column is not None and self.symbol is None:
            found = _most_frequent_name(name_column)
            self.symbol = _check_symbol(found) if found is not None else None

        days, date_missing, date_bad = _parse_dates(table["date"])
        values: dict[str, np.ndarray] = {}
        missing: dict[str, np.ndarray] = {"date": date_missing}
        non_numeric: dict[str, np.ndarray] = {}
        for field in NUMERIC_FIELDS:
            values[field], missing[field], non_numeric[field] = _parse_numbers(table[field])
        if name_column is not None and name_field is not None:
            names = pc.utf8_trim_whitespace(name_column)
            missing[name_field] = _mask(pc.fill_null(pc.equal(names, ""), True))
            if self.symbol is not None:
                symbol = self.symbol
                other = _mask(pc.not_equal(names, symbol)) & ~missing[name_field]
                checks.append(
                    (
                        other,
                        lambda i: f"{name_field} {_text(names, i)} differs from the file's symbol {symbol!r}",
                    )
                )

        stacked = np.vstack(list(missing.values()))
        fields = list(missing)

        def word_missing(i: int) -> str:
            names_missing = [fields[k] for k in np.flatnonzero(stacked[:, i])]
            label = "missing field" if len(names_missing) == 1 else "missing fields"
            return f"{label}: {', '.join(names_missing)}"

        checks.append((stacked.any(axis=0), word_missing))
        for field in NUMERIC_FIELDS:
            column = table[field]
            checks.append(
                (non_numeric[field], lambda i, f=field, c=column: f"non-numeric {f}: {_text(c, i)}")
            )
        checks.append(
            (date_bad, lambda i: f"bad date: {_text(table['date'], i)} (expected YYYY-MM-DD or YYYYMMDD)")
        )
        if batch.replaced:
            for field in table.column_names:
                bad_text = _mask(pc.match_substring(table[field], "\ufffd"))
                checks.append(
                    (bad_text, lambda i, f=field: f"not UTF-8: {f} holds bytes that are not UTF-8 text")
                )

        latest = self.latest
        future = ~date_missing & ~date_bad & (days > latest)
        checks.append(
            (future, lambda i: f"date in the future: {_day(days[i])} is after {_day(int(latest) - 1)}")
        )

        with np.errstate(invalid="ignore"):
            for field in PRICE_FIELDS:
                v = values[field]
                checks.append((v <= 0, lambda i, f=field, v=v: f"non-positive {f}: {v[i]:g}"))
                checks.append(
                    (
                        np.isfinite(v) & (v > MAX_PRICE),
                        lambda i, f=field, v=v: f"absurd {f}: {v[i]:g} is above {MAX_PRICE:g}",
                    )
                )
            vol = values["volume"]
            checks.append((vol < 0, lambda i: f"negative volume: {vol[i]:g}"))
            o, h, lo, c = values["open"], values["high"], values["low"], values["close"]
            checks.append((h < lo, lambda i: f"high < low: {h[i]:g} < {lo[i]:g}"))
            ranged = h >= lo
            checks.append(
                (
                    ranged & ((c < lo) | (c > h)),
                    lambda i: f"close outside [low, high]: {c[i]:g} not in [{lo[i]:g}, {h[i]:g}]",
                )
            )
            checks.append(
                (
                    ranged & ((o < lo) | (o > h)),
                    lambda i: f"open outside [low, high]: {o[i]:g} not in [{lo[i]:g}, {h[i]:g}]",
                )
            )

        rejected = np.zeros(n, dtype=bool)
        for mask, _ in checks:
            rejected |= mask
        where = np.flatnonzero(rejected)
        if len(where):
            listed = where[: self.rejects.room()]
            reasons: dict[int, list[str]] = {int(i): [] for i in listed}
            if len(listed):
                last = int(listed[-1])
                for mask, word in checks:
                    for i in np.flatnonzero(mask[: last + 1]):
                        if int(i) in reasons:
                            reasons[int(i)].append(word(int(i)))
            self.rejects.add(
                batch.lines[listed],
                ["; ".join(reasons[int(i)]) for i in listed],
                _raw_lines(table, listed),
                len(where),
            )
        ok = np.flatnonzero(~rejected)
        return _Checked(
            table=table.take(pa.array(ok, type=pa.int64())) if len(where) else table,
            days=days[ok],
            values={f: values[f][ok] for f in NUMERIC_FIELDS},
            lines=batch.lines[ok],
        )

    # -- ordering ---------------------------------------------------------------------------------------

    def _order(self, rows: _Checked) -> None:
        """Newest-first files are reversed; otherwise a row must be later than every good row before it."""
        if self._undecided:
            d = rows.days
            previous = self._pending[-1].days[-1] if self._pending else None
            descending = bool((np.diff(d) < 0).all()) and (previous is None or d[0] < previous)
            if descending:
                # Strictly descending dates are distinct days: this buffer is bounded by the calendar.
                self._pending.append(rows)
                return
            self._undecided = False
            pending, self._pending = self._pending, []
            for part in pending:
                self._ascending(part)
        self._ascending(rows)

    def _ascending(self, rows: _Checked) -> None:
        d = rows.days
        start = np.iinfo(np.int64).min if self._last_day is None else self._last_day
        running = np.maximum.accumulate(np.concatenate(([start], d)))
        accepted = d > running[:-1]
        kept_idx = np.flatnonzero(accepted)
        if len(kept_idx):
            self._kept.append(
                _Checked(
                    table=rows.table.slice(0, 0),
                    days=d[kept_idx],
                    values={f: v[kept_idx] for f, v in rows.values.items()},
                    lines=rows.lines[kept_idx],
                )
            )
        dropped = np.flatnonzero(~accepted)
        if len(dropped):
            listed = dropped[: self.rejects.room()]
            reasons = []
            if len(listed):
                kept_days = np.concatenate([k.days for k in self._kept])
                kept_lines = np.concatenate([k.lines for k in self._kept])
                last_kept = np.maximum.accumulate(np.where(accepted, np.arange(len(d)), -1))
                for k in listed:
                    day = int(d[k])
                    pos = int(np.searchsorted(kept_days, day))
                    if pos < len(kept_days) and kept_days[pos] == day:
                        reasons.append(f"duplicate date {_day(day)} (first at line {int(kept_lines[pos])})")
                    else:
                        j = int(last_kept[k])
                        before_day = int(d[j]) if j >= 0 else int(start)
                        before_line = int(rows.lines[j]) if j >= 0 else self._last_line
                        reasons.append(
                            f"date out of order: {_day(day)} is before {_day(before_day)} of line {before_line}"
                        )
            self.rejects.add(rows.lines[listed], reasons, _raw_lines(rows.table, listed), len(dropped))
        if len(kept_idx):
            self._last_day = int(d[kept_idx[-1]])
            self._last_line = int(rows.lines[kept_idx[-1]])

    # -- result -----------------------------------------------------------------------------------------

    def finish(self) -> ValidatedCsv:
        if self.symbol is None:
            raise DataError(f"no symbol: the {self.name_field!r} column is empty on every row")
        if self.data_lines == self.blank_lines:
            raise DataError("header only: the file has no data rows")
        if self._undecided:
            parts = self._pending[::-1]
            n = sum(len(p.days) for p in parts)
            kept = [
                _Checked(p.table, p.days[::-1], {f: v[::-1] for f, v in p.values.items()}, p.lines[::-1])
                for p in parts
            ]
            if n >= 2:
                self.notes.append(f"dates were in descending order; the {n} good rows were reversed")
        else:
            kept = self._kept
        days = np.concatenate([k.days for k in kept]) if kept else np.array([], np.int64)
        good = pa.table(
            {
                "date": pa.array(days.astype(np.int32), type=pa.int32()).cast(pa.date32()),
                **{
                    f: pa.array(
                        np.concatenate([k.values[f] for k in kept]) if kept else np.array([], np.float64),
                        type=pa.float64(),
                    )
                    for f in NUMERIC_FIELDS
                },
            },
            schema=STORED_SCHEMA,
        )
        if self.blank_lines:
            self.notes.append(f"{self.blank_lines} blank line(s) skipped")
        rejects = self.rejects.table()
        unlisted = self.rejects.count - rejects.num_rows
        if unlisted:
            self.notes.append(
                f"{self.rejects.count:,} rows were rejected; only the first {rejects.num_rows:,} are listed"
            )
        return ValidatedCsv(
            path=self.source.path,
            layout=self.source.layout.name,
            symbol=self.symbol,
            table=good,
            rejects=rejects,
            notes=tuple(self.notes),
            data_lines=self.data_lines,
            blank_lines=self.blank_lines,
            source_size=0,
            source_fingerprint="",
            unlisted_rejects=unlisted,
        )


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def validate_source(
    source: CsvSource,
    *,
    size: int,
    fingerprint: str,
    today: dt.date | None = None,
    max_listed_rejects: int = MAX_LISTED_REJECTS,
) -> ValidatedCsv:
    """Stream a file block by block through the row and ordering checks (DataError for a file-level problem).

    ``today`` is the last date a bar may have, plus one day for markets in other time zones (default: today
    in UTC).
    """
    validator = _Validator(source, today or _today(), max_listed_rejects)
    for batch in source.batches():
        validator.add(batch)
    return replace(validator.finish(), source_size=size, source_fingerprint=fingerprint)


def validate(raw: RawCsv, *, today: dt.date | None = None) -> ValidatedCsv:
    """Check every row of a file already parsed into one table (DataError only for a file-level problem)."""
    source = CsvSource(raw.path, raw.layout, tuple(raw.table.column_names), lambda: io.BytesIO(b""))
    validator = _Validator(source, today or _today(), MAX_LISTED_REJECTS)
    validator.add(RawBatch(raw.table, raw.lines, raw.bad_rows, raw.blank_lines, raw.data_lines, False))
    return replace(validator.finish(), source_size=raw.size, source_fingerprint=raw.fingerprint)


def validate_bytes(
    path: Path | str, data: bytes, *, fingerprint: str | None = None, today: dt.date | None = None
) -> ValidatedCsv:
    """Parse and validate bytes already read from ``path`` (DataError for a file-level problem)."""
    source = open_csv_source(Path(path), data)
    return validate_source(
        source, size=len(data), fingerprint=fingerprint or source_fingerprint(data), today=today
    )


def validate_file(
    path: Path | str, *, fingerprint: str | None = None, size: int | None = None, today: dt.date | None = None
) -> ValidatedCsv:
    """Stream, parse and validate one file in bounded memory (DataError for a file-level problem).

    ``fingerprint`` and ``size`` are the caller's ``file_fingerprint(path)`` when it already has them.
    """
    if fingerprint is None or size is None:
        size, fingerprint = file_fingerprint(path)
    return validate_source(open_csv_source(path), size=size, fingerprint=fingerprint, today=today)
