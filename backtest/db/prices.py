"""Prices in the database: the price source a study reads from, and the sink ``backtest ingest`` writes to.

``PriceSource`` is what the planner and the chunk loader need from any price source; the Parquet ``Store``
and ``DbPriceSource`` both provide it, with the same semantics (same errors for unknown or repeated symbols,
same panel for the same data, same fingerprint for the same values), so a study gives identical results
whichever one it reads.

Reading a chunk is one indexed range query per chunk (primary key (symbol, date)), decoded in C into Arrow
(SQLite through Arrow's ADBC driver, PostgreSQL through COPY) or, without ADBC, fetched in batches into
NumPy; never a query per symbol or Python code per row. The chunk fingerprint comes from the ``symbols`` catalog alone, so planning a study
reads no prices.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa
from cachetools import TTLCache
from sqlalchemy.engine import Engine

from backtest.data.panel import PRICE_FIELDS, PricePanel
from backtest.data.store import Bars, DateLike, Store, align_panel, as_day
from backtest.db import schema as s
from backtest.db.connect import open_db
from backtest.db.engine import db_errors, is_postgres, read_txn, write_txn
from backtest.db.sqlio import (
    bulk_insert,
    epoch_day,
    fetch_numeric,
    pg_copy_out,
    sqlite_arrow,
    use_arrow_sqlite,
)
from backtest.errors import ConfigError, DataError

__all__ = ["DbPriceSource", "PriceSource", "SyncReport", "open_price_source", "sync_prices"]

#: catalog look-ups are repeated for every chunk of a study (its fingerprint): the frame is kept for a while,
#: with the catalog version it was read at, and reused only while that version is current
CATALOG_TTL_SECONDS = 300.0
_CATALOG_CACHE: TTLCache[str, tuple[tuple[object, ...], pd.DataFrame]] = TTLCache(
    maxsize=16, ttl=CATALOG_TTL_SECONDS
)
_CATALOG_COLUMNS = (
    "symbol",
    "first_date",
    "last_date",
    "rows",
    "data_fingerprint",
    "source_file",
    "ingested_at",
)
_PG_PRICE_SCHEMA = pa.schema(
    [("symbol", pa.string()), ("day", pa.int64())] + [(name, pa.float64()) for name in PRICE_FIELDS]
)


@runtime_checkable
class PriceSource(Protocol):
    """Where a study's prices come from: a catalog to plan with, fingerprints for cache keys, and chunks."""

    def catalog(self) -> pd.DataFrame:
        """One row per symbol with at least ``symbol``, ``first_date``, ``last_date``, ``rows``."""
        ...

    def data_fingerprint(self, symbols: Sequence[str]) -> str:
        """A key for the stored data of ``symbols``, order-insensitive, from the catalog alone."""
        ...

    def load(self, symbols: Sequence[str], start: DateLike = None, end: DateLike = None) -> PricePanel:
        """The bars of ``symbols`` between ``start`` and ``end`` (inclusive) as one panel."""
        ...


def fingerprint_of(per_symbol: dict[str, str], symbols: Sequence[str]) -> str:
    """The Parquet store's chunk fingerprint, from per-symbol value fingerprints (kept identical on purpose)."""
    digest = hashlib.blake2b(digest_size=16)
    for symbol in sorted(set(symbols)):
        digest.update(symbol.encode("utf-8", "surrogatepass") + b"\0")
        digest.update(per_symbol[symbol].encode() + b"\n")
    return digest.hexdigest()


