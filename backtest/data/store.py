"""The columnar price store: one Parquet file per symbol, a Parquet catalog, quarantined rows beside them.

Layout under ``root``::

    catalog.parquet              one row per symbol (see CATALOG_SCHEMA): what is stored and where it came from
    prices/<name>.<fp>.parquet   a symbol's validated bars (date32 + float64 OHLCV, sorted by date)
    rejects/<name>.csv           the rows quarantined from the symbol's source file
    .lock                        fcntl lock serialising writers

Why it is shaped like this:
- Loading a chunk of symbols reads only those symbols' files (a few hundred KB each), in parallel threads,
  so a backtest never scans the whole market to get 100 symbols.
- Symbols are data, not trusted path components: a file name is the symbol itself only when it matches a
  conservative pattern, otherwise an escaped prefix plus a hash, so no symbol can point outside ``prices/``.
- Price files are content addressed (``<fp>`` is the data fingerprint) and the catalog is the single source of
  truth: a replaced symbol's new file is written beside the old one and the catalog switch (one atomic
  ``os.replace``) publishes it, so a reader or a crash never sees a catalog row describing data that is not in
  the file it names. Unreferenced files are removed afterwards.
- Every write goes to a temporary file in the same folder, is fsynced, then ``os.replace``d into place.
- ``data_fingerprint`` is computed from the validated values, not the source bytes, so it is stable when the
  same data is re-ingested and is a cheap cache key (read from the catalog, no price file opened).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from backtest.atomic import fsync_dir, write_bytes
from backtest.data.panel import PRICE_FIELDS, PricePanel
from backtest.data.validation import STORED_SCHEMA
from backtest.errors import ConfigError, DataError

__all__ = [
    "CATALOG_COLUMNS",
    "CATALOG_SCHEMA",
    "REJECT_COLUMNS",
    "CatalogEntry",
    "DateLike",
    "PriceFile",
    "Store",
    "StoreWriter",
    "safe_name",
    "table_fingerprint",
    "write_price_file",
]

CATALOG_SCHEMA = pa.schema(
    [
        ("symbol", pa.string()),
        ("file", pa.string()),
        ("first_date", pa.date32()),
        ("last_date", pa.date32()),
        ("rows", pa.int64()),
        ("rejected_rows", pa.int64()),
        ("source_file", pa.string()),
        ("source_size", pa.int64()),
        ("source_mtime_ns", pa.int64()),
        ("source_fingerprint", pa.string()),
        ("data_fingerprint", pa.string()),
        ("ingested_at", pa.timestamp("us", tz="UTC")),
    ]
)
CATALOG_COLUMNS: tuple[str, ...] = tuple(CATALOG_SCHEMA.names)
REJECT_COLUMNS: tuple[str, ...] = ("source_file", "line", "reason", "raw")
PRICES_DIR = "prices"
REJECTS_DIR = "rejects"

DateLike = dt.date | str | np.datetime64 | None

# Upper case only: on case-insensitive file systems (macOS, Windows) ``aapl`` and ``AAPL`` would share a file.
_SAFE_SYMBOL = re.compile(r"[A-Z0-9][A-Z0-9._-]{0,63}")
# Device names Windows reserves whatever the extension; harmless on POSIX but a store folder may be shared.
_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL"} | {f"{p}{i}" for p in ("COM", "LPT") for i in range(1, 10)}
)
_PRICE_FILE = re.compile(r"prices/[A-Za-z0-9_][A-Za-z0-9._-]*\.parquet")
_LOAD_THREADS = 4


def safe_name(symbol: str) -> str:
    """A file name stem for ``symbol`` that cannot leave its folder and cannot collide with another symbol's.

    Plain tickers (``AAPL``, ``BRK.B``, ``BF-B``) are used as they are; anything else becomes ``_`` + a
    readable, sanitised prefix + a hash of the exact symbol. The leading ``_`` keeps escaped names disjoint
    from plain ones, and the hash keeps two symbols with the same sanitised prefix apart.
    """
    if (
        _SAFE_SYMBOL.fullmatch(symbol)
        and not symbol.endswith(".")
        and symbol.split(".", 1)[0] not in _RESERVED
    ):
        return symbol
    readable = re.sub(r"[^A-Za-z0-9]+", "_", symbol).strip("_")[:24]
    digest = hashlib.blake2b(symbol.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    return f"_{readable}-{digest}" if readable else f"_-{digest}"


def table_fingerprint(table: pa.Table) -> str:
    """blake2b of a validated table's values (dates as days, then each price column's float64 bytes).

    Independent of Parquet encoding and of the source file's formatting, so re-ingesting the same data, or the
    same data re-exported by another tool, gives the same fingerprint.
    """
    digest = hashlib.blake2b(digest_size=16)
    digest.update(b"prices-v1\0")
    digest.update(np.int64(table.num_rows).tobytes())
    for name in STORED_SCHEMA.names:
        column = table[name]
        if name == "date":
            column = column.cast(pa.int32())
        values = np.ascontiguousarray(column.to_numpy())
        digest.update(name.encode() + b"\0")
        digest.update(values.tobytes())
    return digest.hexdigest()


def _parquet_bytes(table: pa.Table) -> bytes:
    # No dictionary encoding: prices hardly repeat, so dictionaries only cost time. lz4 decodes at memory
    # speed, which keeps loading a chunk of symbols I/O-light without making it CPU-bound.
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="lz4", use_dictionary=False)
    return sink.getvalue().to_pybytes()


@dataclass(frozen=True)
class PriceFile:
    """Where a symbol's validated table lives (``file`` relative to the store root) and its fingerprint."""

    file: str
    data_fingerprint: str
    written: bool


