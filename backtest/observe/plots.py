"""The report's plots of a run's results, drawn with matplotlib (Agg) as PNG: equity and drawdown, each fold's
test window, holdings, scores per fold, the grid's heat map, the selected parameters, the statistics of luck.

Imported only when a plot has to be drawn: a re-run whose results are the same takes them from the plot cache
and never imports matplotlib (backtest.observe.report).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter
from PIL import Image

from backtest.atomic import atomic_path
from backtest.observe.runtables import RunTables, param_columns, param_label
from backtest.observe.svgcharts import m4_indices

DPI = 100


@dataclass(frozen=True)
class Margins:
    """Room around the axes, in inches: fixed per plot instead of ``tight_layout``, which lays out every tick
    label once more before the real drawing (a large share of the report's cost). Sized for the labels
    each plot carries; ``hspace``/``wspace`` are matplotlib's fractions of the axes size."""

    left: float = 0.8
    right: float = 0.2
    top: float = 0.4
    bottom: float = 0.5
    hspace: float = 0.2
    wspace: float = 0.2


def _figure(width: float, height: float, margins: Margins = Margins()) -> Figure:
    """A figure on its own Agg canvas (no pyplot, no global backend switch, safe off the main thread), its
    subplot area fixed by ``margins``."""
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(
        left=margins.left / width,
        right=1.0 - margins.right / width,
        bottom=margins.bottom / height,
        top=1.0 - margins.top / height,
        hspace=margins.hspace,
        wspace=margins.wspace,
    )
    return fig


def warm_text() -> None:
    """Draw a small figure with text once: matplotlib's first text in a process loads its font and builds
    its caches (about half a second), which a preloading thread can do before the report needs it."""
    fig = _figure(2, 1)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], label="warm")
    ax.set_xlabel("x")
    ax.legend()
    _title(ax, "warm")
    render(fig)


def render(fig: Figure) -> Image.Image:
    """The figure's pixels, drawn by Agg (what ``savefig`` would encode; the image shares the canvas'
    buffer, which it keeps alive)."""
    canvas = fig.canvas
    assert isinstance(canvas, FigureCanvasAgg)
    canvas.draw()
    width, height = canvas.get_width_height(physical=True)
    return Image.frombuffer("RGBA", (width, height), canvas.buffer_rgba(), "raw", "RGBA", 0, 1)


def write_png(image: Image.Image, path: Path) -> Path:
    """``image`` as a PNG file at ``path``, atomically. Compress level 1: several times faster to write than
    the default 6, for somewhat larger files. Pillow runs zlib without the GIL, so this can overlap the
    drawing of the next figure on another thread."""
    with atomic_path(path, ".tmp.png") as tmp:
        image.save(tmp, format="png", compress_level=1)
    return path


def _title(ax: Axes, text: str) -> None:
    """A title at the top of the axes. Placed explicitly: matplotlib otherwise measures every tick label of
    the axes (and its twins) at draw time to see whether the title must move up, which none of these plots
    need (no tick labels on top) and which was a sizeable share of the report's cost (cProfile)."""
    ax.set_title(text, y=1.0)


def _pixel_width(fig: Figure) -> int:
    """Width in pixels of the figure's subplot area: the number of pixel columns a line is thinned to."""
    return max(1, round((fig.subplotpars.right - fig.subplotpars.left) * fig.get_figwidth() * DPI))


def _line(ax: Axes, x: np.ndarray, y: np.ndarray, width: int, **style: Any) -> None:
    """``ax.plot`` of a series thinned to two runs per pixel column of an axes ``width`` pixels wide: runs
    do not line up with the pixel columns (the axes' margins, antialiasing), and with one run per column a
    column covered by the ends of two runs showed as a faint gap in a dense band; with two, none did."""
    keep = m4_indices(y, 2 * width)
    ax.plot(x[keep], y[keep], **style)


def plot_equity(tables: RunTables, ranking: bool = False) -> Figure | str:
    port = tables["portfolio.parquet"]
    if port is None or port.empty:
        return "no portfolio.parquet (the study produced no out-of-sample returns)"
    fig = _figure(9, 5.5, Margins(left=0.95, top=0.35, bottom=0.4, hspace=0.08))
    ax1, ax2 = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    dates = port["date"].to_numpy(dtype="datetime64[ns]")
    width = _pixel_width(fig)
    benchmark = "equal-weight universe" if ranking else "buy and hold"
    for col, label in (("equity", "strategy"), ("benchmark_equity", benchmark)):
        if col in port:
            equity = port[col].to_numpy(dtype=float)
            drawdown = equity / np.fmax.accumulate(equity) - 1.0
            _line(ax1, dates, equity, width, label=label, linewidth=1.2)
            _line(ax2, dates, drawdown, width, label=label, linewidth=1.0)
    ax1.set_ylabel("equity (start = 1)")
    _title(
        ax1,
        "Out-of-sample portfolio (test windows stitched)"
        if ranking
        else "Out-of-sample equal-weight portfolio",
    )
    ax1.legend(loc="upper left")
    ax1.grid(alpha=0.3)
    ax2.set_ylabel("drawdown")
    ax2.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax2.grid(alpha=0.3)
    return fig


