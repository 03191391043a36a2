"""What keeps the report cheap without changing what it shows: long lines thinned to the pixels they cover
(extremes, first and last points kept), each result table read once in the columns the plots use, and the
report builder importable ahead of time on a background thread."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from backtest.observe.monitor import CORE_PREFIX
from backtest.observe.plots import DPI, _figure, _line, _pixel_width
from backtest.observe.profiling import RESOURCES_FILE
from backtest.observe.report import build_report
from backtest.observe.runtables import RunTables
from backtest.observe.svgcharts import Svg, m4_indices, nice_ticks, resources_svg
from tasks.report import preload_report


def _bucket_extremes(values: np.ndarray, buckets: int) -> list[tuple[float, float]]:
    """(min, max) of the finite values of each run, the runs cut as ``m4_indices`` cuts them."""
    size = -(-len(values) // buckets)
    runs = [values[i : i + size] for i in range(0, len(values), size)]
    return [(np.nanmin(r), np.nanmax(r)) if np.isfinite(r).any() else (np.nan, np.nan) for r in runs]


def test_m4_keeps_first_last_and_each_buckets_extremes_of_a_long_series():
    rng = np.random.default_rng(3)
    y = np.cumsum(rng.normal(size=200_000))
    keep = m4_indices(y, 800)
    assert len(keep) <= 4 * 800 and keep[0] == 0 and keep[-1] == len(y) - 1
    assert np.all(np.diff(keep) > 0)  # in order, no repeats: the line is drawn in its own order
    assert y[keep].min() == y.min() and y[keep].max() == y.max()
    size = -(-len(y) // 800)
    kept_bucket = keep // size
    for b, (low, high) in enumerate(_bucket_extremes(y, 800)):
        mine = y[keep[kept_bucket == b]]
        assert (mine.min(), mine.max()) == (low, high), b


def test_m4_returns_a_short_series_whole():
    y = np.arange(100.0)
    assert np.array_equal(m4_indices(y, 25), np.arange(100))  # four points a bucket: nothing to gain
    assert np.array_equal(m4_indices(y[:0], 10), np.arange(0))


@settings(max_examples=150, deadline=None)
@given(
    values=arrays(
        np.float64,
        st.integers(1, 400),
        elements=st.one_of(st.just(np.nan), st.floats(-1e6, 1e6)),
    ),
    buckets=st.integers(1, 60),
)
def test_m4_never_loses_an_extreme_nor_picks_a_nan_as_one(values, buckets):
    keep = m4_indices(values, buckets)
    assert keep[0] == 0 and keep[-1] == len(values) - 1 and np.all(np.diff(keep) > 0)
    if len(keep) == len(values):
        return
    size = -(-len(values) // buckets)
    kept = values[keep]
    for b, (low, high) in enumerate(_bucket_extremes(values, buckets)):
        mine = kept[keep // size == b]
        if np.isnan(low):  # a run of NaN only: its first and last point keep the gap
            assert np.isnan(mine).all() and 1 <= len(mine) <= 2
        else:
            assert np.nanmin(mine) == low and np.nanmax(mine) == high


def test_a_long_line_is_drawn_with_at_most_eight_points_per_pixel_column_and_its_extremes():
    fig = _figure(9, 4)
    ax = fig.subplots()
    width = _pixel_width(fig)
    assert width == round((9 - 0.8 - 0.2) * DPI)  # the default margins, in pixels
    x = np.arange(50_000, dtype=float)
    y = np.sin(x / 500.0) + (x == 31_337) * 5.0  # one spike the thinning must keep
    _line(ax, x, y, width)
    (line,) = ax.get_lines()
    xs, ys = line.get_xdata(), line.get_ydata()
    assert len(xs) <= 8 * width and xs[0] == 0 and xs[-1] == x[-1]
    assert ys.max() == y.max() and 31_337 in xs and ys.min() == y.min()


def test_long_resource_series_still_plot_every_sample_range(tmp_path):
    """A long monitor series (hours at a short interval) draws in bounded time and keeps its peaks."""
    import re

    n = 100_000
    t = np.arange(n) * 0.05
    rss = np.full(n, 500.0 * 2**20)
    rss[77_777] = 4000.0 * 2**20  # a short peak of memory
    frame = pd.DataFrame(
        {
            "elapsed": t,
            "tree_cpu_percent": np.full(n, 150.0),
            f"{CORE_PREFIX}0": np.full(n, 80.0),
            f"{CORE_PREFIX}1": np.full(n, 70.0),
            "tree_rss": rss,
            "tree_read_bytes": np.arange(n) * 1e5,
            "tree_write_bytes": np.zeros(n),
        }
    )
    frame.to_parquet(tmp_path / RESOURCES_FILE)
    chart = resources_svg(RunTables(tmp_path)[RESOURCES_FILE])
    assert isinstance(chart, Svg) and chart.text.startswith("<svg")
    lines = re.findall(r'<polyline points="([^"]+)"', chart.text)
    assert len(lines) == 5 and all(len(points.split()) <= 4 * 740 for points in lines)  # 740 pixel columns
    # the memory line (red) reaches the top of its panel at the peak, its tick labels go up to it
    memory = re.search(r'<polyline points="([^"]+)" fill="none" stroke="#d62728"', chart.text).group(1)
    assert min(float(p.split(",")[1]) for p in memory.split()) < 240  # the panel's top edge is at y = 230
    assert ">4,000<" in chart.text


def test_nice_ticks_are_round_and_cover_the_range():
    assert nice_ticks(0.0, 100.0) == [0.0, 25.0, 50.0, 75.0, 100.0]
    assert nice_ticks(0.0, 3.7) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert nice_ticks(5.0, 5.0) == [5.0]


def test_run_tables_reads_each_table_once_and_only_the_plotted_columns(tmp_path, monkeypatch):
    sel = pd.DataFrame(
        {
            "symbol": ["AAA", "BBB"],
            "fold": [0, 1],
            "basis": ["validation", "skipped"],
            "is_score": [1.0, 2.0],
            "val_score": [0.5, 0.1],
            "test_score": [0.2, np.nan],
            "test_start": pd.to_datetime(["2020-01-02", "2021-01-04"]),
            "param_fast": [5.0, 10.0],
            "degradation": [0.5, 1.9],
        }
    )
    sel.to_parquet(tmp_path / "selections.parquet")
    opened: list[str] = []
    real = pq.ParquetFile

    def counting(path, *args, **kwargs):
        opened.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr("backtest.observe.runtables.pq.ParquetFile", counting)
    tables = RunTables(tmp_path)
    first = tables["selections.parquet"]
    assert first is tables["selections.parquet"] and len(opened) == 1  # read once, shared by two plots
    assert list(first.columns) == [
        "fold", "basis", "is_score", "val_score", "test_score", "test_start", "param_fast",
    ]  # fmt: skip
    pd.testing.assert_frame_equal(first, sel[first.columns])
    assert tables["portfolio.parquet"] is None and tables["portfolio.parquet"] is None
    assert len(opened) == 1


def test_a_partial_output_folder_still_builds_without_reading_missing_tables(tmp_path):
    summary = {"counts": {"chunks": 1}, "cache": {"hits": 0}, "phase_seconds": {"plan": 0.1, "backtest": 2.0}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    files = build_report(tmp_path)
    assert set(files.plots) == {"phases"} and "no grid_scores.parquet" in files.skipped["grid"]


def test_preload_imports_the_report_builder_on_a_background_thread():
    """In a fresh interpreter (this one has matplotlib already): ``preload`` returns at once, once per module,
    and the plots are loaded by the time its thread ends, so ``publish_report`` finds them imported."""
    code = (
        "import sys, time\n"
        "from backtest.observe.preload import preload\n"
        "assert 'matplotlib' not in sys.modules\n"
        "t0 = time.perf_counter()\n"
        "thread = preload('backtest.observe.plots', 'warm_text')\n"
        "started = time.perf_counter() - t0\n"
        "assert preload('backtest.observe.plots') is thread and not thread.daemon\n"
        "thread.join(60)\n"
        "loaded = time.perf_counter() - t0\n"
        "assert 'backtest.observe.plots' in sys.modules and 'matplotlib' in sys.modules\n"
        # a module that cannot be imported: nothing raised on the thread, the real import raises
        "missing = preload('backtest.no_such_module')\n"
        "missing.join(10)\n"
        "try:\n"
        "    import backtest.no_such_module\n"
        "except ModuleNotFoundError:\n"
        "    print(started, loaded)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    started, loaded = map(float, proc.stdout.split())
    assert started < 0.5 * loaded  # the caller went on while the import ran


def test_the_task_module_preloads_the_report_builder():
    thread = preload_report()
    assert thread is preload_report() and thread.name == "preload-backtest.observe.plots"
    thread.join(60)
    assert "backtest.observe.report" in sys.modules
