"""Phase 3's compact out-of-sample rows, the per-day sums computed beside them, and the optional sink.

``run_chunk`` writes the out-of-sample rows straight from the kernel (no symbols x bars arrays) and
``run_study`` can hand those rows to a sink instead of holding them (docs/design.md section 4: peak memory).
These tests check the bookkeeping of that layout against plain pandas/numpy recomputations from the rows
themselves and from the prices, and that the working set of a chunk stays below one calendar-shaped array.
"""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from backtest.config import FoldSpec, ParamGrid, StudyConfig
from backtest.engine.metrics import metrics_table
from backtest.engine.simulate_nb import METRIC_NAMES, ranges_metrics_nb, series_metrics_nb
from backtest.engine.strategies import register, sma_crossover, strategy_from_function
from backtest.engine.study import StudyPlan, date_range, run_chunk, run_study
from backtest.results.outputs import OUTPUT_TABLES
from tests.panels import random_panel

FOLDS = FoldSpec(train_years=2, validate_years=1, test_years=1)
GRID = ParamGrid.from_mapping({"fast": [5, 10, 20], "slow": [40, 60, 100]})


@pytest.fixture(scope="module")
def panel():
    return random_panel(n_symbols=11, n_bars=1800, seed=11)


@pytest.mark.parametrize("execution", ["close", "next_open"])
def test_chunk_tables_agree_with_its_out_of_sample_rows(panel, execution):
    config = StudyConfig(grid=GRID, folds=FOLDS, fees_bps=7, execution=execution, min_trades=2)
    first, last = date_range(panel)
    result = run_chunk(panel, StudyPlan.create(config, first, last))
    oos = result.oos_returns
    assert len(oos) > 1000
    # rows ordered by symbol (in the chunk's order), then date, each date once per symbol
    positions = oos["symbol"].cat.codes.to_numpy()
    assert (np.diff(positions) >= 0).all()
    assert not oos.duplicated(["symbol", "date"]).any()
    assert oos.groupby("symbol", observed=True)["date"].is_monotonic_increasing.all()

    # the portfolio part is the per-day sum of the rows
    by_day = oos.assign(abs_held=oos["held"].abs()).groupby("date")
    parts = result.portfolio_parts.set_index("date")
    np.testing.assert_array_equal(parts.index.to_numpy(), by_day.size().index.to_numpy())
    np.testing.assert_array_equal(parts["count"].to_numpy(), by_day.size().to_numpy())
    np.testing.assert_allclose(parts["ret_sum"], by_day["ret"].sum(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(parts["traded_sum"], by_day["traded"].sum(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(parts["held_sum"], by_day["abs_held"].sum(), rtol=1e-12, atol=1e-15)
    # the benchmark: each row's own close-to-close bar return (buy and hold), summed per day
    bar_ret = {}
    for i, symbol in enumerate(panel.symbols):
        own = ~np.isnan(panel.close[i])
        closes = panel.close[i, own]
        rets = np.concatenate([[0.0], closes[1:] / closes[:-1] - 1.0])
        bar_ret[symbol] = pd.Series(rets, index=panel.dates[own].astype("datetime64[ms]"))
    bench = np.array([bar_ret[s][d] for s, d in zip(oos["symbol"], oos["date"].to_numpy(), strict=True)])
    want = pd.Series(bench, index=oos["date"]).groupby(level=0).sum()
    np.testing.assert_allclose(parts["bench_sum"], want, rtol=1e-12, atol=1e-15)

    # per symbol and per (symbol, fold): the metrics of exactly those rows
    metrics = result.symbol_metrics.set_index("symbol")
    selections = result.selections.set_index(["symbol", "fold"])
    assert set(metrics.index) == set(oos["symbol"].astype(str))
    for symbol, rows in oos.groupby("symbol", observed=True):
        row = metrics_table(rows["ret"].to_numpy(), rows["traded"].to_numpy(), rows["held"].to_numpy())[0]
        np.testing.assert_array_equal(metrics.loc[symbol, list(METRIC_NAMES)].to_numpy(float), row)
        assert metrics.loc[symbol, "folds"] == rows["fold"].nunique()
        for fold, fold_rows in rows.groupby("fold"):
            sel = selections.loc[(symbol, fold)]
            fm = metrics_table(
                fold_rows["ret"].to_numpy(), fold_rows["traded"].to_numpy(), fold_rows["held"].to_numpy()
            )[0]
            assert sel["test_days"] == len(fold_rows)
            assert sel["test_return"] == fm[METRIC_NAMES.index("total_return")]
            np.testing.assert_equal(sel["test_score"], fm[METRIC_NAMES.index("sharpe")])
    # a symbol with bars in a test window but no chosen combination is listed as skipped, without rows
    skipped = result.selections[result.selections["basis"] == "skipped"]
    for sel in skipped.itertuples():
        assert sel.test_days == 0
        assert not ((oos["symbol"] == sel.symbol) & (oos["fold"] == sel.fold)).any()


def test_oos_sink_receives_the_rows_the_result_would_hold(panel, tmp_path):
    config = StudyConfig(grid=GRID, folds=FOLDS, fees_bps=3)
    first, last = date_range(panel)

    def run(**kwargs):
        return run_study(config, panel.symbols, panel.select, first, last, chunk_size=3, workers=2, **kwargs)

    kept = run()
    frames: list[pd.DataFrame] = []
    streamed = run(oos_sink=frames.append)
    assert streamed.oos_returns is None
    assert len(frames) == 4  # one per chunk of 3 of the 11 symbols, in universe order
    assert [list(f["symbol"].cat.categories) for f in frames] == [
        list(panel.symbols[i : i + 3]) for i in range(0, 11, 3)
    ]
    as_text = {"symbol": str}
    pd.testing.assert_frame_equal(
        pd.concat(frames, ignore_index=True).astype(as_text), kept.oos_returns.astype(as_text)
    )
    for name in ("selections", "symbol_metrics", "portfolio", "grid_scores"):
        pd.testing.assert_frame_equal(getattr(streamed, name), getattr(kept, name))
    assert streamed.portfolio_metrics == kept.portfolio_metrics

    # saving: a result that kept its rows writes them too; a streamed one writes the other tables only
    kept_files = kept.save(tmp_path / "kept")
    streamed_files = streamed.save(tmp_path / "streamed")
    assert set(kept_files) == set(OUTPUT_TABLES)
    assert set(streamed_files) == set(kept_files) - {"oos_returns"}
    pd.testing.assert_frame_equal(
        pd.read_parquet(kept_files["oos_returns"]).astype(as_text), kept.oos_returns.astype(as_text)
    )
    for name, path in streamed_files.items():
        pd.testing.assert_frame_equal(pd.read_parquet(path), pd.read_parquet(kept_files[name]))


def _sma_in_python(prices, fast=10, slow=50):
    return sma_crossover(prices, fast=fast, slow=slow)


@pytest.fixture(scope="module")
def python_strategy():
    name = "sma_in_python_for_memory"
    register(strategy_from_function(_sma_in_python, name=name, integer_params=("fast", "slow")))
    return name


@pytest.mark.parametrize(("strategy", "budget"), [("sma_crossover", 1.0), ("python", 2.0)])
def test_chunk_working_set_stays_small(python_strategy, strategy, budget):
    """Working set of a chunk above its result, in symbols x bars arrays. Phase 3 once made five of them
    (returns, traded, held, benchmark, fold) and the table beside them; a strategy written in Python also had
    its weights stored once per fold, so its peak grew with the folds. Now only the rows kept are written,
    and a Python strategy's weights only on the bars phase 3 reads (its own computation of one combination's
    weights is the rest)."""
    panel = random_panel(n_symbols=60, n_bars=2520, seed=5)
    first, last = date_range(panel)
    name = python_strategy if strategy == "python" else strategy
    plan = StudyPlan.create(StudyConfig(name, GRID, FOLDS), first, last)
    run_chunk(panel, plan)  # numba's compiled kernels loaded before measuring
    gc.collect()
    tracemalloc.start()  # sees numpy's buffers and numba's (its allocator is Python's raw allocator)
    try:
        result = run_chunk(panel, plan)
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.oos_returns.memory_usage(deep=False).sum() <= kept
    assert peak - kept <= budget * panel.close.nbytes


@pytest.mark.parametrize("execution", ["close", "next_open"])
def test_python_strategy_weights_kept_on_spans_give_the_kernel_results(python_strategy, execution):
    panel = random_panel(n_symbols=9, n_bars=1800, seed=4)  # gaps, late listings: ragged spans
    first, last = date_range(panel)
    for options in ({"fees_bps": 6}, {"fees_bps": 9, "min_trades": 6, "top_k": 1, "objective": "calmar"}):
        config = StudyConfig(python_strategy, GRID, FOLDS, execution=execution, **options)
        python = run_chunk(panel, StudyPlan.create(config, first, last))
        config = StudyConfig(grid=GRID, folds=FOLDS, execution=execution, **options)
        kernel = run_chunk(panel, StudyPlan.create(config, first, last))
        assert (kernel.selections["basis"] == "skipped").any()  # folds sat out: no previous position
        for table in ("oos_returns", "symbol_metrics", "portfolio_parts"):
            pd.testing.assert_frame_equal(getattr(python, table), getattr(kernel, table))


@settings(max_examples=40, deadline=None)
@given(
    values=arrays(
        np.float64,
        st.integers(0, 60),
        elements=st.one_of(st.floats(-0.5, 0.5), st.just(np.nan)),
    ),
    data=st.data(),
)
def test_range_metrics_equal_the_row_metrics_of_the_slice(values, data):
    n = len(values)
    bounds = data.draw(st.lists(st.integers(0, n), min_size=2, max_size=8))
    lo = np.array(bounds[::2][: len(bounds) // 2], dtype=np.int64)
    hi = np.array(bounds[1::2], dtype=np.int64)
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    traded = np.abs(np.nan_to_num(values)) * 3.0
    held = np.sign(np.nan_to_num(values))
    got = ranges_metrics_nb(values, traded, held, lo, hi)
    for i in range(len(lo)):
        want = series_metrics_nb(values[None, :], traded[None, :], held[None, :], int(lo[i]), int(hi[i]))[0]
        np.testing.assert_array_equal(got[i], want)
        sliced = metrics_table(values[lo[i] : hi[i]], traded[lo[i] : hi[i]], held[lo[i] : hi[i]])[0]
        np.testing.assert_array_equal(got[i], sliced)
