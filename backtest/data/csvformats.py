"""Reading per-symbol vendor CSV files into string columns, whatever layout they come in.

The layout is recognised from the header line, never from the file name: a folder of downloads often mixes
vendors, and names lie more often than headers do. Every column is read as text by pyarrow's streaming CSV reader (vectorised, no Python loop per row), one block
of about a megabyte at a time, so that a file of gigabytes needs no more memory than a small one, and so that
the validation step sees exactly what the file says and can quarantine a bad value with its line number
instead of failing the whole file on the first one. Cells are read as bytes and decoded per block: a stray
byte that is not UTF-8 costs its row, not the file.

Line numbers are the file's physical line numbers with the header as line 1: empty lines are kept as rows
(``ignore_empty_lines=False``) and rows pyarrow cannot split into the header's columns are reported by number,
so each row's line can be reconstructed exactly.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from backtest.errors import DataError

__all__ = [
    "LAYOUTS",
    "SP500_5YR",
    "US_TXT",
    "YAHOO",
    "BadRow",
    "CsvLayout",
    "CsvSource",
    "RawBatch",
    "RawCsv",
    "detect_layout",
    "file_fingerprint",
    "known_layouts_text",
    "normalise_column",
    "open_csv_source",
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


def source_fingerprint(data: bytes) -> str:
    """blake2b of the file's bytes: what decides whether a re-ingest can skip the file."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def file_fingerprint(path: Path | str) -> tuple[int, str]:
    """Size and ``source_fingerprint`` of a file, read in blocks so a file of gigabytes costs one block of memory."""
    digest = hashlib.blake2b(digest_size=16)
    size = 0
    try:
        with open(path, "rb") as handle:
            while block := handle.read(_HASH_BLOCK):
                digest.update(block)
                size += len(block)
    except OSError as exc:
        raise DataError(f"cannot read file: {exc.strerror or exc}") from None
    return size, digest.hexdigest()


#: Bytes per block of the streaming reader: memory for parsing does not grow with the file beyond this.
BLOCK_SIZE = 1 << 20
_HASH_BLOCK = 1 << 20
_HEAD_BYTES = 1 << 16
_OTHER_DELIMITERS = {";": "semicolons", "\t": "tabs", "|": "vertical bars"}


