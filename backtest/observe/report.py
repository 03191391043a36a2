"""The run report: plots and ``report.html``, built only from the files a run saved.

Everything the report shows is read back from the output folder (the result tables, ``summary.json``,
``profile.json`` and ``resources.parquet``), so ``backtest report OUT`` rebuilds the same report later, on
another machine, without re-running anything. Plots are separate files in ``OUT/report/`` referenced from the
HTML by relative path, so the folder can be moved or served as it is: the result plots are PNGs drawn with
matplotlib (backtest.observe.plots), kept in a cache per results; the two charts of the run itself (resources,
time per phase) are SVG written without it (backtest.observe.svgcharts), so a re-run whose result plots come
from that cache never imports matplotlib.

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
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

import numpy as np
import pandas as pd

from backtest.atomic import atomic_path
from backtest.observe.profiling import (
    PHASES,
    PROFILE_FILE,
    REPORT_FILE,
    RESOURCES_FILE,
    describe_bottleneck,
    fmt_bytes,
)
from backtest.observe.runtables import RunTables, param_columns, param_label
from backtest.observe.svgcharts import Svg, phases_svg, resources_svg
from backtest.overfitting.trials import luck_table
from backtest.results.outputs import link_into

PLOT_DIR = "report"
#: the resolution of the PNG plots (part of the plot cache's key)
DPI = 100


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    plots: dict[str, Path]
    skipped: dict[str, str]  # plot name -> why it is not there


def luck_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The statistics of luck of a run's summary as table rows (none when it has none)."""
    luck = (summary.get("figures") or {}).get("overfitting")
    return luck_table(luck) if luck else []


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
    params = param_columns(grid) if grid is not None else [c for c in sel.columns if c.startswith("param_")]
    rows = []
    for row in sel.itertuples(index=False):
        f = int(row.fold)
        days = by_fold.get_group(f) if f in by_fold.groups else port.iloc[:0]
        rows.append(
            {
                "fold": f,
                "test window": f"{pd.Timestamp(row.test_start):%Y-%m-%d}",
                "selected": " ".join(
                    f"{p.removeprefix('param_')}={param_label(getattr(row, p))}" for p in params
                )
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
    a subfolder named after the plots' code and matplotlib's version, so a change to either redraws."""
    digest = hashlib.blake2b(digest_size=10)
    for module in ("plots.py", "runtables.py", "report.py"):
        digest.update((Path(__file__).parent / module).read_bytes())
    digest.update(f"{metadata.version('matplotlib')} dpi={DPI}".encode())
    return Path(results_dir) / f"plots-{digest.hexdigest()}"


def cached_plots(results_dir: Path, names: Sequence[str]) -> list[str]:
    """The plots of ``names`` the plot cache of these results holds (drawn, or known to be undrawable)."""
    cache = plot_cache_dir(results_dir)
    return [n for n in names if (cache / f"{n}.png").is_file() or (cache / f"{n}{_SKIPPED_SUFFIX}").is_file()]


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


def _draw(names: list[str], tables: RunTables, ranking: bool, plot_dir: Path) -> dict[str, Path | str]:
    """The result plots ``names`` as PNG files (or why each could not be drawn).

    Figures are drawn one after the other on this thread (matplotlib's drawing holds the GIL: two drawing
    threads were no faster, measured) while one writer thread encodes and writes the PNG of the previous one.
    """
    from backtest.observe import plots as P  # matplotlib: only here

    makers: dict[str, Callable[[], Figure | str]] = {
        "equity": functools.partial(P.plot_equity, tables, ranking),
        "folds": functools.partial(P.plot_fold_equity, tables),
        "holdings": functools.partial(P.plot_holdings, tables),
        "scores": functools.partial(P.plot_scores, tables),
        "grid": functools.partial(P.plot_grid, tables, ranking),
        "selections": functools.partial(P.plot_selections, tables, ranking),
        "luck": functools.partial(P.plot_luck, tables),
    }
    results: dict[str, Path | str] = {}
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="report-png") as writer:
        writes: dict[str, Future[Path]] = {}
        for name in names:
            drawn = makers[name]()
            if isinstance(drawn, str):
                results[name] = drawn
            else:
                writes[name] = writer.submit(P.write_png, P.render(drawn), plot_dir / f"{name}.png")
                del drawn  # the image keeps the pixels alive; the figure's artists can go
        for name, future in writes.items():
            results[name] = future.result()  # a failed write fails the report, as a failed drawing does
    return results


def build_report(out: Path, plot_cache: Path | None = None) -> ReportFiles:
    """Draw every plot the saved results allow and write ``report.html``; return what was written.

    With ``plot_cache`` (see ``plot_cache_dir``: a folder belonging to exactly these results) the plots that
    depend only on the result tables are reused from there when present, and kept there when drawn; the
    resource and time-per-phase charts, which differ on every run, are always written (as SVG).
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
    results: dict[str, Path | str] = {}
    reused: set[str] = set()  # taken from the plot cache
    to_draw: list[str] = []
    for name in plot_titles(summary):
        if name in RESULT_PLOTS and plot_cache is not None:
            cached = _from_cache(plot_cache, name, plot_dir / f"{name}.png")
            if cached is not None:
                results[name], _ = cached, reused.add(name)
                continue
        if name in RESULT_PLOTS:
            to_draw.append(name)
    if to_draw:  # matplotlib only when a plot must be drawn
        results.update(_draw(to_draw, tables, ranking, plot_dir))
    charts: dict[str, Callable[[], Svg | str]] = {
        "resources": lambda: resources_svg(tables[RESOURCES_FILE]),
        "phases": lambda: phases_svg(
            summary.get("phase_seconds") or {},
            (doc or {}).get("profile", {}).get("phases", {}),
            list(dict.fromkeys(("fetch", *PHASES, *((doc or {}).get("profile", {}).get("phases", {}))))),
        ),
    }
    for name, make in charts.items():
        chart = make()
        if isinstance(chart, Svg):
            target = plot_dir / f"{name}.svg"
            with atomic_path(target) as tmp:
                tmp.write_text(chart.text, encoding="utf-8")
            (plot_dir / f"{name}.png").unlink(missing_ok=True)  # drawn by an earlier version as PNG
            results[name] = target
        else:
            results[name] = chart
    plots: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    for name in plot_titles(summary):  # in the report's order
        result = results[name]
        if isinstance(result, Path):
            plots[name] = result
        else:
            skipped[name] = result
            for suffix in (".png", ".svg"):
                (plot_dir / f"{name}{suffix}").unlink(missing_ok=True)  # no stale plot from an earlier build
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
