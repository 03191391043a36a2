"""The run report: plots (matplotlib, Agg, PNG) and ``report.html``, built only from the files a run saved.

Everything the report shows is read back from the output folder (the result tables, ``summary.json``,
``profile.json`` and ``resources.parquet``), so ``backtest report OUT`` rebuilds the same report later, on
another machine, without re-running anything. Plots are separate PNG files in ``OUT/report/`` referenced
from the HTML by relative path, so the folder can be moved or served as it is.

The markdown summary for the Prefect artifact is built here too, from the same figures.
"""

from __future__ import annotations

import functools
import hashlib
import html
import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter
from PIL import Image

from backtest.atomic import atomic_path
from backtest.observe.monitor import CORE_PREFIX
from backtest.observe.profiling import (
    PHASES,
    PROFILE_FILE,
    REPORT_FILE,
    RESOURCES_FILE,
    describe_bottleneck,
    fmt_bytes,
)
from backtest.overfitting.trials import luck_table
from backtest.results.outputs import link_into

PLOT_DIR = "report"
DPI = 100


# -- plots ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReportFiles:
    html: Path
    plots: dict[str, Path]
    skipped: dict[str, str]  # plot name -> why it is not there


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


def m4_indices(values: np.ndarray, buckets: int) -> np.ndarray:
    """Positions of the points of a line to draw on ``buckets`` pixel columns (M4 aggregation): in each of
    ``buckets`` equal runs of points, the first, the last, the lowest and the highest, in their order.

    A line through those points covers the same pixels as the line through all of them (exactly so when each
    run falls within one pixel column, to within a pixel otherwise), so the plot looks the same while
    matplotlib's cost, which grows with the points, stops growing with the length of the series.
    NaN points are never chosen as extremes (a run of only NaN keeps its first and last, so a gap stays a
    gap). Short series (at most four points per bucket) are returned whole.
    """
    n = len(values)
    if n <= 4 * buckets:
        return np.arange(n)
    size = -(-n // buckets)  # points per bucket; the last bucket may be shorter
    edges = np.arange(0, n, size)
    finite = np.isfinite(values)
    low = np.minimum.reduceat(np.where(finite, values, np.inf), edges)
    high = np.maximum.reduceat(np.where(finite, values, -np.inf), edges)
    bucket = np.repeat(np.arange(len(edges)), np.diff(np.append(edges, n)))
    # the first position in each bucket holding its minimum (maximum): a bucket's extreme, found vectorised
    at_low = np.flatnonzero(finite & (values == low[bucket]))
    at_high = np.flatnonzero(finite & (values == high[bucket]))
    first_low = at_low[np.unique(bucket[at_low], return_index=True)[1]]
    first_high = at_high[np.unique(bucket[at_high], return_index=True)[1]]
    lasts = np.append(edges[1:] - 1, n - 1)
    return np.unique(np.concatenate([edges, lasts, first_low, first_high]))


def _line(ax: Axes, x: np.ndarray, y: np.ndarray, width: int, **style: Any) -> None:
    """``ax.plot`` of a series thinned to two runs per pixel column of an axes ``width`` pixels wide: runs
    do not line up with the pixel columns (the axes' margins, antialiasing), and with one run per column a
    column covered by the ends of two runs showed as a faint gap in a dense band; with two, none did."""
    keep = m4_indices(y, 2 * width)
    ax.plot(x[keep], y[keep], **style)


#: table -> the columns the plots read from it, besides every ``param_*`` column (other tables: all columns)
PLOT_COLUMNS: dict[str, tuple[str, ...]] = {
    "portfolio.parquet": (
        "date",
        "fold",
        "ret",
        "equity",
        "benchmark_ret",
        "benchmark_equity",
        "n_holdings",
        "turnover",
    ),
    "selections.parquet": ("fold", "basis", "is_score", "val_score", "test_score", "test_start"),
    "grid_scores.parquet": ("window", "mean_score"),
}


class RunTables:
    """The result tables of one output folder, each read at most once and only in the columns the plots use
    (the selections feed two plots; their symbol column, the widest, is never read)."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self._frames: dict[str, pd.DataFrame | None] = {}

    def __getitem__(self, name: str) -> pd.DataFrame | None:
        """The table ``name`` (None when the run did not write it)."""
        if name not in self._frames:
            self._frames[name] = self._read(name)
        return self._frames[name]

    def _read(self, name: str) -> pd.DataFrame | None:
        path = self.out / name
        if not path.exists():
            return None
        file = pq.ParquetFile(path)
        wanted = PLOT_COLUMNS.get(name)
        if wanted is None:
            return file.read().to_pandas()
        names = file.schema_arrow.names
        columns = [c for c in names if c in wanted or c.startswith("param_")]
        return file.read(columns=columns).to_pandas()


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


def _param_columns(frame: pd.DataFrame) -> list[str]:
    """The parameters that vary, most distinct values first (a fixed flag such as ``short`` has nothing to
    show)."""
    cols = [c for c in frame.columns if c.startswith("param_")]
    varying = [c for c in cols if frame[c].nunique(dropna=True) > 1]
    return sorted(varying, key=lambda c: -frame[c].nunique(dropna=True))


def _label(value: Any) -> str:
    """A parameter value as a tick label: numbers compact, names (a ranking study's side, weighting) as
    they are."""
    return f"{value:g}" if isinstance(value, int | float | np.number) else str(value)


def plot_grid(tables: RunTables, ranking: bool = False) -> Figure | str:
    grid = tables["grid_scores.parquet"]
    if grid is None or grid.empty:
        return "no grid_scores.parquet"
    params = _param_columns(grid)
    if not params:
        return "no parameter of the grid takes more than one value: there is no grid to map"
    train = grid[grid["window"] == "train"]
    top = 0.55 if len(params) > 2 else 0.35  # room for the title's second line
    fig = _figure(8, 5.5, Margins(left=0.75, right=1.0, bottom=0.75, top=top))
    ax = fig.subplots()
    if len(params) == 1:
        line = train.groupby(params[0])["mean_score"].mean()
        ax.plot([_label(v) for v in line.index], line.to_numpy(), marker="o")
        ax.set_xlabel(params[0].removeprefix("param_"))
        ax.set_ylabel("mean train score")
    else:
        px, py = params[0], params[1]
        table = train.groupby([py, px])["mean_score"].mean().unstack(px)
        values = table.to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        image = ax.imshow(values, origin="lower", aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax)
        ax.set_xticks(range(len(table.columns)), [_label(v) for v in table.columns], rotation=45)
        ax.set_yticks(range(len(table.index)), [_label(v) for v in table.index])
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
    params = _param_columns(sel)
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


def luck_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The statistics of luck of a run's summary as table rows (none when it has none)."""
    luck = (summary.get("figures") or {}).get("overfitting")
    return luck_table(luck) if luck else []


def plot_resources(tables: RunTables) -> Figure | str:
    res = tables[RESOURCES_FILE]
    if res is None or len(res) < 2:
        return "fewer than two resource samples (the run was shorter than the monitor's interval)"
    fig = _figure(9, 5.5, Margins(left=0.8, right=0.8, top=0.35, bottom=0.5, hspace=0.08))
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    width = _pixel_width(fig)
    t = res["elapsed"].to_numpy(dtype=float)
    cores = [c for c in res.columns if c.startswith(CORE_PREFIX)]
    for c in cores:
        label = f"core {c.removeprefix(CORE_PREFIX)}"
        _line(ax1, t, res[c].to_numpy(dtype=float), width, linewidth=0.6, alpha=0.5, label=label)
    tree = res["tree_cpu_percent"].to_numpy(dtype=float) / max(len(cores), 1)
    _line(ax1, t, tree, width, linewidth=1.6, label="this run (of all cores)")
    ax1.set_ylabel("CPU %")
    ax1.set_ylim(0, 105)
    ax1.legend(loc="upper right", fontsize="small", ncol=2)
    ax1.grid(alpha=0.3)
    _title(ax1, "Resource use over time (the run's whole process tree)")
    rss = res["tree_rss"].to_numpy(dtype=float) / 2**20
    _line(ax2, t, rss, width, label="RSS of the run (MiB)", color="tab:red")
    ax2.set_ylabel("MiB")
    ax2.set_xlabel("seconds since the monitor started")
    ax2.grid(alpha=0.3)
    io = (res["tree_read_bytes"] + res["tree_write_bytes"]).diff().clip(lower=0) / res["elapsed"].diff()
    ax3 = ax2.twinx()
    _line(
        ax3,
        t,
        io.to_numpy(dtype=float) / 2**20,
        width,
        color="tab:gray",
        linewidth=0.8,
        label="storage I/O (MiB/s)",
    )
    ax3.set_ylabel("MiB/s")
    lines = ax2.get_lines() + ax3.get_lines()
    ax2.legend(lines, [line.get_label() for line in lines], loc="upper left", fontsize="small")
    return fig


def plot_phases(summary: dict[str, Any], doc: dict[str, Any] | None) -> Figure | str:
    steps = summary.get("phase_seconds") or {}
    phases = (doc or {}).get("profile", {}).get("phases", {})
    if not steps and not phases:
        return "no timings in summary.json"
    fig = _figure(9, 4.5, Margins(left=0.85, right=0.2, top=0.35, bottom=0.55, wspace=0.3))
    ax1, ax2 = fig.subplots(1, 2)
    names = list(steps)
    ax1.barh(names, [steps[n] for n in names], color="tab:blue")
    ax1.invert_yaxis()
    ax1.set_xlabel("seconds")
    _title(ax1, "Flow steps (wall time)")
    ax1.grid(alpha=0.3, axis="x")
    pnames = [p for p in dict.fromkeys(("fetch", *PHASES, *phases)) if p in phases]
    walls = [phases[p]["wall"] * phases[p]["parallelism"] for p in pnames]
    cpus = [phases[p]["cpu"] or 0.0 for p in pnames]
    y = np.arange(len(pnames))
    waits = [phases[p].get("cpu_wait") or 0.0 for p in pnames]
    ax2.barh(y - 0.2, walls, 0.4, label="wall (all chunks)")
    ax2.barh(y + 0.2, cpus, 0.4, label="CPU")
    ax2.barh(y + 0.2, waits, 0.4, left=cpus, label="CPU wait (queued)", alpha=0.6)
    ax2.set_yticks(y, pnames)
    ax2.invert_yaxis()
    ax2.set_xlabel("seconds, summed over chunks")
    _title(ax2, "Chunk phases")
    ax2.legend(fontsize="small")
    ax2.grid(alpha=0.3, axis="x")
    return fig


# -- the HTML -------------------------------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}g}"
    return str(value)


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _table(rows: Sequence[dict[str, Any]], cls: str = "") -> str:
    if not rows:
        return "<p>none</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows
    )
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def headline_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's headline figures as (figure, value) rows, shared by the HTML and the markdown."""
    prof = summary.get("profile", {})
    bottleneck = summary.get("bottleneck") or {}
    rows = [
        ("state", summary.get("state")),
        ("wall time", f"{summary.get('wall_seconds', 0.0):.2f} s"),
        (
            "chunks",
            f"{summary['counts']['chunks']} ({summary['cache']['hits']} from cache, "
            f"{summary['cache'].get('failed', 0)} failed)",
        ),
        ("workers", f"{prof.get('workers', 'n/a')} on {prof.get('cores', 'n/a')} cores"),
        ("peak RSS (whole process tree)", fmt_bytes(summary.get("peak_rss_bytes"))),
        ("parallel efficiency", _pct(summary.get("parallel_efficiency"))),
        ("cache hit rate", _pct(summary.get("cache_hit_rate"))),
        ("load imbalance (max/median chunk)", _fmt(prof.get("load_imbalance"), 3)),
        (
            "orchestration overhead",
            f"{_fmt(summary.get('orchestration_overhead_seconds'), 3)} s "
            f"({_pct(prof.get('orchestration_overhead_fraction'))})",
        ),
        ("bottleneck", describe_bottleneck(bottleneck)),
        (
            "monitor overhead",
            "n/a"
            if prof.get("monitor_overhead_fraction") is None
            else f"{prof['monitor_overhead_fraction']:.2%}",
        ),
        ("alerts raised", str(len(summary.get("alerts", [])))),
    ]
    return [{"figure": k, "value": v} for k, v in rows]


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #ddd;margin:.5em 0}.alert{color:#a40}.small{font-size:.85em}
"""

# Sets data-images on <body> once every image has loaded: "ok N/M" or "broken N/M" (checked by the tests in
# headless Chromium, and handy for anyone checking a report served from elsewhere).
_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var good = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images", (good === imgs.length ? "ok " : "broken ") + good + "/" + imgs.length);
});
"""

PLOT_TITLES = {
    "equity": "Portfolio equity and drawdown",
    "scores": "Out-of-sample vs in-sample score per fold",
    "grid": "Parameter grid heat map",
    "selections": "Selected parameters over time",
    "luck": "How much could be luck: CSCV logits and degradation",
    "resources": "Resource use over time",
    "phases": "Time per phase",
}
#: a cross-sectional study's report: the same plots, plus each fold's test window and the holdings
RANKING_PLOT_TITLES = {
    "equity": PLOT_TITLES["equity"],
    "folds": "Equity of each fold's test window",
    "holdings": "Holdings and turnover",
    **{k: v for k, v in PLOT_TITLES.items() if k != "equity"},
}


def is_ranking(summary: dict[str, Any]) -> bool:
    return summary.get("kind") == "cross_sectional"


def plot_titles(summary: dict[str, Any]) -> dict[str, str]:
    """The plots of a run's report, in order, by the study's kind."""
    return RANKING_PLOT_TITLES if is_ranking(summary) else PLOT_TITLES


def fold_rows(tables: RunTables) -> list[dict[str, Any]]:
    """A cross-sectional study's folds: the selection, its scores, and its test window's return, holdings
    and turnover."""
    sel, port = tables["selections.parquet"], tables["portfolio.parquet"]
    if sel is None or port is None or sel.empty or "fold" not in port:
        return []
    by_fold = port.groupby("fold")
    grid = tables["grid_scores.parquet"]
    # the grid's axes: the parameters it varies (every one when the grid is not there)
    params = _param_columns(grid) if grid is not None else [c for c in sel.columns if c.startswith("param_")]
    rows = []
    for row in sel.itertuples(index=False):
        f = int(row.fold)
        days = by_fold.get_group(f) if f in by_fold.groups else port.iloc[:0]
        rows.append(
            {
                "fold": f,
                "test window": f"{pd.Timestamp(row.test_start):%Y-%m-%d}",
                "selected": " ".join(f"{p.removeprefix('param_')}={_label(getattr(row, p))}" for p in params)
                if row.basis != "skipped"
                else "none",
                "in sample": row.is_score,
                "validation": row.val_score,
                "test": row.test_score,
                "test return": float(np.prod(1.0 + days["ret"].to_numpy(float)) - 1.0) if len(days) else None,
                "mean holdings": float(days["n_holdings"].mean()) if len(days) else None,
                "turnover": float(days["turnover"].sum()) if len(days) else None,
            }
        )
    return rows


def render_html(
    summary: dict[str, Any],
    doc: dict[str, Any] | None,
    plots: dict[str, Path],
    skipped: dict[str, str],
    base: Path,
    folds: Sequence[dict[str, Any]] = (),
) -> str:
    cfg = summary.get("config", {})
    fig = summary.get("figures") or {}
    ranking = is_ranking(summary)
    kind = "Cross-sectional study" if ranking else "Three-phase study"
    benchmark = "equal-weight universe" if ranking else "buy and hold"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Backtest report: {html.escape(str(cfg.get('strategy', '')))}</title>",
        f"<style>{_CSS}</style><script>{_SCRIPT}</script></head><body>",
        f"<h1>{kind}: {html.escape(str(cfg.get('strategy', '')))}</h1>",
        f"<p class='small'>flow run {html.escape(str(summary.get('flow_run_id')))}; results in "
        f"{html.escape(str(summary.get('out')))}</p>",
        "<h2>Summary</h2>",
        _table(headline_rows(summary)),
    ]
    if fig.get("portfolio"):
        rows = [
            {"metric": k, "portfolio": fig["portfolio"].get(k), benchmark: fig["benchmark"].get(k)}
            for k in fig["portfolio"]
        ]
        parts += [f"<h2>Out of sample, {fig.get('oos_start')} to {fig.get('oos_end')}</h2>", _table(rows)]
    if folds:
        parts += ["<h2>Folds</h2>", _table(folds)]
    luck = luck_rows(summary)
    if luck:
        verdict = fig["overfitting"].get("verdict", "")
        parts += ["<h2>How much could be luck</h2>", f"<p>{html.escape(verdict)}.</p>", _table(luck)]
    if summary.get("failed_chunks"):
        parts += ["<h2>Failed chunks</h2>", _table(summary["failed_chunks"])]
    if doc:
        parts += ["<h2>Bottlenecks</h2>", _table(_block_rows(doc["profile"].get("steps", {}), "step"))]
        parts += [_table(_block_rows(doc["profile"].get("phases", {}), "phase"))]
        parts += [
            "<p class='small'>Phases are summed over the computed chunks; their wall time is divided by the "
            "workers. CPU wait: ready to run but queued for a core. I/O wait: wall x parallelism - CPU - CPU "
            "wait. CPU-bound: CPU + CPU wait at least 60 % of wall x parallelism; I/O-bound: storage I/O of at "
            "least 8 MiB/s in the rest; otherwise waiting. CPU of simulate/select/persist is apportioned from "
            "each chunk's measured compute CPU by wall time.</p>",
            "<h2>Recommendations</h2>",
        ]
        recs = doc.get("recommendations", [])
        parts.append(
            "<ul>" + "".join(f"<li>{html.escape(r['advice'])}</li>" for r in recs) + "</ul>"
            if recs
            else "<p>Nothing to change: no rule found a problem worth acting on.</p>"
        )
        alerts = doc.get("alerts", [])
        parts.append("<h2>Alerts</h2>")
        parts.append(
            "<ul>"
            + "".join(
                f"<li class='alert'>{html.escape(a['event'])}: {html.escape(a['message'])}</li>"
                for a in alerts
            )
            + "</ul>"
            if alerts
            else "<p>No alert was raised.</p>"
        )
    parts.append("<h2>Plots</h2>")
    for name, title in plot_titles(summary).items():
        if name in plots:
            rel = os.path.relpath(plots[name], base)
            parts.append(
                f"<h3>{html.escape(title)}</h3><img src='{html.escape(rel)}' alt='{html.escape(title)}'>"
            )
        elif name in skipped:
            parts.append(f"<h3>{html.escape(title)}</h3><p>not drawn: {html.escape(skipped[name])}</p>")
    if doc and doc.get("chunks"):
        parts += ["<h2>Chunks</h2>", _table(doc["chunks"], "small")]
    parts.append("</body></html>")
    return "\n".join(parts)