def write_price_file(root: Path, symbol: str, table: pa.Table, *, durable: bool = True) -> PriceFile:
    """Write a validated table under ``root/prices`` unless a file with the same content already exists.

    A plain function (not a Store method) so that ingest worker processes can write their symbols' files in
    parallel while the parent process holds the writer lock; nothing is visible to readers until the
    parent commits the catalog.
    """
    if table.schema.remove_metadata() != STORED_SCHEMA:
        raise DataError(f"price table for {symbol!r} has schema {table.schema}, expected {STORED_SCHEMA}")
    fingerprint = table_fingerprint(table)
    relative = f"{PRICES_DIR}/{safe_name(symbol)}.{fingerprint[:16]}.parquet"
    target = root / relative
    if target.exists():
        return PriceFile(relative, fingerprint, written=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    tagged = table.replace_schema_metadata({"symbol": symbol, "data_fingerprint": fingerprint})
    # The folder is synced once per commit (StoreWriter.commit), before the catalog that names this file.
    write_bytes(target, _parquet_bytes(tagged), durable=durable, sync_dir=False)
    return PriceFile(relative, fingerprint, written=True)


@dataclass(frozen=True)
class CatalogEntry:
    """One catalog row: a stored symbol, its file, and the source file it was ingested from."""

    symbol: str
    file: str
    first_date: dt.date
    last_date: dt.date
    rows: int
    rejected_rows: int
    source_file: str
    source_size: int
    source_mtime_ns: int
    source_fingerprint: str
    data_fingerprint: str
    ingested_at: dt.datetime

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def same_content(self, other: CatalogEntry) -> bool:
        """Equal apart from ``ingested_at``: whether writing ``other`` over ``self`` would change anything."""
        mine, theirs = self.to_dict(), other.to_dict()
        mine.pop("ingested_at")
        theirs.pop("ingested_at")
        return mine == theirs


def _entries_from_table(table: pa.Table) -> dict[str, CatalogEntry]:
    columns = {name: table[name].to_pylist() for name in CATALOG_COLUMNS}
    return {
        symbol: CatalogEntry(**{name: columns[name][i] for name in CATALOG_COLUMNS})
        for i, symbol in enumerate(columns["symbol"])
    }


def _catalog_table(entries: Mapping[str, CatalogEntry]) -> pa.Table:
    ordered = [entries[s] for s in sorted(entries)]
    return pa.table(
        {name: [getattr(e, name) for e in ordered] for name in CATALOG_COLUMNS},
        schema=CATALOG_SCHEMA,
    )


def as_day(value: DateLike, what: str) -> np.int64 | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        value = value.date()
    try:
        day = np.datetime64(value, "D")
    except (ValueError, TypeError):
        raise ConfigError(f"{what} must be a date or 'YYYY-MM-DD', got {value!r}") from None
    if np.isnat(day):
        raise ConfigError(f"{what} must be a date or 'YYYY-MM-DD', got {value!r}")
    return np.int64(day.astype(np.int64))


class _Snapshot:
    """One committed catalog: the table, plus the per-symbol lookups that loads need.

    Full ``CatalogEntry`` objects are built only on demand: converting every date and timestamp of a
    4,000-row catalog to Python objects costs tens of milliseconds, which each load would otherwise pay.
    """

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self.row = {symbol: i for i, symbol in enumerate(table["symbol"].to_pylist())}
        self.files: list[str] = table["file"].to_pylist()
        self.fingerprints: list[str] = table["data_fingerprint"].to_pylist()
        self._entries: dict[str, CatalogEntry] | None = None

    def entries(self) -> dict[str, CatalogEntry]:
        if self._entries is None:
            self._entries = _entries_from_table(self.table)
        return self._entries


Bars = tuple[np.ndarray, dict[str, np.ndarray]]
#: all symbols' bars back to back: days, fields, and where each symbol's rows start (one more, the end)
_Columns = tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]