def _check_readable(head: bytes) -> None:
    """Refuse files that are not text at all; a stray NUL inside a row only costs that row."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError("unreadable bytes: the file is UTF-16 encoded; save it as UTF-8 CSV")
    first_line = head.split(b"\n", 1)[0]
    if b"\x00" in first_line or head.count(b"\x00") * 10 > len(head):
        line = head[: head.find(b"\x00")].count(b"\n") + 1
        raise DataError(f"unreadable bytes: binary content (NUL bytes from line {line}), not a CSV text file")


def _header_line(head: bytes) -> str:
    ends = [pos for pos in (head.find(b"\n"), head.find(b"\r")) if pos != -1]
    if not ends and len(head) >= _HEAD_BYTES:
        raise DataError(f"no header line: the first {_HEAD_BYTES:,} bytes contain no line break")
    end = min(ends) if ends else len(head)
    try:
        return head[:end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"unreadable bytes: the header line is not UTF-8 text ({exc.reason})") from None


def _layout_of(header: str) -> CsvLayout:
    """detect_layout, with a precise message when only the delimiter is wrong."""
    try:
        return detect_layout(header)
    except DataError:
        if "," not in header:
            for sep, word in _OTHER_DELIMITERS.items():
                if sep in header:
                    try:
                        layout = detect_layout(header.replace(sep, ","))
                    except DataError:
                        continue
                    raise DataError(
                        f"wrong delimiter: the columns are separated by {word}, expected commas "
                        f"(the header matches the {layout.name} layout otherwise); save the file as CSV"
                    ) from None
        raise


_UNDECODABLE = re.compile("[\udc80-\udcff]")


class _RepairedUtf8(io.RawIOBase):
    """A byte stream with every byte that is not UTF-8 replaced by U+FFFD, decoded incrementally.

    pyarrow's CSV reader fails the whole file when a malformed row (wrong number of fields) also holds bytes
    that are not UTF-8; repaired first, such a row is just one more quarantined row. ``repaired`` says that
    something was replaced, so validation can name the problem on the rows that carry it.
    """

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self._raw = raw
        self._decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self._pending = b""
        self._eof = False
        self.repaired = False

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        want = -1 if size is None else size
        while not self._eof and (want < 0 or len(self._pending) < want):
            block = self._raw.read(_HASH_BLOCK)
            self._eof = not block
            if block.isascii() and not self._decoder.getstate()[0]:
                repaired = block  # plain ASCII (the usual price file): nothing to decode
            else:
                text = self._decoder.decode(block, final=self._eof)
                if _UNDECODABLE.search(text):
                    self.repaired = True
                    text = _UNDECODABLE.sub("\ufffd", text)
                repaired = text.encode("utf-8")
            self._pending = self._pending + repaired if self._pending else repaired
        if want < 0 or want >= len(self._pending):
            out, self._pending = self._pending, b""
        else:
            out, self._pending = self._pending[:want], self._pending[want:]
        return out


@dataclass(frozen=True, eq=False)
class RawBatch:
    """One block of a file's rows as text, with the physical line number of each row.

    ``table`` has one string column per header cell, named by canonical field and in file order. Blank lines
    are already dropped (counted in ``blank_lines``), rows with the wrong number of cells are in
    ``bad_rows``. ``replaced`` says that some cells held bytes that are not UTF-8 and were decoded with
    replacement characters, so validation can name that problem.
    """

    table: pa.Table
    lines: np.ndarray
    bad_rows: tuple[BadRow, ...]
    blank_lines: int
    data_lines: int
    replaced: bool


@dataclass(frozen=True)
class CsvSource:
    """A file's recognised layout; ``batches()`` streams its rows block by block."""

    path: Path
    layout: CsvLayout
    names: tuple[str, ...]
    open_stream: Callable[[], BinaryIO]
    block_size: int = BLOCK_SIZE

    @property
    def stem_symbol(self) -> str | None:
        """The symbol from the file name, or None when the layout carries it in a column."""
        return None if self.layout.symbol_field else self.layout.symbol_from_path(self.path)

    def batches(self) -> Iterator[RawBatch]:
        """The file's rows, one block at a time: memory is bounded by the block size, not the file size."""
        names = list(self.names)
        invalid: list[pacsv.InvalidRow] = []

        def on_invalid(row: pacsv.InvalidRow) -> str:
            invalid.append(row)
            return "skip"

        with self.open_stream() as raw:
            stream = _RepairedUtf8(raw)
            try:
                reader = pacsv.open_csv(
                    stream,
                    read_options=pacsv.ReadOptions(
                        skip_rows=1, column_names=names, use_threads=False, block_size=self.block_size
                    ),
                    parse_options=pacsv.ParseOptions(
                        ignore_empty_lines=False, invalid_row_handler=on_invalid
                    ),
                    convert_options=pacsv.ConvertOptions(
                        column_types=dict.fromkeys(names, pa.binary()),
                        strings_can_be_null=True,
                        null_values=list(NULL_VALUES),
                        quoted_strings_can_be_null=False,
                    ),
                )
            except StopIteration:  # pyarrow raises it for a stream with nothing after the header
                return
            except pa.ArrowInvalid as exc:
                raise DataError(f"unreadable CSV: {exc}") from None
            next_line = 2
            taken = 0  # invalid rows already numbered into a batch
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    break
                except pa.ArrowInvalid as exc:
                    raise DataError(f"unreadable CSV after line {next_line - 1}: {exc}") from None
                numbers = [row.number for row in invalid]
                if any(n is None for n in numbers):
                    raise DataError("unreadable CSV: the reader could not number the malformed lines")
                bad_all = np.asarray(sorted(numbers), dtype=np.int64)
                lines = _number_lines(next_line, batch.num_rows, bad_all)
                end = int(lines[-1]) if len(lines) else next_line - 1
                # Invalid rows up to the batch's last line (or all of them, at the end of the file) are its own.
                fresh = [row for row in invalid[taken:] if row.number <= end]
                taken += len(fresh)
                yield _to_batch(pa.Table.from_batches([batch]), lines, fresh, stream.repaired)
                next_line = end + 1
            rest = invalid[taken:]
            if rest:
                yield _to_batch(
                    pa.table({n: pa.array([], pa.string()) for n in names}), np.array([], np.int64), rest
                )


def _number_lines(start: int, count: int, bad: np.ndarray) -> np.ndarray:
    """The physical line numbers of ``count`` parsed rows from line ``start`` on, skipping malformed lines."""
    extra = 0
    while True:
        candidates = np.arange(start, start + count + extra, dtype=np.int64)
        inside = int(np.count_nonzero((bad >= start) & (bad < start + count + extra)))
        if inside == extra:
            return np.setdiff1d(candidates, bad, assume_unique=True)[:count]
        extra = inside