class DbPriceSource:
    """Prices read from a database URL (the engine is the process's, so this object pickles as its URL)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __repr__(self) -> str:
        return f"DbPriceSource({self.url!r})"

    def __reduce__(self) -> tuple[type[DbPriceSource], tuple[str]]:
        return (DbPriceSource, (self.url,))

    @property
    def engine(self) -> Engine:
        return open_db(self.url)

    def catalog(self) -> pd.DataFrame:
        """The ``symbols`` table as a frame; served from the TTL cache while the catalog's version (row count
        and latest ingest time, one tiny query) is unchanged, so a cached catalog is never stale."""
        c = s.symbols.c
        columns = [c[name] for name in _CATALOG_COLUMNS]
        with db_errors(self.url, "read the catalog of"), read_txn(self.engine) as conn:
            version = tuple(conn.execute(sa.select(sa.func.count(), sa.func.max(c.ingested_at))).one())
            cached = _CATALOG_CACHE.get(self.url)
            if cached is not None and cached[0] == version:
                return cached[1].copy()
            rows = conn.execute(sa.select(*columns).order_by(c.symbol)).all()
        frame = pd.DataFrame(rows, columns=list(_CATALOG_COLUMNS))
        frame["rows"] = frame["rows"].astype(np.int64)
        _CATALOG_CACHE[self.url] = (version, frame)
        return frame.copy()

    def symbols(self) -> list[str]:
        return self.catalog()["symbol"].tolist()

    def data_fingerprint(self, symbols: Sequence[str]) -> str:
        symbols = [symbols] if isinstance(symbols, str) else list(symbols)
        frame = self.catalog()
        known = dict(zip(frame["symbol"], frame["data_fingerprint"], strict=True))
        self._check_known(symbols, known)
        return fingerprint_of(known, symbols)

    def _check_known(self, symbols: Sequence[str], known: dict[str, str]) -> None:
        unknown = [x for x in symbols if x not in known]
        if unknown:
            shown = ", ".join(repr(x) for x in unknown[:20]) + (" ..." if len(unknown) > 20 else "")
            raise DataError(
                f"{len(unknown)} unknown symbol(s) not in the database: {shown} (it has {len(known)} "
                "symbols; ingest them first with `backtest ingest SOURCE --store DIR --db URL`)"
            )

    def load(self, symbols: Sequence[str], start: DateLike = None, end: DateLike = None) -> PricePanel:
        symbols = [symbols] if isinstance(symbols, str) else list(symbols)
        if len(set(symbols)) != len(symbols):
            repeated = sorted({x for x in symbols if symbols.count(x) > 1})
            raise ConfigError(f"symbols listed more than once: {', '.join(map(repr, repeated))}")
        lo, hi = as_day(start, "start"), as_day(end, "end")
        if lo is not None and hi is not None and lo > hi:
            raise ConfigError(f"start {start} is after end {end}")
        if not symbols:
            return align_panel((), [])
        engine = self.engine
        where = [s.prices.c.symbol.in_(symbols)]
        if lo is not None:
            where.append(s.prices.c.date >= dt.date.fromordinal(_EPOCH_ORDINAL + int(lo)))
        if hi is not None:
            where.append(s.prices.c.date <= dt.date.fromordinal(_EPOCH_ORDINAL + int(hi)))
        by_symbol: dict[str, Bars] | None = None
        with db_errors(self.url, "read prices from"):
            with read_txn(engine) as conn:
                known = {
                    row.symbol
                    for row in conn.execute(
                        sa.select(s.symbols.c.symbol).where(s.symbols.c.symbol.in_(symbols))
                    )
                }
                self._check_known(symbols, {x: "" for x in known})
                if is_postgres(conn):
                    by_symbol = _read_pg(conn, where)
                elif not use_arrow_sqlite():
                    by_symbol = _read_sqlite_rows(conn, where)
            if by_symbol is None:
                # ADBC's own connection, after Python's is closed: the two SQLite libraries never hold the
                # file at once (engine.one_sqlite_library)
                by_symbol = _split_by_symbol(sqlite_arrow(engine, price_query(where, with_symbol=True)))
        empty = (np.empty(0, np.int64), {name: np.empty(0) for name in PRICE_FIELDS})
        return align_panel(tuple(symbols), [by_symbol.get(x, empty) for x in symbols])


_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()


def price_query(where: list[sa.ColumnElement[bool]], with_symbol: bool) -> sa.Select:
    """The chunk load: one range read of the primary key, in key order."""
    p = s.prices.c
    columns = ([p.symbol] if with_symbol else []) + [epoch_day(p.date).label("day")]
    columns += [p[name] for name in PRICE_FIELDS]
    return sa.select(*columns).where(*where).order_by(p.symbol, p.date)


def count_query(where: list[sa.ColumnElement[bool]]) -> sa.Select:
    p = s.prices.c
    return sa.select(p.symbol, sa.func.count()).where(*where).group_by(p.symbol).order_by(p.symbol)


def _read_sqlite_rows(conn: sa.Connection, where: list[sa.ColumnElement[bool]]) -> dict[str, Bars]:
    # Without ADBC: two statements in one read transaction (one snapshot), the per-symbol row counts, then
    # the numbers alone in key order, so no symbol string is built per row.
    counts = conn.execute(count_query(where)).all()
    values = fetch_numeric(conn, price_query(where, with_symbol=False), 1 + len(PRICE_FIELDS))
    out: dict[str, Bars] = {}
    offset = 0
    for symbol, n in counts:
        block = values[offset : offset + n]
        offset += n
        out[symbol] = (
            block[:, 0].astype(np.int64),
            {name: np.ascontiguousarray(block[:, i + 1]) for i, name in enumerate(PRICE_FIELDS)},
        )
    return out


def _read_pg(conn: sa.Connection, where: list[sa.ColumnElement[bool]]) -> dict[str, Bars]:
    return _split_by_symbol(pg_copy_out(conn, price_query(where, with_symbol=True), _PG_PRICE_SCHEMA))


def _split_by_symbol(table: pa.Table) -> dict[str, Bars]:
    """Rows in (symbol, date) order -> each symbol's days and price arrays (slices, no copies)."""
    if table.num_rows == 0:
        return {}
    # dictionary-encoded in C: integer codes to compare, one Python string per symbol, not per row
    encoded = table["symbol"].combine_chunks().dictionary_encode()
    codes = encoded.indices.to_numpy()
    names = encoded.dictionary.to_pylist()
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    ends = np.r_[starts[1:], len(codes)]
    days = table["day"].to_numpy().astype(np.int64, copy=False)
    fields = {name: table[name].to_numpy().astype(np.float64, copy=False) for name in PRICE_FIELDS}
    return {
        str(names[codes[a]]): (days[a:b], {name: fields[name][a:b] for name in PRICE_FIELDS})
        for a, b in zip(starts, ends, strict=True)
    }