def _read_bars(path: Path, start: np.int64 | None, end: np.int64 | None) -> Bars:
    # One read() of the whole (small) file, then decoding from memory: fewer small reads than letting
    # Parquet seek around the file, and the read releases the GIL for the other loader threads.
    with open(path, "rb") as handle:
        data = handle.read()
    table = pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False)
    days = table["date"].cast(pa.int32()).to_numpy().astype(np.int64)
    lo = 0 if start is None else int(np.searchsorted(days, start, side="left"))
    hi = len(days) if end is None else int(np.searchsorted(days, end, side="right"))
    fields = {name: table[name].to_numpy()[lo:hi] for name in PRICE_FIELDS}
    return days[lo:hi], fields


def _scan_columns(paths: list[Path]) -> _Columns:
    """Many symbols' files in one Arrow scan: decoding runs on Arrow's own threads without the GIL.

    Reading the files one by one from Python costs CPU for each (open, footer, casts, conversions), which two
    loading workers then queue for on the GIL. The scan is
    one call, holding the GIL only to start and to hand the table over (iterating its batches from Python took
    it back once per file), and each file is a fragment whose expression numbers its rows by their owner, so
    the rows go back to their symbols by file, not by trusting row counts or order. With the alignment in one
    kernel (backtest.data.align_nb), loading a chunk beside a thread that spins in Python is several times
    faster than file by file, and as fast as before with no other thread.
    """
    import pyarrow.compute as pc
    import pyarrow.dataset as pads  # here, not at the top: its import is slow, and only loading needs it
    import pyarrow.fs as pafs

    dataset = pads.FileSystemDataset.from_paths(
        [os.path.abspath(p) for p in paths],
        schema=_SCAN_SCHEMA,
        format=pads.ParquetFileFormat(),
        filesystem=pafs.LocalFileSystem(),
        partitions=[pc.field(_OWNER) == i for i in range(len(paths))],
    )
    table = dataset.to_table(use_threads=True)
    owners = table[_OWNER].to_numpy()
    if len(owners) and np.any(owners[1:] < owners[:-1]):  # files' rows interleaved: group them, stably
        table = table.take(np.argsort(owners, kind="stable"))
        owners = table[_OWNER].to_numpy()
    starts = np.concatenate([[0], np.cumsum(np.bincount(owners, minlength=len(paths)))]).astype(np.int64)
    days = table["date"].cast(pa.int32()).to_numpy().astype(np.int64)
    step = np.diff(days) <= 0
    first_rows = starts[1:-1][(starts[1:-1] > 0) & (starts[1:-1] < len(days))]
    step[first_rows - 1] = False  # the next file's first day may come before this one's last
    if step.any():
        raise pa.ArrowInvalid("a file's rows came out of order")  # read file by file instead
    return days, {name: table[name].to_numpy() for name in PRICE_FIELDS}, starts