def _as_text(column: pa.ChunkedArray) -> tuple[pa.ChunkedArray, bool]:
    """Binary cells as UTF-8 strings; invalid bytes become U+FFFD so that only their row is rejected."""
    try:
        return pc.cast(column, pa.string()), False
    except pa.ArrowInvalid:
        values = [None if v is None else v.decode("utf-8", errors="replace") for v in column.to_pylist()]
        return pa.chunked_array([pa.array(values, type=pa.string())]), True


def _to_batch(
    table: pa.Table, lines: np.ndarray, invalid: list[pacsv.InvalidRow], repaired: bool = False
) -> RawBatch:
    columns, replaced = [], repaired
    for column in table.columns:
        text, bad = _as_text(column)
        columns.append(text)
        replaced |= bad
    table = pa.table(dict(zip(table.column_names, columns, strict=True)))
    bad_rows = tuple(
        BadRow(
            line=int(row.number),
            text=row.text,
            reason=f"expected {row.expected_columns} fields, found {row.actual_columns}",
        )
        for row in invalid
    )
    n_lines = table.num_rows + len(bad_rows)
    n_blank = 0
    if table.num_rows and all(column.null_count for column in table.columns):
        blank = np.ones(table.num_rows, dtype=bool)
        for column in table.columns:
            blank &= column.is_null().to_numpy(zero_copy_only=False)
        n_blank = int(blank.sum())
        if n_blank:
            keep = ~blank
            table = table.filter(pa.array(keep))
            lines = lines[keep]
    return RawBatch(table, lines, bad_rows, n_blank, n_lines, replaced)


def open_csv_source(
    path: Path | str, data: bytes | None = None, *, block_size: int = BLOCK_SIZE
) -> CsvSource:
    """Recognise a file's layout from its first line (reading only its head) and prepare to stream it.

    ``data`` is the file's content when the caller already holds it (nothing is read from ``path`` then).
    Raises DataError for a file that cannot be used at all: unreadable, empty, not text, unknown layout.
    """
    path = Path(path)
    if data is not None:
        buffer = data

        def opener() -> BinaryIO:
            return io.BytesIO(buffer)
    else:

        def opener() -> BinaryIO:
            return open(path, "rb")

    try:
        with opener() as stream:
            head = stream.read(_HEAD_BYTES)
    except OSError as exc:
        raise DataError(f"cannot read file: {exc.strerror or exc}") from None
    if head.startswith(_BOM):
        head = head[len(_BOM) :]
    if not head or (head.isspace() and len(head) < _HEAD_BYTES - len(_BOM)):
        raise DataError("empty file")
    _check_readable(head)
    header = _header_line(head)
    layout = _layout_of(header)
    if len(head) < _HEAD_BYTES - len(_BOM) and not head[len(header.encode("utf-8")) :].strip():
        raise DataError("header only: the file has no data rows")
    names = tuple(layout.columns[normalise_column(c)] for c in header.split(","))
    return CsvSource(path, layout, names, opener, block_size)


@dataclass(frozen=True, eq=False)
class RawCsv:
    """A whole file's rows as text (for small files and tests; ingest streams ``CsvSource.batches``)."""

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


def _collect(source: CsvSource, size: int, fingerprint: str) -> RawCsv:
    batches = list(source.batches())
    tables = [b.table for b in batches if b.table.num_rows]
    table = (
        pa.concat_tables(tables) if tables else pa.table({n: pa.array([], pa.string()) for n in source.names})
    )
    bad_rows = tuple(sorted((r for b in batches for r in b.bad_rows), key=lambda r: r.line))
    if table.num_rows == 0 and not bad_rows:
        raise DataError("header only: the file has no data rows")
    return RawCsv(
        path=source.path,
        layout=source.layout,
        table=table,
        lines=np.concatenate([b.lines for b in batches]) if batches else np.array([], np.int64),
        bad_rows=bad_rows,
        blank_lines=sum(b.blank_lines for b in batches),
        data_lines=sum(b.data_lines for b in batches),
        size=size,
        fingerprint=fingerprint,
    )


def parse_csv_bytes(path: Path, data: bytes, *, fingerprint: str | None = None) -> RawCsv:
    """Parse a whole file's bytes into one table (DataError for a file that cannot be used at all)."""
    source = open_csv_source(path, data)
    return _collect(source, len(data), fingerprint or source_fingerprint(data))


def read_csv_file(path: Path | str) -> RawCsv:
    """Read and parse one whole file; DataError (never OSError) when it cannot be read, so callers report it."""
    size, fingerprint = file_fingerprint(path)
    return _collect(open_csv_source(path), size, fingerprint)
