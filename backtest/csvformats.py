"""Reading per-symbol vendor CSV files into string columns, whatever layout they come in.

The layout is recognised from the header line, never from the file name: a folder of downloads often mixes
vendors, and names lie more often than headers do. Every column is read as text by pyarrow's CSV reader (one
vectorised pass, no Python loop per row) so that the validation step sees exactly what the file says and can
quarantine a bad value with its line number instead of failing the whole file on the first one.

Line numbers are the file's physical line numbers with the header as line 1: empty lines are kept as rows
(``ignore_empty_lines=False``) and rows pyarrow cannot split into the header's columns are reported by number,
so each row's line can be reconstructed exactly.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from backtest.errors import DataError

__all__ = [
    "LAYOUTS",
    "SP500_5YR",
    "US_TXT",
    "YAHOO",
    "BadRow",
    "CsvLayout",
    "RawCsv",
    "detect_layout",
    "known_layouts_text",
    "normalise_column",
    "parse_csv_bytes",
    "read_csv_file",
    "source_fingerprint",
]

_BOM = b"\xef\xbb\xbf"
#: Text the reader treats as an empty field: Yahoo writes ``null`` for the days it has no quote.
NULL_VALUES: tuple[str, ...] = ("", "null", "NULL")


def normalise_column(name: str) -> str:
    """Canonical spelling of a header cell, so ``Adj Close``, ``adj_close`` and `` ADJ CLOSE`` all match."""
    return re.sub(r"[\s_]+", "", name.strip().strip('"').lower())


@dataclass(frozen=True)
class CsvLayout:
    """One vendor's column layout.

    ``columns`` maps each normalised header cell to the canonical field name used downstream (``date``,
    ``open``, ``high``, ``low``, ``close``, ``volume``, plus layout-specific extras that are read but not
    stored). The symbol comes either from a column (``symbol_field``) or from the file name's stem, with an
    optional vendor suffix removed (``stem_suffix``) and optionally upper-cased.
    """

    name: str
    example_header: str
    columns: Mapping[str, str]
    symbol_field: str | None = None
    stem_suffix: str | None = None
    upper_symbol: bool = False

    def symbol_from_path(self, path: Path) -> str:
        """The symbol a stem-named file stands for (``aapl.us.txt`` -> ``AAPL`` for the ``.us`` dumps)."""
        stem = Path(path.name).stem.strip()
        if self.stem_suffix and stem.lower().endswith(self.stem_suffix):
            stem = stem[: -len(self.stem_suffix)].strip()
        return stem.upper() if self.upper_symbol else stem


def _layout(
    name: str,
    header: str,
    fields: tuple[str, ...],
    *,
    symbol_field: str | None = None,
    stem_suffix: str | None = None,
    upper_symbol: bool = False,
) -> CsvLayout:
    cells = [normalise_column(c) for c in header.split(",")]
    return CsvLayout(
        name=name,
        example_header=header,
        columns=MappingProxyType(dict(zip(cells, fields, strict=True))),
        symbol_field=symbol_field,
        stem_suffix=stem_suffix,
        upper_symbol=upper_symbol,
    )


SP500_5YR = _layout(
    "sp500_5yr",
    "date,open,high,low,close,volume,Name",
    ("date", "open", "high", "low", "close", "volume", "name"),
    symbol_field="name",
)
YAHOO = _layout(
    "yahoo",
    "Date,Open,High,Low,Close,Adj Close,Volume",
    ("date", "open", "high", "low", "close", "adj_close", "volume"),
)
US_TXT = _layout(
    "us_txt",
    "Date,Open,High,Low,Close,Volume,OpenInt",
    ("date", "open", "high", "low", "close", "volume", "openint"),
    stem_suffix=".us",
    upper_symbol=True,
)
LAYOUTS: tuple[CsvLayout, ...] = (SP500_5YR, YAHOO, US_TXT)


def known_layouts_text() -> str:
    """The known layouts as one line, for error messages that must tell the user what would have worked."""
    return "; ".join(f"{layout.name}: {layout.example_header}" for layout in LAYOUTS)


def detect_layout(header: str) -> CsvLayout:
    """The layout whose columns are exactly the header's (any order, any case, spaces and BOM ignored)."""
    cells = [normalise_column(c) for c in header.lstrip("\ufeff").rstrip("\r\n").split(",")]
    if len(set(cells)) == len(cells):
        for layout in LAYOUTS:
            if set(cells) == set(layout.columns):
                return layout
    shown = header.strip()[:120]
    raise DataError(f"unknown column layout {shown!r}; known layouts are {known_layouts_text()}")


@dataclass(frozen=True)
class BadRow:
    """A line the reader could not split into the header's columns."""

    line: int
    text: str
    reason: str