def _columns(bars: Sequence[Bars]) -> _Columns:
    """Per-symbol bars (read file by file, or from a database) back to back."""
    if not bars:
        return np.empty(0, np.int64), {name: np.empty(0) for name in PRICE_FIELDS}, np.zeros(1, np.int64)
    starts = np.concatenate([[0], np.cumsum([len(days) for days, _ in bars])]).astype(np.int64)
    days = np.concatenate([days for days, _ in bars]).astype(np.int64, copy=False)
    return days, {name: np.concatenate([f[name] for _, f in bars]) for name in PRICE_FIELDS}, starts


_OWNER = "__owner"  # the file a scanned row came from (its position in the paths)
_SCAN_SCHEMA = STORED_SCHEMA.append(pa.field(_OWNER, pa.int32()))


class Store:
    """A price store rooted at a folder; reading needs no lock, writing goes through ``writer()``."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._cache_lock = threading.Lock()
        self._cache: tuple[tuple[int, int, int], _Snapshot] | None = None

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def __reduce__(self) -> tuple[type[Store], tuple[Path]]:
        # Pickled as its root only (the lock and cache are per process): Prefect and process pools ship
        # stores between processes.
        return (Store, (self.root,))

    @property
    def prices_dir(self) -> Path:
        return self.root / PRICES_DIR

    @property
    def rejects_dir(self) -> Path:
        return self.root / REJECTS_DIR

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.parquet"

    @property
    def lock_path(self) -> Path:
        return self.root / ".lock"

    def rejects_path(self, symbol: str) -> Path:
        return self.rejects_dir / f"{safe_name(symbol)}.csv"

    # -- reading -----------------------------------------------------------------------------------------

    def _snapshot(self) -> _Snapshot:
        """The catalog as last committed, re-read only when the file changed (loads call this every time)."""
        try:
            handle = open(self.catalog_path, "rb")  # noqa: SIM115 - fstat and read must use the same file
        except FileNotFoundError:
            return _Snapshot(CATALOG_SCHEMA.empty_table())
        with handle:
            st = os.fstat(handle.fileno())
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
            with self._cache_lock:
                if self._cache is not None and self._cache[0] == key:
                    return self._cache[1]
            try:
                table = pq.read_table(handle).cast(CATALOG_SCHEMA)
            except (pa.ArrowInvalid, OSError) as exc:
                raise DataError(f"the store catalog {self.catalog_path} is unreadable: {exc}") from None
        snapshot = _Snapshot(table)
        with self._cache_lock:
            self._cache = (key, snapshot)
        return snapshot

    def entries(self) -> dict[str, CatalogEntry]:
        """The catalog rows by symbol."""
        return dict(self._snapshot().entries())

    def catalog(self) -> pd.DataFrame:
        """The catalog as a frame, sorted by symbol (empty, with all columns, for a new store)."""
        return self._snapshot().table.to_pandas()

    def symbols(self) -> list[str]:
        return sorted(self._snapshot().row)

    def rejects(self, symbol: str) -> pd.DataFrame:
        """The rows quarantined when ``symbol`` was last ingested (empty frame when there were none)."""
        path = self.rejects_path(symbol)
        if not path.exists():
            return pd.DataFrame(
                {c: pd.Series(dtype=np.int64 if c == "line" else object) for c in REJECT_COLUMNS}
            )
        return pd.read_csv(path, dtype={"line": np.int64}, keep_default_na=False)

    def data_fingerprint(self, symbols: Sequence[str]) -> str:
        """A key for the stored data of a set of symbols, from the catalog alone (no price file is read).

        Order-insensitive: it identifies the data, and callers add the symbol order to their cache key when
        the order matters to them.
        """
        symbols = [symbols] if isinstance(symbols, str) else list(symbols)
        snapshot = self._snapshot()
        self._check_known(symbols, snapshot)
        digest = hashlib.blake2b(digest_size=16)
        for symbol in sorted(set(symbols)):
            digest.update(symbol.encode("utf-8", "surrogatepass") + b"\0")
            digest.update(snapshot.fingerprints[snapshot.row[symbol]].encode() + b"\n")
        return digest.hexdigest()

    def _check_known(self, symbols: Sequence[str], snapshot: _Snapshot) -> None:
        unknown = [s for s in symbols if s not in snapshot.row]
        if unknown:
            shown = ", ".join(repr(s) for s in unknown[:20]) + (" ..." if len(unknown) > 20 else "")
            raise DataError(
                f"{len(unknown)} unknown symbol(s) not in the store at {self.root}: {shown} "
                f"(the store has {len(snapshot.row)} symbols; ingest them first with `backtest ingest`)"
            )

    def _price_path(self, symbol: str, file: str) -> Path:
        # The catalog is data too: never follow a file name that could leave the prices folder.
        if not _PRICE_FILE.fullmatch(file):
            raise DataError(f"catalog entry for {symbol!r} names an invalid file {file!r}")
        return self.root / file

    def load(self, symbols: Sequence[str], start: DateLike = None, end: DateLike = None) -> PricePanel:
        """The stored bars of ``symbols`` between ``start`` and ``end`` (inclusive) as one panel.

        Reads only these symbols' files, in one Arrow scan (see ``_scan_columns``).
        """
        symbols = [symbols] if isinstance(symbols, str) else list(symbols)
        if len(set(symbols)) != len(symbols):
            repeated = sorted({s for s in symbols if symbols.count(s) > 1})
            raise ConfigError(f"symbols listed more than once: {', '.join(map(repr, repeated))}")
        lo, hi = as_day(start, "start"), as_day(end, "end")
        if lo is not None and hi is not None and lo > hi:
            raise ConfigError(f"start {start} is after end {end}")
        for attempt in range(2):
            snapshot = self._snapshot()
            self._check_known(symbols, snapshot)
            paths = [self._price_path(s, snapshot.files[snapshot.row[s]]) for s in symbols]
            try:
                columns = self._read_all(paths, lo, hi)
                break
            except FileNotFoundError:
                # A writer committed a new catalog and removed the file we were about to read: the next
                # snapshot names the current file.
                if attempt == 1:
                    raise
        return _panel_of_columns(tuple(symbols), columns, lo, hi)

    @staticmethod
    def _read_all(paths: list[Path], lo: np.int64 | None, hi: np.int64 | None) -> _Columns:
        if len(paths) <= 2:
            return _columns([_read_bars(p, lo, hi) for p in paths])
        try:
            return _scan_columns(paths)
        except (OSError, pa.ArrowException):
            # A file gone between the catalog read and the scan, or one the scanner cannot take: the file-by-file
            # path says which file and why (and ``load`` retries a vanished file with the newer catalog).
            with ThreadPoolExecutor(max_workers=min(_LOAD_THREADS, len(paths))) as pool:
                return _columns(list(pool.map(lambda p: _read_bars(p, lo, hi), paths)))

    # -- writing -----------------------------------------------------------------------------------------

    def writer(self, *, timeout: float | None = None, durable: bool = True) -> StoreWriter:
        """A writer holding the store's lock; use it as a context manager (it commits on exit)."""
        return StoreWriter(self, timeout=timeout, durable=durable)