# -- writing -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncReport:
    """What ``sync_prices`` did: symbols written, left as they were (same fingerprint), rows written."""

    written: int
    unchanged: int
    rows: int
    seconds: float

    def to_dict(self) -> dict[str, float]:
        return {
            "written": self.written,
            "unchanged": self.unchanged,
            "rows": self.rows,
            "seconds": self.seconds,
        }


def sync_prices(
    store: Store, url: str, symbols: Sequence[str] | None = None, *, batch_rows: int = 500_000
) -> SyncReport:
    """Copy the store's validated prices into the database, replacing each changed symbol's rows.

    A symbol whose database fingerprint equals the store's is skipped, so re-running is cheap and changes
    nothing. A changed symbol's old rows are deleted and its new rows and catalog row inserted in the same
    transaction: a reader sees the old data or the new, never a mix. Several symbols share a transaction
    (up to about ``batch_rows`` rows) to amortise commits.
    """
    import time

    t0 = time.perf_counter()
    engine = open_db(url, create=True, migrate=True)
    entries = store.entries()
    wanted = sorted(entries) if symbols is None else list(symbols)
    with db_errors(url, "read the catalog of"), read_txn(engine) as conn:
        current = dict(conn.execute(sa.select(s.symbols.c.symbol, s.symbols.c.data_fingerprint)).all())
    todo = [x for x in wanted if current.get(x) != entries[x].data_fingerprint]
    rows = 0
    batch: list[str] = []
    batch_size = 0
    for symbol in todo:
        batch.append(symbol)
        batch_size += entries[symbol].rows
        if batch_size >= batch_rows:
            rows += _write_batch(store, engine, url, batch)
            batch, batch_size = [], 0
    if batch:
        rows += _write_batch(store, engine, url, batch)
    _CATALOG_CACHE.pop(url, None)
    return SyncReport(len(todo), len(wanted) - len(todo), rows, time.perf_counter() - t0)


def _write_batch(store: Store, engine: Engine, url: str, symbols: list[str]) -> int:
    entries = store.entries()
    tables = {x: pq.read_table(store.root / entries[x].file) for x in symbols}
    written = 0
    with db_errors(url, "write prices to"), write_txn(engine) as conn:
        # deleting the catalog row cascades to the symbol's prices
        conn.execute(sa.delete(s.symbols).where(s.symbols.c.symbol.in_(symbols)))
        now = dt.datetime.now(dt.UTC)
        conn.execute(
            sa.insert(s.symbols),
            [
                {
                    "symbol": x,
                    "first_date": entries[x].first_date,
                    "last_date": entries[x].last_date,
                    "rows": entries[x].rows,
                    "data_fingerprint": entries[x].data_fingerprint,
                    "source_file": entries[x].source_file,
                    "ingested_at": now,
                }
                for x in symbols
            ],
        )
        columns: dict[str, list[np.ndarray]] = {name: [] for name in ("symbol", "date", *PRICE_FIELDS)}
        for symbol, table in tables.items():
            columns["symbol"].append(np.full(table.num_rows, symbol, dtype=object))
            columns["date"].append(table["date"].cast(pa.int32()).to_numpy().astype("datetime64[D]"))
            for name in PRICE_FIELDS:
                columns[name].append(table[name].to_numpy())
            written += table.num_rows
        bulk_insert(conn, s.prices, {k: np.concatenate(v) for k, v in columns.items()})
    return written


def open_price_source(store_root: str | Path, db: str | None = None) -> PriceSource:
    """The study's price source: the database ``db`` when given, else the Parquet store at ``store_root``."""
    return DbPriceSource(db) if db else Store(store_root)