@dataclass(frozen=True, eq=False)
class RawCsv:
    """A file's rows as text, with the physical line number of each row.

    ``table`` has one string column per header cell, named by canonical field and in file order, so joining
    a row's cells with commas gives back its text. Blank lines are already dropped (counted in
    ``blank_lines``), rows with the wrong number of cells are in ``bad_rows``.
    """

    path: Path
    layout: CsvLayout
    table: pa.Table
    lines: np.ndarray
    bad_rows: tuple[BadRow, ...]
    blank_lines: int
    data_lines: int
    size: int
    fingerprint: str

    @property
    def stem_symbol(self) -> str | None:
        """The symbol from the file name, or None when the layout carries it in a column."""
        return None if self.layout.symbol_field else self.layout.symbol_from_path(self.path)


def source_fingerprint(data: bytes) -> str:
    """blake2b of the file's bytes: what decides whether a re-ingest can skip the file."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _check_readable(data: bytes) -> None:
    head = data[:8192]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError("unreadable bytes: the file is UTF-16 encoded; save it as UTF-8 CSV")
    if b"\x00" in head:
        raise DataError("unreadable bytes: binary content (NUL bytes), not a CSV text file")


def _header_line(data: bytes) -> str:
    end = len(data)
    for sep in (b"\n", b"\r"):
        pos = data.find(sep)
        if pos != -1:
            end = min(end, pos)
    try:
        return data[:end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"unreadable bytes: the header line is not UTF-8 text ({exc.reason})") from None


def _read_table(data: bytes, names: list[str], use_threads: bool) -> tuple[pa.Table, list[pacsv.InvalidRow]]:
    invalid: list[pacsv.InvalidRow] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        invalid.append(row)
        return "skip"

    table = pacsv.read_csv(
        io.BytesIO(data),
        read_options=pacsv.ReadOptions(skip_rows=1, column_names=names, use_threads=use_threads),
        parse_options=pacsv.ParseOptions(ignore_empty_lines=False, invalid_row_handler=on_invalid),
        convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(names, pa.string()),
            strings_can_be_null=True,
            null_values=list(NULL_VALUES),
            quoted_strings_can_be_null=False,
        ),
    )
    return table, invalid


def parse_csv_bytes(
    path: Path, data: bytes, *, fingerprint: str | None = None, use_threads: bool = False
) -> RawCsv:
    """Parse a file's bytes (already read, so the caller can fingerprint them without a second read).

    ``fingerprint`` is the caller's ``source_fingerprint(data)`` when it already has it. Raises DataError for
    a file that cannot be used at all: empty, header only, unknown layout, not text.
    """
    size = len(data)
    fingerprint = fingerprint or source_fingerprint(data)
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    if not data or data.isspace():
        raise DataError("empty file")
    _check_readable(data)
    header = _header_line(data)
    layout = detect_layout(header)
    body = memoryview(data)[len(header.encode("utf-8")) :]
    # Checking a prefix first avoids copying a big file's body just to learn that it is not blank.
    if not body or (bytes(body[:4096]).isspace() and bytes(body).isspace()):
        raise DataError("header only: the file has no data rows")
    names = [layout.columns[normalise_column(c)] for c in header.split(",")]
    try:
        table, invalid = _read_table(data, names, use_threads)
    except pa.ArrowInvalid as exc:
        if "UTF8" not in str(exc) and "UTF-8" not in str(exc):
            raise DataError(f"unreadable CSV: {exc}") from None
        # A stray non-UTF-8 byte should cost its row, not the file: replacement characters make the
        # field fail numeric or date parsing, so validation quarantines just that row.
        data = data.decode("utf-8", errors="replace").encode("utf-8")
        try:
            table, invalid = _read_table(data, names, use_threads)
        except pa.ArrowInvalid as exc2:
            raise DataError(f"unreadable CSV: {exc2}") from None

    bad_numbers = [row.number for row in invalid]
    if any(n is None for n in bad_numbers):
        raise DataError("unreadable CSV: the reader could not number the malformed lines")
    n_lines = table.num_rows + len(invalid)
    lines = np.arange(2, 2 + n_lines, dtype=np.int64)
    if bad_numbers:
        lines = lines[~np.isin(lines, np.asarray(bad_numbers, dtype=np.int64))]
    bad_rows = tuple(
        BadRow(
            line=int(row.number),
            text=row.text,
            reason=f"expected {row.expected_columns} fields, found {row.actual_columns}",
        )
        for row in invalid
    )

    n_blank = 0
    if all(column.null_count for column in table.columns):
        blank = np.ones(table.num_rows, dtype=bool)
        for column in table.columns:
            blank &= column.is_null().to_numpy(zero_copy_only=False)
        n_blank = int(blank.sum())
        if n_blank:
            keep = ~blank
            table = table.filter(pa.array(keep))
            lines = lines[keep]
    if table.num_rows == 0 and not bad_rows:
        raise DataError("header only: the file has no data rows")
    return RawCsv(
        path=path,
        layout=layout,
        table=table,
        lines=lines,
        bad_rows=bad_rows,
        blank_lines=n_blank,
        data_lines=n_lines,
        size=size,
        fingerprint=fingerprint,
    )


def read_csv_file(path: Path | str, *, use_threads: bool = False) -> RawCsv:
    """Read and parse one file; DataError (never OSError) when it cannot be read, so callers report it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read file: {exc.strerror or exc}") from None
    return parse_csv_bytes(path, data, use_threads=use_threads)