def align_panel(symbols: tuple[str, ...], bars: Sequence[Bars]) -> PricePanel:
    """Align per-symbol bars (each symbol's days sorted and unique) on the union of their days."""
    return _panel_of_columns(symbols, _columns(bars), None, None)


def _panel_of_columns(
    symbols: tuple[str, ...], columns: _Columns, lo: np.int64 | None, hi: np.int64 | None
) -> PricePanel:
    """Align the symbols' bars between ``lo`` and ``hi`` on the union of their days (backtest.data.align_nb)."""
    from backtest.data.align_nb import (
        align_bars_nb,  # here: numba's import would slow every `backtest` command
    )

    days, fields, starts = columns
    calendar, *arrays = align_bars_nb(
        np.ascontiguousarray(days, dtype=np.int64),
        starts,
        np.int64(np.iinfo(np.int64).min if lo is None else lo),
        np.int64(np.iinfo(np.int64).max if hi is None else hi),
        *(np.ascontiguousarray(fields[name], dtype=np.float64) for name in PRICE_FIELDS),
    )
    return PricePanel(
        symbols=symbols,
        dates=calendar.astype("datetime64[D]"),
        **dict(zip(PRICE_FIELDS, arrays, strict=True)),
    )


class StoreWriter:
    """Exclusive access to a store: stages catalog rows and commits them with one atomic replace.

    The lock is an ``fcntl.flock`` on ``root/.lock``: it is released by the kernel when the process dies, so a
    crashed writer never leaves the store locked.
    """

    def __init__(self, store: Store, *, timeout: float | None, durable: bool) -> None:
        self.store = store
        self.durable = durable
        self._timeout = timeout
        self._fd: int | None = None
        self._entries: dict[str, CatalogEntry] = {}
        self._dirty = False

    def __enter__(self) -> StoreWriter:
        root = self.store.root
        for folder in (root, self.store.prices_dir, self.store.rejects_dir):
            folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.store.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._acquire(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._entries = self.store.entries()
        self._dirty = False
        return self

    def _acquire(self, fd: int) -> None:
        if self._timeout is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise DataError(
                        f"the store at {self.store.root} is locked by another writer "
                        f"(waited {self._timeout:g} s on {self.store.lock_path})"
                    ) from None
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        # Commit even after an error: every staged row describes files already written, so keeping them
        # means an interrupted ingest only redoes what it had not reached.
        try:
            self.commit()
            self.collect_garbage()
        finally:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
                self._fd = None

    def _check_open(self) -> None:
        if self._fd is None:
            raise RuntimeError("StoreWriter used outside its `with` block")

    @property
    def entries(self) -> Mapping[str, CatalogEntry]:
        """The catalog as it will be after the next commit."""
        return self._entries

    def write_prices(self, symbol: str, table: pa.Table) -> PriceFile:
        self._check_open()
        return write_price_file(self.store.root, symbol, table, durable=self.durable)

    def write_symbol(
        self,
        symbol: str,
        table: pa.Table,
        *,
        source_file: str = "",
        source_size: int = 0,
        source_mtime_ns: int = 0,
        source_fingerprint: str = "",
        rejects: pa.Table | pd.DataFrame | None = None,
    ) -> CatalogEntry:
        """Write one symbol's bars and stage its catalog row, for callers holding the table in this process.

        The table must already be clean (``STORED_SCHEMA``, strictly increasing dates, no nulls): this is the
        store, not the validator, so it refuses rather than repairs.
        """
        self._check_open()
        if table.num_rows == 0:
            raise DataError(f"no bars to store for {symbol!r}")
        if any(table[name].null_count for name in table.column_names):
            raise DataError(f"bars for {symbol!r} contain nulls; validate them first")
        days = table["date"].cast(pa.int32()).to_numpy()
        if len(days) > 1 and not (np.diff(days) > 0).all():
            raise DataError(f"bars for {symbol!r} are not strictly increasing by date")
        price_file = self.write_prices(symbol, table)
        entry = CatalogEntry(
            symbol=symbol,
            file=price_file.file,
            first_date=table["date"][0].as_py(),
            last_date=table["date"][-1].as_py(),
            rows=table.num_rows,
            rejected_rows=0 if rejects is None else len(rejects),
            source_file=source_file,
            source_size=source_size,
            source_mtime_ns=source_mtime_ns,
            source_fingerprint=source_fingerprint,
            data_fingerprint=price_file.data_fingerprint,
            ingested_at=dt.datetime.now(dt.UTC),
        )
        self.put(entry, rejects)
        return entry

    def put(self, entry: CatalogEntry, rejects: pa.Table | pd.DataFrame | None = None) -> bool:
        """Stage a catalog row (its price file must already be written) and replace its rejects file.

        ``rejects`` (columns ``REJECT_COLUMNS``) None leaves the symbol's rejects file as it is; an empty table
        removes it. Returns whether the row differs from the current one.
        """
        self._check_open()
        if not _PRICE_FILE.fullmatch(entry.file) or not (self.store.root / entry.file).exists():
            raise DataError(f"cannot catalog {entry.symbol!r}: price file {entry.file!r} is missing")
        if rejects is not None:
            self._write_rejects(entry.symbol, rejects)
        current = self._entries.get(entry.symbol)
        if current is not None and current.same_content(entry):
            return False
        self._entries[entry.symbol] = entry
        self._dirty = True
        return True

    def _write_rejects(self, symbol: str, rejects: pa.Table | pd.DataFrame) -> None:
        path = self.store.rejects_path(symbol)
        if isinstance(rejects, pd.DataFrame):
            rejects = pa.Table.from_pandas(rejects, preserve_index=False)
        if rejects.num_rows == 0:
            path.unlink(missing_ok=True)
            return
        missing = [c for c in REJECT_COLUMNS if c not in rejects.column_names]
        if missing:
            raise ValueError(f"rejects table lacks columns {missing}")
        sink = pa.BufferOutputStream()
        pacsv.write_csv(
            rejects.select(list(REJECT_COLUMNS)), sink, pacsv.WriteOptions(quoting_style="needed")
        )
        write_bytes(path, sink.getvalue().to_pybytes(), durable=self.durable, sync_dir=False)

    def commit(self) -> bool:
        """Publish the staged rows with one atomic replace of the catalog; False when nothing changed."""
        self._check_open()
        if not self._dirty:
            return False
        if self.durable:
            # The renames of the files the new catalog names must be durable before the catalog is.
            fsync_dir(self.store.prices_dir)
            fsync_dir(self.store.rejects_dir)
        sink = pa.BufferOutputStream()
        pq.write_table(_catalog_table(self._entries), sink)
        write_bytes(self.store.catalog_path, sink.getvalue().to_pybytes(), durable=self.durable)
        self._dirty = False
        return True

    def collect_garbage(self) -> list[str]:
        """Remove price files no committed row names, and temporary files of interrupted writes.

        Safe only under the lock and after commit: then no writer is mid-write and nothing staged is pending.
        """
        self._check_open()
        if self._dirty:
            raise RuntimeError("commit before collecting garbage: staged rows name files not yet published")
        referenced = {Path(e.file).name for e in self._entries.values()}
        removed: list[str] = []
        for folder in (self.store.prices_dir, self.store.rejects_dir, self.store.root):
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                stale_tmp = path.name.startswith(".") and path.name.endswith(".tmp")
                orphan = folder == self.store.prices_dir and path.suffix == ".parquet"
                if stale_tmp or (orphan and path.name not in referenced):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                    removed.append(str(path.relative_to(self.store.root)))
        return removed