def _block_rows(blocks: dict[str, dict[str, Any]], label: str) -> list[dict[str, Any]]:
    rows = []
    for name, b in blocks.items():
        rows.append(
            {
                label: name,
                "wall s": b.get("wall"),
                "parallelism": b.get("parallelism"),
                "CPU s": b.get("cpu"),
                "CPU wait s": b.get("cpu_wait"),
                "I/O wait s": b.get("io_wait"),
                "peak RSS": fmt_bytes(b.get("peak_rss")),
                "class": b.get("classification"),
            }
        )
    return rows


#: the plots drawn only from the result tables: identical for identical results, so they can be reused
RESULT_PLOTS = ("equity", "folds", "holdings", "scores", "grid", "selections", "luck")
_SKIPPED_SUFFIX = ".skipped.txt"


def plot_cache_dir(results_dir: Path) -> Path:
    """Where the result plots of the results in ``results_dir`` (a cache entry of merged tables) are kept:
    a subfolder named after this module's code and matplotlib's version, so a change to either redraws."""
    import matplotlib

    digest = hashlib.blake2b(digest_size=10)
    digest.update(Path(__file__).read_bytes())
    digest.update(f"{matplotlib.__version__} dpi={DPI}".encode())
    return Path(results_dir) / f"plots-{digest.hexdigest()}"


