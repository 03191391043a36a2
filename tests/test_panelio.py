"""The chunk price file: a memory-mapped Arrow IPC hand-over between the load and backtest tasks."""

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from backtest.data.panel import PRICE_FIELDS
from backtest.data.panelio import FORMAT, chunk_prices, prices_file, read_panel, write_panel
from backtest.errors import DataError
from tests.panels import random_panel


def assert_same_panel(a, b) -> None:
    assert a.symbols == b.symbols
    np.testing.assert_array_equal(a.dates, b.dates)
    for name in PRICE_FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


@pytest.mark.parametrize("read_soon", [False, True])  # around the page cache, or through it
def test_round_trip_is_exact_and_memory_mapped(tmp_path, read_soon) -> None:
    panel = random_panel(n_symbols=5, n_bars=300, seed=4)
    path = write_panel(panel, tmp_path / "prices.arrow", read_soon)
    assert path.read_bytes()[:6] == b"ARROW1" and not list(tmp_path.glob(".*.tmp"))
    back = read_panel(path)
    assert_same_panel(back, panel)
    # views of the mapped file, not copies: nothing was decoded
    assert not back.close.flags.owndata and not back.close.flags.writeable


def test_reads_the_earlier_parquet_layout(tmp_path) -> None:
    panel = random_panel(n_symbols=3, n_bars=200, seed=5)
    columns = {"symbol": pa.array(panel.symbols)}
    for name in PRICE_FIELDS:
        values = pa.array(getattr(panel, name).ravel(), pa.float64())
        columns[name] = pa.FixedSizeListArray.from_arrays(values, panel.n_bars)
    meta = {"format": FORMAT, "dates": panel.dates.astype(np.int64).tolist()}
    table = pa.table(columns).replace_schema_metadata({"backtest": json.dumps(meta)})
    pq.write_table(table, tmp_path / "old.parquet")
    assert_same_panel(read_panel(tmp_path / "old.parquet"), panel)


def test_other_files_are_refused(tmp_path) -> None:
    (tmp_path / "junk").write_bytes(b"not a price file at all")
    with pytest.raises(DataError, match="not a chunk price file"):
        read_panel(tmp_path / "junk")
    with pa.OSFile(str(tmp_path / "other.arrow"), "wb") as sink:
        table = pa.table({"x": [1]})
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    with pytest.raises(DataError, match="not a chunk price file"):
        read_panel(tmp_path / "other.arrow")


class _Source:
    """A price source that counts its loads."""

    def __init__(self, panel) -> None:
        self.panel, self.loads = panel, 0

    def load(self, symbols, end=None):
        self.loads += 1
        return self.panel.select(list(symbols))


def test_a_fetched_chunk_is_returned_at_once_and_its_file_written_beside(tmp_path) -> None:
    panel = random_panel(n_symbols=4, n_bars=250, seed=6)
    source = _Source(panel)
    last = dt.date(2020, 1, 1)
    got, written = chunk_prices(source, panel.symbols, "fp", last, tmp_path)
    assert got.symbols == panel.symbols and written is not None
    path = written.result()  # the caller waits before its chunk counts as done
    assert path == prices_file(tmp_path, "fp", last) and not list(tmp_path.glob(".*.tmp"))
    assert_same_panel(read_panel(path), panel)
    again, none = chunk_prices(source, panel.symbols, "fp", last, tmp_path)  # from the file: nothing to write
    assert none is None and source.loads == 1
    assert_same_panel(again, panel)


def test_a_failed_price_file_write_is_raised_by_its_future(tmp_path) -> None:
    panel = random_panel(n_symbols=2, n_bars=300, seed=7)
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder should be")
    got, written = chunk_prices(_Source(panel), panel.symbols, "fp", dt.date(2020, 1, 1), blocked)
    assert got.symbols == panel.symbols
    with pytest.raises(OSError):
        written.result()
