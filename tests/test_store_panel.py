"""Store.load's alignment of symbols on one calendar, against a pandas pivot of the same bars."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from backtest.data import store as store_module
from backtest.data.panel import PRICE_FIELDS
from backtest.data.store import Store
from backtest.data.validation import STORED_SCHEMA


def test_load_aligns_like_a_pivot_of_the_bars(tmp_path) -> None:
    rng = np.random.default_rng(8)
    store = Store(tmp_path / "store")
    frames = {}
    with store.writer(durable=False) as w:
        for i in range(12):
            start = np.datetime64("2020-01-01") + int(rng.integers(0, 40))
            span = np.arange(int(rng.integers(1, 80)))
            if i % 3 == 0:  # gaps inside the symbol's own span
                span = np.unique(rng.choice(span, size=max(1, len(span) // 2)))
            days = start + span
            prices = {f: rng.random(len(days)) + 1.0 for f in PRICE_FIELDS}
            table = pa.table(
                {"date": pa.array(days.astype("datetime64[D]")).cast(pa.date32()), **prices},
                schema=STORED_SCHEMA,
            )
            w.write_symbol(f"S{i:02d}", table)
            frames[f"S{i:02d}"] = pd.DataFrame({"date": days, **prices})
    symbols = sorted(frames, reverse=True)
    panel = store.load(symbols)
    long = pd.concat([f.assign(symbol=s) for s, f in frames.items()])
    for name in PRICE_FIELDS:
        wide = long.pivot(index="symbol", columns="date", values=name).loc[symbols]
        assert np.array_equal(panel.dates, wide.columns.to_numpy().astype("datetime64[D]"))
        np.testing.assert_array_equal(getattr(panel, name), wide.to_numpy())


def test_one_scan_of_many_files_reads_what_reading_them_one_by_one_reads(tmp_path) -> None:
    """The scan gives each file's rows back to its own symbol, also when a file comes in several batches
    (row groups) and when a date range leaves a symbol with no bars."""
    rng = np.random.default_rng(3)
    paths = []
    for i in range(9):
        days = np.datetime64("2021-03-01") + np.unique(rng.integers(0, 300, size=int(rng.integers(0, 60))))
        table = pa.table(
            {
                "date": pa.array(days.astype("datetime64[D]")).cast(pa.date32()),
                **{f: rng.random(len(days)) for f in PRICE_FIELDS},
            },
            schema=STORED_SCHEMA,
        )
        path = tmp_path / f"s{i}.parquet"
        pq.write_table(table, path, row_group_size=int(rng.integers(3, 20)))  # several batches per file
        paths.append(path)
    lo = np.int64(np.datetime64("2021-05-01", "D").astype(np.int64))
    hi = np.int64(np.datetime64("2021-09-30", "D").astype(np.int64))
    symbols = tuple(f"S{i}" for i in range(len(paths)))
    for start, end in ((None, None), (lo, hi), (hi, None), (None, lo)):
        scanned = store_module._panel_of_columns(symbols, store_module._scan_columns(paths), start, end)
        one_by_one = store_module.align_panel(
            symbols, [store_module._read_bars(p, start, end) for p in paths]
        )
        assert scanned.dates.tolist() == one_by_one.dates.tolist()
        for name in PRICE_FIELDS:
            np.testing.assert_array_equal(getattr(scanned, name), getattr(one_by_one, name))


def test_a_file_gone_before_the_scan_is_named_by_the_file_by_file_read(tmp_path) -> None:
    store = Store(tmp_path / "store")
    days = np.datetime64("2020-01-01") + np.arange(10)
    with store.writer(durable=False) as w:
        for name in ("A", "B", "C"):
            prices = {f: np.full(len(days), 2.0) for f in PRICE_FIELDS}
            table = pa.table(
                {"date": pa.array(days.astype("datetime64[D]")).cast(pa.date32()), **prices},
                schema=STORED_SCHEMA,
            )
            w.write_symbol(name, table)
    victim = store.root / store.entries()["B"].file
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=victim.name):
        store.load(["A", "B", "C"])


@pytest.fixture(scope="module")
def checked_align_bars_nb():
    """The kernel compiled with bounds checks: numba does not check indices, so a wrong one read garbage or
    crashed the whole pytest process (it did, once, in CI: hi < lo, a symbol's rows counted negative)."""
    from numba import njit

    from backtest.data.align_nb import align_bars_nb

    return njit(boundscheck=True)(align_bars_nb.py_func)


@settings(max_examples=60, deadline=None)
@given(
    spans=st.lists(st.lists(st.integers(0, 60), max_size=30, unique=True), max_size=8),
    lo=st.one_of(st.none(), st.integers(-5, 65)),
    hi=st.one_of(st.none(), st.integers(-5, 65)),
)
@example(spans=[[1, 5, 9]], lo=7, hi=3)  # hi < lo inside a symbol's span
@example(spans=[[1, 5, 9], [2]], lo=60, hi=-5)  # hi < lo, nothing at all in range
@example(spans=[[3], []], lo=3, hi=3)
def test_the_alignment_kernel_matches_a_pivot_of_the_bars(checked_align_bars_nb, spans, lo, hi) -> None:
    """align_bars_nb against the obvious: keep each symbol's bars in [lo, hi], pivot on the days, NaN elsewhere."""
    align_bars_nb = checked_align_bars_nb
    rng = np.random.default_rng(len(spans))
    bars = [(np.array(sorted(days), dtype=np.int64), rng.random(len(days))) for days in spans]
    starts = np.concatenate([[0], np.cumsum([len(d) for d, _ in bars])]).astype(np.int64)
    days = np.concatenate([d for d, _ in bars] + [np.empty(0, np.int64)])
    values = np.concatenate([v for _, v in bars] + [np.empty(0)])
    low, high = np.iinfo(np.int64).min if lo is None else lo, np.iinfo(np.int64).max if hi is None else hi
    calendar, *fields = align_bars_nb(
        days, starts, np.int64(low), np.int64(high), *(values + k for k in range(5))
    )
    kept = [(d[(d >= low) & (d <= high)], v[(d >= low) & (d <= high)]) for d, v in bars]
    want_days = np.unique(np.concatenate([d for d, _ in kept] + [np.empty(0, np.int64)]))
    assert calendar.tolist() == want_days.tolist()
    for k, got in enumerate(fields):
        want = np.full((len(bars), len(want_days)), np.nan)
        for i, (d, v) in enumerate(kept):
            want[i, np.searchsorted(want_days, d)] = v + k
        np.testing.assert_array_equal(got, want)
