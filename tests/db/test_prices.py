"""Prices in the database: the same panels, fingerprints and errors as the Parquet store, on both backends."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest
import sqlalchemy as sa

from backtest.data.panel import PRICE_FIELDS
from backtest.data.store import Store
from backtest.data.validation import STORED_SCHEMA
from backtest.db import schema as s
from backtest.db.connect import open_db
from backtest.db.optimize import check_query_plans, integrity_check
from backtest.db.prices import DbPriceSource, PriceSource, sync_prices
from backtest.errors import ConfigError, DataError

HOSTILE = ("A'; DROP TABLE prices;--", 'B"); DELETE FROM symbols; --', "C\\' OR 1=1 --", "Ünï ℂødé")


def assert_same_panel(a, b):
    assert a.symbols == b.symbols
    np.testing.assert_array_equal(a.dates, b.dates)
    for name in PRICE_FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_both_sources_are_price_sources(db_store):
    assert isinstance(db_store, PriceSource) and isinstance(DbPriceSource("sqlite:///x.db"), PriceSource)


def test_db_gives_the_stores_panels_and_fingerprints(db_store, db_url):
    first = sync_prices(db_store, db_url)
    assert first.written == 10 and first.rows == sum(e.rows for e in db_store.entries().values())
    source = DbPriceSource(db_url)
    symbols = db_store.symbols()
    assert source.symbols() == symbols
    assert source.data_fingerprint(symbols) == db_store.data_fingerprint(symbols)
    assert source.data_fingerprint(symbols[::-1]) == db_store.data_fingerprint(symbols)
    catalog = source.catalog()
    assert catalog["rows"].tolist() == db_store.catalog()["rows"].tolist()
    assert_same_panel(source.load(symbols), db_store.load(symbols))
    # a sub-range, in a caller's order, as the chunk loader asks for it
    picked = [symbols[3], symbols[0], symbols[7]]
    assert_same_panel(
        source.load(picked, start="2006-03-01", end=dt.date(2009, 12, 31)),
        db_store.load(picked, start="2006-03-01", end=dt.date(2009, 12, 31)),
    )
    # re-syncing unchanged data writes nothing
    again = sync_prices(db_store, db_url)
    assert (again.written, again.unchanged, again.rows) == (0, 10, 0)
    assert integrity_check(open_db(db_url)) == []
    assert all(c.uses_index for c in check_query_plans(open_db(db_url)))


def test_bad_requests_fail_like_the_store(db_store, db_url):
    sync_prices(db_store, db_url, symbols=db_store.symbols()[:2])
    source = DbPriceSource(db_url)
    one = db_store.symbols()[0]
    with pytest.raises(DataError, match="unknown symbol"):
        source.load([one, "NOPE"])
    with pytest.raises(DataError, match="unknown symbol"):
        source.data_fingerprint(["NOPE"])
    with pytest.raises(ConfigError, match="more than once"):
        source.load([one, one])
    with pytest.raises(ConfigError, match="after end"):
        source.load([one], start="2010-01-01", end="2009-01-01")


def _table(days: np.ndarray, base: float) -> pa.Table:
    close = base + np.arange(len(days), dtype=np.float64) / 8
    return pa.table(
        {
            "date": pa.array(days.astype("datetime64[D]"), pa.date32()),
            "open": close - 0.25,
            "high": close + 1.0,
            "low": close - 1.0,
            "close": close,
            "volume": np.full(len(days), 1e6),
        },
        schema=STORED_SCHEMA,
    )


def test_symbol_names_are_data_never_sql(tmp_path, db_url):
    store = Store(tmp_path / "hostile")
    days = np.arange(np.datetime64("2020-01-01"), np.datetime64("2020-03-01"))
    with store.writer(durable=False) as writer:
        for i, symbol in enumerate(HOSTILE):
            writer.write_symbol(symbol, _table(days[i:], 10.0 * (i + 1)))
    report = sync_prices(store, db_url)
    assert report.written == len(HOSTILE)
    source = DbPriceSource(db_url)
    assert sorted(source.symbols()) == sorted(HOSTILE)
    assert_same_panel(source.load(list(HOSTILE)), store.load(list(HOSTILE)))
    engine = open_db(db_url)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(s.prices)).scalar() == sum(
            e.rows for e in store.entries().values()
        )


def test_changing_one_symbol_changes_only_its_fingerprint_and_replaces_its_rows(db_store, tmp_path, db_url):
    store = Store(tmp_path / "copy")
    symbols = db_store.symbols()[:3]
    with store.writer(durable=False) as writer:
        for symbol in symbols:
            writer.write_symbol(symbol, db_store.load([symbol]).frame(symbol).reset_index().pipe(_as_table))
    sync_prices(store, db_url)
    source = DbPriceSource(db_url)
    before = {x: source.data_fingerprint([x]) for x in symbols}
    changed = symbols[1]
    days = np.arange(np.datetime64("2011-01-03"), np.datetime64("2011-02-03"))
    with store.writer(durable=False) as writer:
        writer.write_symbol(changed, _table(days, 55.0))
    report = sync_prices(store, db_url)
    assert (report.written, report.unchanged) == (1, 2)
    source = DbPriceSource(db_url)  # a new reader; the writer's process cleared its catalog cache too
    after = {x: source.data_fingerprint([x]) for x in symbols}
    assert [x for x in symbols if before[x] != after[x]] == [changed]
    assert after[changed] == store.data_fingerprint([changed])
    assert_same_panel(source.load([changed]), store.load([changed]))


def _as_table(frame) -> pa.Table:
    frame = frame.assign(date=frame["date"].dt.date)
    return pa.Table.from_pandas(frame[list(STORED_SCHEMA.names)], schema=STORED_SCHEMA, preserve_index=False)


def test_catalog_drift_is_reported_by_the_integrity_check(db_store, db_url):
    sync_prices(db_store, db_url, symbols=db_store.symbols()[:2])
    engine = open_db(db_url)
    victim = db_store.symbols()[0]
    with engine.begin() as conn:
        conn.execute(
            sa.delete(s.prices).where(s.prices.c.symbol == victim, s.prices.c.date < dt.date(2007, 1, 1))
        )
    problems = integrity_check(engine)
    assert len(problems) == 1 and "catalog drift" in problems[0] and victim in problems[0]


def test_the_cached_catalog_follows_writes_of_other_processes(db_store, db_url):
    sync_prices(db_store, db_url, symbols=db_store.symbols()[:2])
    source = DbPriceSource(db_url)
    one = db_store.symbols()[0]
    before = source.data_fingerprint([one])
    with open_db(db_url).begin() as conn:  # what another process's ingest does (no cache of ours cleared)
        conn.execute(
            sa.update(s.symbols)
            .where(s.symbols.c.symbol == one)
            .values(data_fingerprint="f" * 32, ingested_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))
        )
    assert DbPriceSource(db_url).data_fingerprint([one]) != before


def test_sqlite_reads_through_arrow_and_the_row_fallback_agrees(db_store, tmp_path, monkeypatch):
    from backtest.db import adbc, sqlio

    assert sqlio.use_arrow_sqlite(), "adbc-driver-sqlite is a dependency: the fast path must be available"
    url = f"sqlite:///{tmp_path / 'p.db'}"
    sync_prices(db_store, url)
    symbols = db_store.symbols()
    arrow = DbPriceSource(url).load(symbols, start="2006-01-01", end="2010-01-01")
    monkeypatch.setattr(adbc, "USE_ADBC", False)
    rows = DbPriceSource(url).load(symbols, start="2006-01-01", end="2010-01-01")
    assert_same_panel(arrow, rows)
    assert_same_panel(arrow, db_store.load(symbols, start="2006-01-01", end="2010-01-01"))