def plot_fold_equity(tables: RunTables) -> Figure | str:
    """A cross-sectional study's test windows one by one, side by side on one time axis: each fold's equity
    from 1 beside the benchmark's on the same days, so a fold that carried (or sank) the stitched result
    stands out."""
    port = tables["portfolio.parquet"]
    if port is None or port.empty or "fold" not in port:
        return "no portfolio.parquet with folds (the study produced no out-of-sample returns)"
    fig = _figure(9, 4.2, Margins(left=0.85, top=0.35, bottom=0.4))
    ax = fig.subplots()
    folds = port["fold"].to_numpy()
    starts = np.flatnonzero(np.r_[True, folds[1:] != folds[:-1]])
    ends = np.r_[starts[1:], len(port)]
    dates = port["date"].to_numpy(dtype="datetime64[ns]")
    ret = port["ret"].to_numpy(dtype=float)
    bench = port["benchmark_ret"].fillna(0.0).to_numpy(dtype=float) if "benchmark_ret" in port else None
    for n, (lo, hi) in enumerate(zip(starts, ends, strict=True)):
        equity = np.cumprod(1.0 + ret[lo:hi])
        ax.plot(dates[lo:hi], equity, color="tab:blue", linewidth=1.1, label="strategy" if n == 0 else None)
        if bench is not None:
            b = np.cumprod(1.0 + bench[lo:hi])
            ax.plot(dates[lo:hi], b, color="tab:orange", linewidth=0.9, label="benchmark" if n == 0 else None)
        if n:
            ax.axvline(dates[lo], color="grey", linewidth=0.6, linestyle=":")
        ax.text(
            dates[lo],
            0.02,
            f" {equity[-1] - 1.0:+.0%}",
            transform=ax.get_xaxis_transform(),  # x on the dates, y at the bottom of the axes
            fontsize="x-small",
            color="tab:blue",
        )
    ax.axhline(1.0, color="black", linewidth=0.5)
    ax.set_ylabel("equity of the fold's window (start = 1)")
    _title(ax, "Each fold's test window on its own (its return at the bottom)")
    ax.legend(loc="upper left", fontsize="small")
    ax.grid(alpha=0.3)
    return fig


def plot_holdings(tables: RunTables) -> Figure | str:
    """A cross-sectional study's number of holdings and its turnover, day by day over the test windows."""
    port = tables["portfolio.parquet"]
    if port is None or port.empty or "n_holdings" not in port:
        return "no portfolio.parquet with holdings (the study produced no out-of-sample returns)"
    fig = _figure(9, 4.5, Margins(left=0.85, top=0.35, bottom=0.4, hspace=0.1))
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    dates = port["date"].to_numpy(dtype="datetime64[ns]")
    ax1.step(dates, port["n_holdings"].to_numpy(dtype=float), where="post", linewidth=1.0)
    ax1.set_ylabel("symbols held")
    ax1.set_ylim(bottom=0.0)
    _title(ax1, "Holdings and turnover (test windows)")
    ax1.grid(alpha=0.3)
    turnover = port["turnover"].to_numpy(dtype=float)
    traded = turnover > 0
    ax2.vlines(dates[traded], 0.0, turnover[traded], linewidth=1.0, color="tab:orange")
    ax2.set_ylabel("turnover (traded / value)")
    ax2.set_ylim(bottom=0.0)
    ax2.grid(alpha=0.3)
    return fig


def plot_scores(tables: RunTables) -> Figure | str:
    sel = tables["selections.parquet"]
    if sel is None or sel.empty:
        return "no selections.parquet"
    chosen = sel[sel["basis"] != "skipped"]
    if chosen.empty:
        return "no fold had a selection"
    by_fold = chosen.groupby("fold")[["is_score", "val_score", "test_score"]].mean()
    fig = _figure(9, 4, Margins(left=0.85, bottom=0.4, top=0.35))
    ax = fig.subplots()
    x = np.arange(len(by_fold))
    width = 0.27
    for i, (col, label) in enumerate(
        (
            ("is_score", "in sample (train)"),
            ("val_score", "validation"),
            ("test_score", "out of sample (test)"),
        )
    ):
        ax.bar(x + (i - 1) * width, by_fold[col].fillna(0.0), width, label=label)
    ax.set_xticks(x, [f"fold {int(f)}" for f in by_fold.index], fontsize="small" if len(x) > 10 else None)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("mean score of the selected combinations")
    _title(ax, "In-sample vs out-of-sample score per fold")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    return fig


