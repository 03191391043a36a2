"""A chunk result's file (backtest.results.chunkio): exact round trip of every table; old formats and bad files refused."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from backtest.db.results import read_chunk_tables
from backtest.engine.study import ChunkResult, StudyPlan, chunked, date_range, run_chunk
from backtest.errors import DataError
from backtest.observe.profiling import read_chunk_timings
from backtest.results.chunkio import (
    FORMAT,
    SMALL_TABLES,
    chunk_from_bytes,
    chunk_to_bytes,
    read_chunk,
    read_tables,
)
from backtest.results.outputs import collect, read_chunks
from tasks.caching import ChunkResultSerializer, StoredChunk
from tests.panels import CONFIG, random_panel


def v1_bytes(result: ChunkResult) -> bytes:
    """A file of format 1 (one row, each table a ``list<struct>`` column), as the cache held before format 2."""
    columns = {}
    for name in ChunkResult.TABLES:
        table = pa.Table.from_pandas(getattr(result, name), preserve_index=False).combine_chunks()
        struct = pa.StructArray.from_arrays(
            [c.chunk(0) if c.num_chunks else pa.array([], c.type) for c in table.columns],
            fields=list(table.schema),
        )
        columns[name] = pa.ListArray.from_arrays(pa.array([0, len(struct)], pa.int32()), struct)
    meta = {"format": "backtest.chunk-result/1", "symbols": list(result.symbols), "timings": result.timings}
    sink = io.BytesIO()
    pq.write_table(pa.table(columns).replace_schema_metadata({"backtest": json.dumps(meta)}), sink)
    return sink.getvalue()


@pytest.fixture(scope="module")
def panel():
    return random_panel(n_symbols=8, n_bars=1300, seed=5)


@pytest.fixture(scope="module")
def plan(panel):
    return StudyPlan.create(CONFIG, *date_range(panel))


@pytest.fixture(scope="module")
def results(panel, plan):
    return [run_chunk(panel.select(c), plan) for c in chunked(list(panel.symbols), 3)]


def assert_same(got: ChunkResult, want: ChunkResult) -> None:
    assert got.symbols == want.symbols and got.timings == want.timings
    for name in ChunkResult.TABLES:
        a, b = getattr(got, name), getattr(want, name)
        pd.testing.assert_frame_equal(a, b, check_exact=True)
        assert list(a.dtypes) == list(b.dtypes), name


def test_every_table_round_trips_exactly(results) -> None:
    # missing values as the study makes them (NaN scores and metrics) are part of the round trip
    assert any(getattr(r, name).isna().any().any() for r in results for name in SMALL_TABLES)
    for result in results:
        assert_same(chunk_from_bytes(chunk_to_bytes(result)), result)


def test_nan_nat_missing_symbols_and_empty_tables_round_trip(results) -> None:
    r = results[0]
    oos = r.oos_returns.copy()
    oos.loc[oos.index[:5], "ret"] = np.nan
    oos.loc[oos.index[5:7], "traded"] = np.inf
    oos = oos[oos["symbol"] != r.symbols[1]].reset_index(
        drop=True
    )  # a symbol without rows keeps its category
    parts = r.portfolio_parts.copy()
    parts.loc[parts.index[0], "date"] = pd.NaT
    odd = dataclasses.replace(r, oos_returns=oos, portfolio_parts=parts)
    back = chunk_from_bytes(chunk_to_bytes(odd))
    assert_same(back, odd)
    assert list(back.oos_returns["symbol"].cat.categories) == list(r.symbols)
    assert back.oos_returns["ret"].isna().sum() == 5 and np.isinf(back.oos_returns["traded"]).sum() == 2

    # categoricals elsewhere keep their categories and order flag
    metrics = r.symbol_metrics.copy()
    metrics["symbol"] = pd.Categorical(
        metrics["symbol"], categories=sorted(metrics["symbol"])[::-1], ordered=True
    )
    ordered = dataclasses.replace(r, symbol_metrics=metrics)
    back = chunk_from_bytes(chunk_to_bytes(ordered))
    assert_same(back, ordered)
    assert back.symbol_metrics["symbol"].cat.ordered

    empty = dataclasses.replace(r, **{name: getattr(r, name).iloc[0:0] for name in ChunkResult.TABLES})
    back = chunk_from_bytes(chunk_to_bytes(empty))
    assert_same(back, empty)
    assert list(back.oos_returns["symbol"].cat.categories) == list(r.symbols)


def test_the_file_is_plain_parquet_of_the_returns_with_the_rest_in_its_footer(tmp_path, results) -> None:
    r = results[0]
    path = tmp_path / "chunk"
    path.write_bytes(chunk_to_bytes(r))
    rows = pq.read_table(path)
    assert rows.column_names == list(r.oos_returns.columns) and rows.num_rows == len(r.oos_returns)
    assert json.loads(rows.schema.metadata[b"backtest"])["format"] == FORMAT
    keys = pq.ParquetFile(path).metadata.metadata
    assert {f"backtest.table.{name}".encode() for name in SMALL_TABLES} <= set(keys)
    assert read_chunk_timings(path) == pytest.approx(r.timings)
    # the database writer reads only what it needs: the small tables come from the footer alone
    symbols, frames = read_chunk_tables(path, ["selections", "symbol_metrics"])
    assert symbols == r.symbols and set(frames) == {"selections", "symbol_metrics"}
    pd.testing.assert_frame_equal(frames["selections"], r.selections, check_exact=True)
    blob = bytearray(path.read_bytes())
    blob[100:2000] = bytes(1900)  # row data destroyed, footer intact
    symbols, _, frames = read_tables(bytes(blob), ["symbol_metrics"])
    pd.testing.assert_frame_equal(frames["symbol_metrics"], r.symbol_metrics, check_exact=True)
    with pytest.raises(DataError):
        read_chunk(bytes(blob))


def test_a_file_of_format_1_is_refused_and_collect_from_files_equals_collect_in_memory(
    tmp_path, results, plan
) -> None:
    with pytest.raises(DataError, match="chunk-result/1"):
        chunk_from_bytes(v1_bytes(results[1]))  # an earlier version's layout: never decoded wrongly
    # collect of files and of in-memory results: the same merged tables (NaN written as null)
    oos = results[0].oos_returns.copy()
    oos.loc[oos.index[:3], "ret"] = np.nan
    results = [dataclasses.replace(results[0], oos_returns=oos), *results[1:]]
    for i, result in enumerate(results):
        (tmp_path / f"chunk-{i}").write_bytes(chunk_to_bytes(result))
    collect(plan, read_chunks(tmp_path / f"chunk-{i}" for i in range(len(results))), tmp_path / "from-files")
    collect(plan, iter(results), tmp_path / "in-memory")
    for name in ("oos_returns", "selections", "oos_metrics", "portfolio", "grid_scores"):
        want = pq.read_table(tmp_path / "in-memory" / f"{name}.parquet")
        assert pq.read_table(tmp_path / "from-files" / f"{name}.parquet").equals(want), name
    assert pq.read_table(tmp_path / "from-files" / "oos_returns.parquet")["ret"].null_count == 3


@pytest.mark.parametrize(
    "blob",
    [b"", b"PAR1", b"not parquet at all", b"PAR1" + bytes(100) + b"PAR1"],
    ids=["empty", "magic-only", "text", "zeros"],
)
def test_anything_else_is_a_data_error(blob) -> None:
    with pytest.raises(DataError):
        chunk_from_bytes(blob)


def test_files_that_are_not_chunk_results_are_data_errors(results) -> None:
    plain = io.BytesIO()
    pq.write_table(pa.table({"x": [1, 2]}), plain)
    with pytest.raises(DataError, match="not a chunk result file"):
        chunk_from_bytes(plain.getvalue())
    future = io.BytesIO()
    pq.write_table(pa.table({"x": [1]}).replace_schema_metadata({"backtest": '{"format": "x/9"}'}), future)
    with pytest.raises(DataError, match="format 'x/9'"):
        chunk_from_bytes(future.getvalue())
    good = chunk_to_bytes(results[0])
    with pytest.raises(DataError):
        chunk_from_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(ValueError, match="no such chunk result tables"):
        read_tables(good, ["prices"])


def test_the_serializer_stores_exactly_the_chunk_file(results) -> None:
    serializer = ChunkResultSerializer()
    blob = serializer.dumps(results[0])
    assert blob[:4] == b"PAR1" and blob == chunk_to_bytes(results[0])
    assert serializer.dumps(StoredChunk.encode(results[0])) == blob
    stored = serializer.loads(blob)
    assert isinstance(stored, StoredChunk)
    assert_same(stored.load(), results[0])