def _from_cache(cache: Path, name: str, target: Path) -> Path | str | None:
    """``target`` hard-linked from ``cache`` when this plot was drawn for the same results before, or the
    reason it was skipped then; None when it must be drawn (also when the cache entry is unusable)."""
    png, why = cache / f"{name}.png", cache / f"{name}{_SKIPPED_SUFFIX}"
    try:
        if png.is_file():
            link_into(png, target)
            return target
        if why.is_file():
            return why.read_text(encoding="utf-8")
    except OSError:
        pass  # an unusable cache entry: draw the plot as if it were not there
    return None


def _keep_in_cache(cache: Path, name: str, result: Path | str) -> None:
    """The drawn plot (read-only: output folders link to it, so it is never written in place) or the reason
    it was skipped, kept in ``cache`` for the next run with the same results."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        if isinstance(result, Path):
            with atomic_path(cache / f"{name}.png") as tmp:
                shutil.copyfile(result, tmp)
                os.chmod(tmp, 0o444)
        else:
            with atomic_path(cache / f"{name}{_SKIPPED_SUFFIX}") as tmp_why:
                tmp_why.write_text(result, encoding="utf-8")
    except OSError:
        pass  # the cache is an optimisation: a full or read-only disk must not fail the report


def build_report(out: Path, plot_cache: Path | None = None) -> ReportFiles:
    """Draw every plot the saved results allow and write ``report.html``; return what was written.

    With ``plot_cache`` (see ``plot_cache_dir``: a folder belonging to exactly these results) the plots that
    depend only on the result tables are reused from there when present, and kept there when drawn; the
    resource and time-per-phase plots, which differ on every run, are always drawn.

    Figures are drawn one after the other on this thread (matplotlib's drawing holds the GIL: two drawing
    threads were no faster, measured) while one writer thread encodes and writes the PNG of the previous one.
    """
    out = Path(out)
    summary_path = out / "summary.json"
    if not summary_path.exists():
        raise FileNotFoundError(f"no summary.json in {out}: not the output folder of a run")
    summary = json.loads(summary_path.read_text())
    doc_path = out / PROFILE_FILE
    doc = json.loads(doc_path.read_text()) if doc_path.exists() else None
    plot_dir = out / PLOT_DIR
    plot_dir.mkdir(parents=True, exist_ok=True)
    tables = RunTables(out)
    ranking = is_ranking(summary)
    every: dict[str, Callable[[], Figure | str]] = {
        "equity": functools.partial(plot_equity, tables, ranking),
        "folds": functools.partial(plot_fold_equity, tables),
        "holdings": functools.partial(plot_holdings, tables),
        "scores": functools.partial(plot_scores, tables),
        "grid": functools.partial(plot_grid, tables, ranking),
        "selections": functools.partial(plot_selections, tables, ranking),
        "luck": functools.partial(plot_luck, tables),
        "resources": functools.partial(plot_resources, tables),
        "phases": functools.partial(plot_phases, summary, doc),
    }
    makers = {name: every[name] for name in plot_titles(summary)}
    results: dict[str, Path | str] = {}
    reused: set[str] = set()  # taken from the plot cache
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="report-png") as writer:
        writes: dict[str, Future[Path]] = {}
        for name, make in makers.items():
            target = plot_dir / f"{name}.png"
            cache = plot_cache if plot_cache is not None and name in RESULT_PLOTS else None
            cached = _from_cache(cache, name, target) if cache is not None else None
            if cached is not None:
                results[name] = cached
                reused.add(name)
                continue
            drawn = make()
            if isinstance(drawn, str):
                results[name] = drawn
            else:
                writes[name] = writer.submit(write_png, render(drawn), target)
                del drawn  # the image keeps the pixels alive; the figure's artists can go
        for name, future in writes.items():
            results[name] = future.result()  # a failed write fails the report, as a failed drawing does
    plots: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    for name in makers:  # in the report's order
        result = results[name]
        if isinstance(result, Path):
            plots[name] = result
        else:
            skipped[name] = result
            (plot_dir / f"{name}.png").unlink(missing_ok=True)  # no stale plot from an earlier build
        if plot_cache is not None and name in RESULT_PLOTS and name not in reused:
            _keep_in_cache(plot_cache, name, result)
    page = out / REPORT_FILE
    with atomic_path(page) as tmp:
        folds = fold_rows(tables) if ranking else []
        tmp.write_text(render_html(summary, doc, plots, skipped, out, folds), encoding="utf-8")
    return ReportFiles(html=page, plots=plots, skipped=skipped)


# -- the markdown artifact -----------------------------------------------------------------------------------------
def report_markdown(summary: dict[str, Any], doc: dict[str, Any] | None, html_path: Path | None) -> str:
    """Summary, bottlenecks and recommendations as markdown (the Prefect artifact)."""
    lines = [f"# Run report: {summary.get('config', {}).get('strategy', '')}", ""]
    lines += ["| figure | value |", "| --- | --- |"]
    lines += [f"| {r['figure']} | {r['value']} |" for r in headline_rows(summary)]
    luck = luck_rows(summary)
    if luck:
        lines += [
            "",
            "## How much could be luck",
            "",
            "| statistic | value | meaning |",
            "| --- | --- | --- |",
        ]
        lines += [f"| {r['statistic']} | {_fmt(r['value'])} | {r['meaning']} |" for r in luck]
    if doc:
        lines += [
            "",
            "## Bottlenecks",
            "",
            "| step / phase | wall s | CPU s | CPU wait s | I/O wait s | peak RSS | class |",
        ]
        lines += ["| --- | --- | --- | --- | --- | --- | --- |"]
        for kind in ("steps", "phases"):
            for name, b in doc["profile"].get(kind, {}).items():
                lines.append(
                    f"| {name} | {_fmt(b.get('wall'), 3)} | {_fmt(b.get('cpu'), 3)} | {_fmt(b.get('cpu_wait'), 3)} | "
                    f"{_fmt(b.get('io_wait'), 3)} | {fmt_bytes(b.get('peak_rss'))} | {b.get('classification')} |"
                )
        lines += ["", "## Recommendations", ""]
        recs = doc.get("recommendations", [])
        lines += [f"- {r['advice']}" for r in recs] or ["Nothing to change: no rule found a problem."]
        alerts = doc.get("alerts", [])
        lines += ["", "## Alerts", ""]
        lines += [f"- **{a['event']}**: {a['message']}" for a in alerts] or ["No alert was raised."]
    if html_path is not None:
        lines += ["", f"The full report with plots: `{html_path}`"]
    return "\n".join(lines)