def plot_grid(tables: RunTables, ranking: bool = False) -> Figure | str:
    grid = tables["grid_scores.parquet"]
    if grid is None or grid.empty:
        return "no grid_scores.parquet"
    params = param_columns(grid)
    if not params:
        return "no parameter of the grid takes more than one value: there is no grid to map"
    train = grid[grid["window"] == "train"]
    top = 0.55 if len(params) > 2 else 0.35  # room for the title's second line
    fig = _figure(8, 5.5, Margins(left=0.75, right=1.0, bottom=0.75, top=top))
    ax = fig.subplots()
    if len(params) == 1:
        line = train.groupby(params[0])["mean_score"].mean()
        ax.plot([param_label(v) for v in line.index], line.to_numpy(), marker="o")
        ax.set_xlabel(params[0].removeprefix("param_"))
        ax.set_ylabel("mean train score")
    else:
        px, py = params[0], params[1]
        table = train.groupby([py, px])["mean_score"].mean().unstack(px)
        values = table.to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        image = ax.imshow(values, origin="lower", aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax)
        ax.set_xticks(range(len(table.columns)), [param_label(v) for v in table.columns], rotation=45)
        ax.set_yticks(range(len(table.index)), [param_label(v) for v in table.index])
        ax.set_xlabel(px.removeprefix("param_"))
        ax.set_ylabel(py.removeprefix("param_"))
        fig.colorbar(image, ax=ax, label="mean train score", fraction=0.06, pad=0.03)
    over = "folds" if ranking else "symbols and folds"
    title = f"Grid score heat map (train windows, mean over {over})"
    if len(params) > 2:
        title += "\n(averaged over " + ", ".join(p.removeprefix("param_") for p in params[2:]) + ")"
    _title(ax, title)
    return fig


def plot_selections(tables: RunTables, ranking: bool = False) -> Figure | str:
    sel = tables["selections.parquet"]
    if sel is None or sel.empty:
        return "no selections.parquet"
    params = param_columns(sel)
    chosen = sel[sel["basis"] != "skipped"]
    if not params or chosen.empty:
        return "no selected parameters to show"
    height = 2.6 * len(params) + 0.6
    fig = _figure(9, height, Margins(left=1.1, bottom=0.4, top=0.35, hspace=0.12))
    axes = fig.subplots(len(params), 1, sharex=True, squeeze=False)[:, 0]
    starts = pd.to_datetime(chosen["test_start"])
    for ax, param in zip(axes, params, strict=True):
        values = chosen[param]
        numeric = pd.api.types.is_numeric_dtype(values)
        names = [] if numeric else sorted(values.dropna().unique())
        if not numeric:  # a choice (side, weighting): its names on the axis
            values = values.map({n: i for i, n in enumerate(names)}).astype(float)
        column = values.groupby(starts)
        if ranking or not numeric:  # one selection per test window
            ax.step(column.first().index, column.first().to_numpy(), where="post", linewidth=1.5)
        else:  # one per symbol and test window: their spread
            mean, lo, hi = column.mean(), column.quantile(0.25), column.quantile(0.75)
            ax.fill_between(
                mean.index, lo.to_numpy(), hi.to_numpy(), alpha=0.25, step="post", label="25-75 %"
            )
            ax.step(mean.index, mean.to_numpy(), where="post", label="mean", linewidth=1.5)
            ax.legend(loc="upper left")
        if names:
            ax.set_yticks(range(len(names)), names)
            ax.set_ylim(-0.5, len(names) - 0.5)
        ax.set_ylabel(param.removeprefix("param_"))
        ax.grid(alpha=0.3)
    where = "the portfolio's selection" if ranking else "across symbols"
    _title(axes[0], f"Selected parameters over time (per test window, {where})")
    return fig


def plot_luck(tables: RunTables) -> Figure | str:
    """CSCV's halvings (cscv.parquet): the logits of the in-sample winner's out-of-sample rank, and its Sharpe
    in sample against out of sample with the fitted degradation line."""
    splits = tables["cscv.parquet"]
    if splits is None or splits.empty:
        return "no cscv.parquet (too few trials or days for the probability of backtest overfitting)"
    logits = splits["logit"].to_numpy(dtype=float)
    fig = _figure(10, 4.2, Margins(left=0.75, bottom=0.55, top=0.45, right=0.3))
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"wspace": 0.28})
    ax1.hist(logits[np.isfinite(logits)], bins=40, color="#4c72b0")
    ax1.axvline(0.0, color="#c44e52", linewidth=1.2)
    pbo = float((logits <= 0).mean())
    ax1.set_xlabel("logit of the in-sample winner's out-of-sample rank")
    ax1.set_ylabel("halvings")
    _title(ax1, f"PBO {pbo:.2f}: share of halvings left of the red line")
    x, y = splits["is_sharpe"].to_numpy(dtype=float), splits["oos_sharpe"].to_numpy(dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    ax2.scatter(x[ok], y[ok], s=4, alpha=0.3, rasterized=True)
    if ok.sum() >= 2 and np.ptp(x[ok]) > 0:
        slope, intercept = np.polyfit(x[ok], y[ok], 1)
        xs = np.array([x[ok].min(), x[ok].max()])
        ax2.plot(xs, slope * xs + intercept, color="#c44e52", label=f"slope {slope:.2f}")
        ax2.legend(loc="upper left")
    ax2.axhline(0, color="black", linewidth=0.6)
    ax2.set_xlabel("in-sample Sharpe of the winner")
    ax2.set_ylabel("its out-of-sample Sharpe")
    _title(ax2, "Performance degradation across halvings")
    ax2.grid(alpha=0.3)
    return fig
