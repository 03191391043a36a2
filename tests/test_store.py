"""The Parquet store: round trips, date ranges, fingerprints, idempotent writes, locking, safe file names."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from backtest.data.store import CATALOG_COLUMNS, CatalogEntry, Store, safe_name, table_fingerprint
from backtest.data.validation import STORED_SCHEMA
from backtest.errors import ConfigError, DataError


def bars(start: str, n: int, base: float = 100.0, step: int = 1) -> pa.Table:
    """n clean bars, one every ``step`` calendar days from ``start``."""
    days = np.datetime64(start, "D") + np.arange(n) * step
    close = base + np.arange(n, dtype=np.float64)
    return pa.table(
        {
            "date": pa.array(days.astype("datetime64[D]")).cast(pa.date32()),
            "open": close - 0.5,
            "high": close + 1.0,
            "low": close - 1.0,
            "close": close,
            "volume": np.full(n, 1000.0),
        },
        schema=STORED_SCHEMA,
    )


def write(store: Store, tables: dict[str, pa.Table]) -> dict[str, CatalogEntry]:
    with store.writer(durable=False) as w:
        return {symbol: w.write_symbol(symbol, table) for symbol, table in tables.items()}


def mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_new_store_is_empty_and_reading_creates_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    catalog = store.catalog()
    assert list(catalog.columns) == list(CATALOG_COLUMNS)
    assert len(catalog) == 0
    assert store.symbols() == []
    panel = store.load([])
    assert panel.n_symbols == 0 and panel.n_bars == 0
    assert not (tmp_path / "store").exists()


def test_round_trip_aligns_calendars_without_filling(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    a, b = bars("2020-01-01", 10), bars("2020-01-05", 3, base=50.0, step=2)
    entries = write(store, {"AAA": a, "BBB": b})

    assert store.symbols() == ["AAA", "BBB"]
    catalog = store.catalog().set_index("symbol")
    assert catalog.loc["AAA", "rows"] == 10
    assert catalog.loc["BBB", "first_date"] == dt.date(2020, 1, 5)
    assert catalog.loc["BBB", "last_date"] == dt.date(2020, 1, 9)
    assert catalog.loc["AAA", "data_fingerprint"] == entries["AAA"].data_fingerprint == table_fingerprint(a)

    panel = store.load(["BBB", "AAA"])
    assert panel.symbols == ("BBB", "AAA")
    assert panel.dates[0] == np.datetime64("2020-01-01") and panel.n_bars == 10
    assert np.array_equal(panel.close[1], a["close"].to_numpy())
    bbb = panel.frame("BBB")
    assert list(bbb.index.strftime("%Y-%m-%d")) == ["2020-01-05", "2020-01-07", "2020-01-09"]
    assert bbb["close"].tolist() == [50.0, 51.0, 52.0]
    assert np.isnan(panel.close[0, :4]).all()  # before BBB's first bar: NaN, not a fake price


@pytest.mark.parametrize(
    ("start", "end", "first", "last"),
    [
        ("2020-01-03", "2020-01-05", "2020-01-03", "2020-01-05"),
        (dt.date(2020, 1, 3), None, "2020-01-03", "2020-01-10"),
        (None, dt.datetime(2020, 1, 2, 15, 30), "2020-01-01", "2020-01-02"),
        (np.datetime64("2020-01-10"), "2030-01-01", "2020-01-10", "2020-01-10"),
    ],
)
def test_load_date_range_is_inclusive(
    tmp_path: Path, start: object, end: object, first: str, last: str
) -> None:
    store = Store(tmp_path / "store")
    write(store, {"AAA": bars("2020-01-01", 10)})
    panel = store.load(["AAA"], start=start, end=end)
    assert str(panel.dates[0]) == first and str(panel.dates[-1]) == last
    assert panel.close.shape == (1, panel.n_bars)


def test_load_range_with_no_bars_gives_an_empty_calendar(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    write(store, {"AAA": bars("2020-01-01", 10)})
    assert store.load(["AAA"], start="2021-01-01").n_bars == 0


@pytest.mark.parametrize(
    ("start", "end"), [("2020-02-01", "2020-01-01"), ("not a date", None), (None, "2020-13-01")]
)
def test_bad_ranges_are_config_errors(tmp_path: Path, start: object, end: object) -> None:
    store = Store(tmp_path / "store")
    write(store, {"AAA": bars("2020-01-01", 3)})
    with pytest.raises(ConfigError):
        store.load(["AAA"], start=start, end=end)


def test_unknown_symbols_are_named(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    write(store, {"AAA": bars("2020-01-01", 3)})
    with pytest.raises(DataError, match=r"2 unknown symbol.*'ZZZ'.*'YYY'"):
        store.load(["AAA", "ZZZ", "YYY"])
    with pytest.raises(DataError, match="'ZZZ'"):
        store.data_fingerprint(["ZZZ"])
    with pytest.raises(ConfigError, match="more than once"):
        store.load(["AAA", "AAA"])


def test_data_fingerprint_is_cheap_stable_and_tracks_changes(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    write(store, {"AAA": bars("2020-01-01", 5), "BBB": bars("2020-01-01", 5, base=7.0)})
    both = store.data_fingerprint(["AAA", "BBB"])
    assert (
        both == store.data_fingerprint(["BBB", "AAA"]) == Store(store.root).data_fingerprint(["AAA", "BBB"])
    )
    assert both != store.data_fingerprint(["AAA"])
    only_b = store.data_fingerprint(["BBB"])
    write(store, {"AAA": bars("2020-01-01", 6)})
    assert store.data_fingerprint(["AAA", "BBB"]) != both
    assert store.data_fingerprint(["BBB"]) == only_b


def test_rewriting_identical_data_touches_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    write(store, {"AAA": bars("2020-01-01", 5), "BBB": bars("2020-01-01", 5, base=3.0)})
    before = mtimes(store.root)
    with store.writer(durable=False) as w:
        entry = w.write_symbol("AAA", bars("2020-01-01", 5))
        assert w.put(entry) is False
        assert w.commit() is False
    assert mtimes(store.root) == before


def test_replacing_a_symbol_swaps_its_file_only(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    old = write(store, {"AAA": bars("2020-01-01", 5), "BBB": bars("2020-01-01", 5, base=3.0)})
    bbb_file = store.root / old["BBB"].file
    bbb_mtime = bbb_file.stat().st_mtime_ns
    new = write(store, {"AAA": bars("2020-01-01", 8)})

    assert new["AAA"].file != old["AAA"].file
    assert not (store.root / old["AAA"].file).exists()  # the superseded file is collected
    assert bbb_file.stat().st_mtime_ns == bbb_mtime
    assert store.load(["AAA"]).n_bars == 8
    assert sorted(p.name for p in store.prices_dir.iterdir()) == sorted(
        Path(e.file).name for e in store.entries().values()
    )


TRICKY = [
    "../x",
    "../../outside",
    "/etc/passwd",
    "A'; DROP TABLE prices;--",
    "NUL\x00BYTE",
    "..",
    ".",
    "",
    "CON",
    "aux.b",
    "aapl",
    "AAPL",
    "x/../../y",
    "~root",
    "C:\\Windows\\system32",
    "ÄÖÜ",
    "A" * 300,
]


def test_hostile_symbol_names_stay_inside_the_store(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = Store(root)
    tables = {symbol: bars("2020-01-01", 3, base=10.0 + i) for i, symbol in enumerate(TRICKY)}
    rejects = pd.DataFrame({"source_file": ["f.csv"], "line": [2], "reason": ["test"], "raw": ["x"]})
    with store.writer(durable=False) as w:
        for symbol, table in tables.items():
            w.write_symbol(symbol, table, rejects=rejects)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
    for path in root.rglob("*"):
        assert path.resolve().is_relative_to(root.resolve())
        assert path.parent in (root, store.prices_dir, store.rejects_dir)
    names = [safe_name(s) for s in TRICKY]
    assert len(set(names)) == len(TRICKY)
    assert all("/" not in n and "\\" not in n and "\x00" not in n and not n.startswith(".") for n in names)
    assert safe_name("AAPL") == "AAPL" and safe_name("BRK.B") == "BRK.B" and safe_name("BF-B") == "BF-B"
    assert safe_name("aapl") != safe_name("AAPL")  # case-insensitive file systems would merge them

    assert sorted(store.symbols()) == sorted(TRICKY)
    panel = store.load(TRICKY)
    for i, symbol in enumerate(TRICKY):
        assert panel.close[i, 0] == 10.0 + i, symbol
        assert store.rejects(symbol)["reason"].tolist() == ["test"]


def test_catalog_entries_cannot_point_outside(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    entries = write(store, {"AAA": bars("2020-01-01", 3)})
    bad = CatalogEntry(**{**entries["AAA"].to_dict(), "file": "prices/../../../etc/passwd"})
    with store.writer(durable=False) as w, pytest.raises(DataError, match="missing"):
        w.put(bad)


def test_writers_are_serialised_by_the_lock(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    with (
        store.writer(durable=False),
        pytest.raises(DataError, match="locked by another writer"),
        store.writer(timeout=0.1),
    ):
        pass
    with store.writer(timeout=0.1, durable=False):  # released on exit
        pass


def test_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    write(store, {f"S{i}": bars("2020-01-01", 4, base=1.0 + i) for i in range(5)})
    write(store, {"S1": bars("2020-01-01", 6)})
    leftovers = [p for p in store.root.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    (store.prices_dir / ".S1.parquet.123.dead.tmp").write_bytes(b"partial")  # a crashed writer's leftover
    with store.writer(durable=False):
        pass
    assert not (store.prices_dir / ".S1.parquet.123.dead.tmp").exists()


def test_write_symbol_refuses_unclean_tables(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    unsorted = bars("2020-01-01", 3).take([2, 0, 1])
    with store.writer(durable=False) as w:
        with pytest.raises(DataError, match="strictly increasing"):
            w.write_symbol("AAA", unsorted)
        with pytest.raises(DataError, match="no bars"):
            w.write_symbol("AAA", bars("2020-01-01", 0))
    assert store.symbols() == []


def test_rejects_file_replaced_and_removed(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    rejects = pa.table(
        {"source_file": ["a.csv"], "line": [3], "reason": ["bad date: 'x'"], "raw": ['x,"1,2"']}
    )
    with store.writer(durable=False) as w:
        w.write_symbol("AAA", bars("2020-01-01", 3), rejects=rejects)
    frame = store.rejects("AAA")
    assert frame.to_dict("records") == [
        {"source_file": "a.csv", "line": 3, "reason": "bad date: 'x'", "raw": 'x,"1,2"'}
    ]
    assert store.catalog()["rejected_rows"].tolist() == [1]
    with store.writer(durable=False) as w:
        w.write_symbol("AAA", bars("2020-01-01", 3), rejects=rejects.slice(0, 0))
    assert len(store.rejects("AAA")) == 0
    assert not store.rejects_path("AAA").exists()


def test_durable_writes_produce_the_same_store(tmp_path: Path) -> None:
    fast, safe = Store(tmp_path / "fast"), Store(tmp_path / "safe")
    write(fast, {"AAA": bars("2020-01-01", 4)})
    with safe.writer() as w:
        w.write_symbol("AAA", bars("2020-01-01", 4))
    assert fast.entries()["AAA"].file == safe.entries()["AAA"].file
    assert fast.data_fingerprint(["AAA"]) == safe.data_fingerprint(["AAA"])
