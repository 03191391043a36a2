"""The report renders from saved files: every plot a valid PNG with content, and the page loads its images
in a real browser (headless Chromium)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from typer.testing import CliRunner

from backtest.atomic import write_json
from backtest.config import FoldSpec, ParamGrid, StudyConfig
from backtest.engine.study import date_range, run_study
from backtest.observe.alerts import AlertBook
from backtest.observe.monitor import ResourceMonitor
from backtest.observe.profiling import ChunkFigures, analyse, save_profile
from backtest.observe.recommendations import recommend
from backtest.observe.report import (
    PLOT_TITLES,
    RANKING_PLOT_TITLES,
    RESULT_PLOTS,
    build_report,
    report_markdown,
)
from backtest.ranking.portfolio import Construction
from backtest.ranking.study import run_cross_sectional
from backtest.results.outputs import study_figures
from cli.app import app
from tests.panels import random_panel

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """An output folder as a run leaves it: result tables, summary.json, profile.json, resources.parquet."""
    out = tmp_path_factory.mktemp("run")
    panel = random_panel(n_symbols=10, n_bars=1600, seed=5)
    config = StudyConfig(
        grid=ParamGrid.from_mapping({"fast": [5, 10, 20], "slow": [40, 60, 100, 150]}),
        folds=FoldSpec(train_years=2, validate_years=1, test_years=1),
    )
    first, last = date_range(panel)
    monitor = ResourceMonitor(interval=0.05).start()
    t0 = time.time()
    result = run_study(config, panel.symbols, panel.select, first, last, chunk_size=5, workers=2)
    time.sleep(0.3)
    monitor.stop()
    result.save(out)
    wall = time.time() - t0
    chunks = [
        ChunkFigures("chunk-0000", 5, "computed", wall=0.2, cpu=0.18, phases={"simulate": 0.2}, end=t0 + 0.2),
        ChunkFigures("chunk-0001", 5, "cached", end=t0 + 0.01),
    ]
    steps = {"plan": 0.05, "backtest": wall - 0.1, "collect": 0.05}
    profile = analyse(
        chunks=chunks,
        steps=steps,
        flow_start=t0,
        wall=wall,
        workers=2,
        runner="threads",
        chunk_size=5,
        samples=monitor.frame(),
        warm=False,
    )
    book = AlertBook()
    book.check_retry("chunk-0000", 2)
    save_profile(out, profile, recommend(profile), book.raised, monitor.samples)
    summary = {
        "flow_run_id": "test",
        "state": "Completed",
        "config": {"strategy": "sma_crossover"},
        "counts": {"symbols": 10, "chunks": 2, "folds": 3, "combinations": 12},
        "cache": {"hits": 1, "misses": 1, "failed": 0},
        "figures": study_figures(result),
        "phase_seconds": steps,
        "wall_seconds": wall,
        "out": str(out),
        **{k: v for k, v in profile.summary().items() if k in ("peak_rss_bytes", "parallel_efficiency")},
        "alerts": [a.to_dict() for a in book.raised],
        "profile": profile.summary(),
    }
    write_json(out / "summary.json", summary)
    return out


@pytest.fixture(scope="module")
def built(run_folder):
    return build_report(run_folder)


#: the charts of the run itself, written as SVG (without matplotlib); the result plots are PNG
CHARTS = ("resources", "phases")


def assert_chart(path: Path) -> None:
    """An SVG document with drawn lines or bars and text."""
    text = path.read_text()
    assert text.startswith("<svg") and text.rstrip().endswith("</svg>"), path
    assert ("<polyline" in text or "<rect" in text) and "<text" in text, path


def test_report_renders_every_plot_as_a_png_with_content(run_folder, built):
    files = built
    assert files.skipped == {} and set(files.plots) == set(PLOT_TITLES)
    for name, path in files.plots.items():
        if name in CHARTS:
            assert path.suffix == ".svg"
            assert_chart(path)
            continue
        assert path.read_bytes()[:8] == PNG_MAGIC, name
        pixels = imread(path)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 400, name
        rgb = pixels[..., :3]
        assert rgb.std() > 0.05, f"{name} looks blank (pixel std {rgb.std():.3f})"
        # not just axes on white: a good share of the pixels is neither white nor black
        colored = (np.ptp(rgb, axis=2) > 0.15).mean()
        assert colored > 0.005, f"{name} has almost no colour ({colored:.4f})"
    page = files.html.read_text()
    assert page.count("<img ") == len(PLOT_TITLES)
    assert "chunk-retried" in page and "Recommendations" in page and "parallel efficiency" in page
    assert "How much could be luck" in page and "probability of backtest overfitting" in page
    markdown = report_markdown(json.loads((run_folder / "summary.json").read_text()), None, files.html)
    assert "| peak RSS (whole process tree) |" in markdown
    assert "## How much could be luck" in markdown and "| deflated Sharpe |" in markdown


def test_report_skips_what_it_cannot_draw_and_says_why(run_folder, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(run_folder / "summary.json", partial)
    files = build_report(partial)
    assert files.plots.keys() == {"phases"}
    assert "no portfolio.parquet" in files.skipped["equity"]
    assert "no cscv.parquet" in files.skipped["luck"]
    assert "not drawn: no portfolio.parquet" in files.html.read_text()


def test_cli_report_rebuilds_and_refuses_a_non_run_folder(run_folder, built, tmp_path):
    copy = Path(shutil.copytree(run_folder, tmp_path / "copy"))
    (copy / "report" / "equity.png").unlink()
    (copy / "report.html").unlink()
    result = CliRunner().invoke(app, ["report", str(copy)])
    assert result.exit_code == 0, result.output
    assert "7 plots" in result.output and (copy / "report" / "equity.png").exists()
    assert (copy / "report.html").read_text() == built.html.read_text()  # same files, same report
    bad = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert bad.exit_code == 1 and "not the output folder of a run" in bad.output
    assert "Traceback" not in bad.output


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium not installed (Debian package chromium)")
def test_report_images_load_in_headless_chromium(run_folder, built, tmp_path):
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--allow-file-access-from-files",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        (run_folder / "report.html").as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the page's own script sets data-images once every image has loaded with a non-zero natural width
    assert f'data-images="ok {len(PLOT_TITLES)}/{len(PLOT_TITLES)}"' in proc.stdout, proc.stdout[:500]


def test_result_plots_are_kept_in_the_plot_cache_and_linked_on_the_next_build(run_folder, built, tmp_path):
    """A second build for the same results links the four result plots from the cache (same bytes, no
    drawing) and draws only the two per-run plots; a plot skipped for these results stays skipped."""
    cache = tmp_path / "plots"
    first = Path(shutil.copytree(run_folder, tmp_path / "first"))
    build_report(first, cache)
    cached = {p.name for p in cache.iterdir()}
    assert cached == {f"{name}.png" for name in RESULT_PLOTS if name in PLOT_TITLES}
    again = Path(shutil.copytree(run_folder, tmp_path / "again", ignore=shutil.ignore_patterns("report")))
    files = build_report(again, cache)
    assert set(files.plots) == set(PLOT_TITLES)
    for name in (n for n in RESULT_PLOTS if n in PLOT_TITLES):
        png = again / "report" / f"{name}.png"
        assert os.path.samefile(png, cache / f"{name}.png")
        assert os.stat(png).st_mode & 0o777 == 0o444  # read-only: never written in place through a link
        assert png.read_bytes() == (built.html.parent / "report" / f"{name}.png").read_bytes()
    for name in CHARTS:
        assert os.stat(again / "report" / f"{name}.svg").st_nlink == 1  # written for this run
    partial = tmp_path / "partial"  # results without a portfolio: the cache remembers why it was skipped
    partial.mkdir()
    shutil.copy(run_folder / "summary.json", partial)
    skipped_cache = tmp_path / "plots-partial"
    assert "no portfolio.parquet" in build_report(partial, skipped_cache).skipped["equity"]
    assert "no portfolio.parquet" in (skipped_cache / "equity.skipped.txt").read_text()
    assert "no portfolio.parquet" in build_report(partial, skipped_cache).skipped["equity"]


def _has_content(path: Path) -> bool:
    if path.suffix == ".svg":
        assert_chart(path)
        return True
    rgb = imread(path)[..., :3]
    return rgb.std() > 0.05 and (np.ptp(rgb, axis=2) > 0.15).mean() > 0.005


def test_a_cross_sectional_report_adds_each_fold_and_the_holdings(tmp_path):
    """A ranking study's report: every plot of a timing study's, each fold's test window and the holdings
    and turnover, its choices (side, weighting) drawn by name, and a table of the folds."""
    config = StudyConfig(
        strategy="momentum_rank",
        grid=ParamGrid.from_mapping(
            {
                "lookback": [21, 63],
                "top": [3, 5],
                "side": ["long", "long_short"],
                "weighting": ["equal", "score"],
            }
        ),
        folds=FoldSpec(train_years=2, validate_years=1, test_years=1),
    )
    result = run_cross_sectional(config, Construction(), random_panel(n_symbols=16, n_bars=1600, seed=3))
    out = tmp_path / "rank"
    result.save(out)
    summary = {
        "kind": "cross_sectional",
        "flow_run_id": "test",
        "state": "Completed",
        "config": {"strategy": "momentum_rank"},
        "counts": {"symbols": 16, "chunks": 3, "folds": len(result.selections), "combinations": 16},
        "cache": {"hits": 0, "misses": 3, "failed": 0},
        "figures": result.figures(),
        "phase_seconds": {"plan": 0.01, "backtest": 0.5, "collect": 0.1},
        "wall_seconds": 0.61,
        "out": str(out),
    }
    write_json(out / "summary.json", summary)
    files = build_report(out)
    expected = set(RANKING_PLOT_TITLES) - {"resources"}  # no resource samples in this folder
    assert set(files.plots) == expected and set(files.skipped) == {"resources"}
    assert {"folds", "holdings"} <= expected and not {"folds", "holdings"} & set(PLOT_TITLES)
    for name in expected:
        assert _has_content(files.plots[name]), name
    page = files.html.read_text()
    assert "<h1>Cross-sectional study: momentum_rank</h1>" in page
    assert "<h2>Folds</h2>" in page and "equal-weight universe" in page
    chosen = result.selections[result.selections["combo"] >= 0].iloc[-1]
    # the folds table names the grid's axes with their values, choices by name
    assert f"weighting={chosen['param_weighting']}" in page and f"side={chosen['param_side']}" in page
    assert "rebalance=" not in page  # not an axis of this grid
    for title in (RANKING_PLOT_TITLES["folds"], RANKING_PLOT_TITLES["holdings"]):
        assert f"<h3>{title}</h3><img" in page.replace("&#x27;", "'")
