"""The report's two per-run charts, resource use over time and time per phase, as small SVG files.

They are drawn for every run, a warm re-run included, whose result plots come from the plot cache: written
without matplotlib, a warm run's report never imports it (a second of a warm command, measured). The charts are
plain SVG (lines, bars, text), viewed by any browser as an image.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from backtest.observe.monitor import CORE_PREFIX

WIDTH, HEIGHT = 900, 440


@dataclass(frozen=True)
class Svg:
    """A chart's SVG document (a plain string is the reason a chart could not be drawn)."""

    text: str


_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#7f7f7f", "#bcbd22")
_FONT = "font-family:system-ui,sans-serif;font-size:12px"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else [0.0]
    raw = (hi - lo) / max(count - 1, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    ticks = []
    value = first
    while True:  # up to the first tick at or above ``hi``: the ticks cover the range
        ticks.append(round(value, 12))
        if value >= hi - step * 1e-9:
            return ticks
        value += step


def _label(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 or value == int(value) else f"{value:,.2g}"


class _Panel:
    """A plotting area of the SVG: data coordinates to pixels, axes, ticks and labels."""

    def __init__(
        self, x: float, y: float, w: float, h: float, xr: tuple[float, float], yr: tuple[float, float]
    ):
        self.x, self.y, self.w, self.h = x, y, w, h
        self.xt = nice_ticks(*xr)
        self.yt = nice_ticks(*yr)
        self.x0, self.x1 = min(self.xt[0], xr[0]), max(self.xt[-1], xr[1])
        self.y0, self.y1 = min(self.yt[0], yr[0]), max(self.yt[-1], yr[1])
        if self.x1 <= self.x0:
            self.x1 = self.x0 + 1.0
        if self.y1 <= self.y0:
            self.y1 = self.y0 + 1.0

    def px(self, v: np.ndarray | float) -> Any:
        return self.x + (np.asarray(v, dtype=float) - self.x0) / (self.x1 - self.x0) * self.w

    def py(self, v: np.ndarray | float) -> Any:
        return self.y + self.h - (np.asarray(v, dtype=float) - self.y0) / (self.y1 - self.y0) * self.h

    def frame(self, xlabel: str, ylabel: str, xticks: bool = True, yticks: bool = True) -> list[str]:
        """The panel's box, its grid and tick labels (a bar chart, ``yticks=False``: a grid along the values)."""
        box = f'x="{self.x:.1f}" y="{self.y:.1f}" width="{self.w:.1f}" height="{self.h:.1f}"'
        out = [f'<rect {box} fill="none" stroke="#444"/>']
        bottom = self.y + self.h
        for v in self.yt if yticks else ():
            yy = float(self.py(v))
            out.append(
                f'<line x1="{self.x:.1f}" x2="{self.x + self.w:.1f}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#ddd"/>'
            )
            out.append(f'<text x="{self.x - 6:.1f}" y="{yy + 4:.1f}" text-anchor="end">{_label(v)}</text>')
        for v in self.xt if xticks else ():
            xx = float(self.px(v))
            if not yticks:
                out.append(
                    f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{self.y:.1f}" y2="{bottom:.1f}" stroke="#ddd"/>'
                )
            out.append(f'<text x="{xx:.1f}" y="{bottom + 16:.1f}" text-anchor="middle">{_label(v)}</text>')
        if xlabel:
            out.append(
                f'<text x="{self.x + self.w / 2:.1f}" y="{bottom + 34:.1f}" text-anchor="middle">'
                f"{html.escape(xlabel)}</text>"
            )
        if ylabel:
            out.append(
                f'<text transform="translate({self.x - 52:.1f},{self.y + self.h / 2:.1f}) rotate(-90)" '
                f'text-anchor="middle">{html.escape(ylabel)}</text>'
            )
        return out

    def line(
        self, xs: np.ndarray, ys: np.ndarray, color: str, width: float = 1.0, opacity: float = 1.0
    ) -> str:
        """A polyline thinned to a run of points per pixel column, each run's first, last, lowest and highest
        point kept (``m4_indices``): it covers the same pixels. NaN points break it into several."""
        thin = m4_indices(np.asarray(ys, dtype=float), max(int(self.w), 1))
        xs, ys = np.asarray(xs, dtype=float)[thin], np.asarray(ys, dtype=float)[thin]
        keep = np.isfinite(ys) & np.isfinite(xs)
        pieces, parts, current = [], [], []
        for x, y, ok in zip(self.px(xs), self.py(np.where(keep, ys, 0.0)), keep, strict=True):
            if ok:
                current.append(f"{x:.1f},{y:.1f}")
            elif current:
                parts.append(current)
                current = []
        if current:
            parts.append(current)
        for points in parts:
            pieces.append(f'<polyline points="{" ".join(points)}" fill="none" stroke="{color}" '
                          f'stroke-width="{width}" stroke-opacity="{opacity}"/>')  # fmt: skip
        return "".join(pieces)


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


def _svg(body: Sequence[str], title: str, legend: Sequence[tuple[str, str]]) -> str:
    items, x = [], 70.0
    for label, color in legend:  # side by side, each as wide as its text (about 7 px a character)
        items.append(
            f'<rect x="{x:.0f}" y="{HEIGHT - 22}" width="14" height="10" fill="{color}"/>'
            f'<text x="{x + 18:.0f}" y="{HEIGHT - 13}">{html.escape(label)}</text>'
        )
        x += 18 + 7 * len(label) + 24
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" style="{_FONT}">'
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>'
        f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" style="font-size:14px">{html.escape(title)}</text>'
        + "".join(body)
        + "".join(items)
        + "</svg>"
    )


def resources_svg(res: pd.DataFrame | None) -> Svg | str:
    """CPU per core and of the run's process tree, its memory and its storage I/O over time; or why not."""
    if res is None or len(res) < 2:
        return "fewer than two resource samples (the run was shorter than the monitor's interval)"
    t = res["elapsed"].to_numpy(dtype=float)
    cores = [c for c in res.columns if c.startswith(CORE_PREFIX)]
    top = _Panel(80, 36, WIDTH - 160, 150, (float(t.min()), float(t.max())), (0.0, 100.0))
    rss = res["tree_rss"].to_numpy(dtype=float) / 2**20
    io = (res["tree_read_bytes"] + res["tree_write_bytes"]).diff().clip(lower=0) / res["elapsed"].diff()
    io = io.to_numpy(dtype=float) / 2**20
    finite_io = io[np.isfinite(io)]
    low = _Panel(80, 230, WIDTH - 160, 150, (float(t.min()), float(t.max())), (0.0, float(np.nanmax(rss))))
    io_axis = _Panel(80, 230, WIDTH - 160, 150, (float(t.min()), float(t.max())),
                     (0.0, float(finite_io.max()) if len(finite_io) else 1.0))  # fmt: skip
    body = top.frame("", "CPU %", xticks=False) + low.frame("seconds since the monitor started", "MiB")
    for c in cores:
        body.append(top.line(t, res[c].to_numpy(dtype=float), _COLORS[2], 0.6, 0.5))
    tree = res["tree_cpu_percent"].to_numpy(dtype=float) / max(len(cores), 1)
    body.append(top.line(t, tree, _COLORS[0], 1.6))
    body.append(io_axis.line(t, io, "#7f7f7f", 0.8))
    body.append(low.line(t, rss, _COLORS[3], 1.4))
    for v in io_axis.yt:  # the I/O axis on the right
        yy = float(io_axis.py(v))
        body.append(f'<text x="{io_axis.x + io_axis.w + 6:.1f}" y="{yy + 4:.1f}">{_label(v)}</text>')
    legend = [("this run's CPU (of all cores)", _COLORS[0]), ("cores", _COLORS[2]),
              ("RSS of the run (MiB)", _COLORS[3]), ("storage I/O (MiB/s, right)", "#7f7f7f")]  # fmt: skip
    return Svg(_svg(body, "Resource use over time (the run's whole process tree)", legend))


def phases_svg(
    steps: Mapping[str, float], phases: Mapping[str, Mapping[str, Any]], order: Sequence[str]
) -> str:
    """The flow steps' wall time, and the chunk phases' wall time, CPU and CPU wait; or why not."""
    if not steps and not phases:
        return "no timings in summary.json"
    body: list[str] = []
    names = list(steps)
    left = _Panel(110, 40, 300, 336, (0.0, max(steps.values(), default=1.0)), (0.0, 1.0))
    body += left.frame("seconds", "", yticks=False)
    bar = left.h / max(len(names), 1)
    for i, name in enumerate(names):
        y = left.y + i * bar + bar * 0.15
        body.append(f'<rect x="{left.x:.1f}" y="{y:.1f}" width="{float(left.px(steps[name])) - left.x:.1f}" '
                    f'height="{bar * 0.7:.1f}" fill="{_COLORS[0]}"/>')  # fmt: skip
        body.append(
            f'<text x="{left.x - 6:.1f}" y="{y + bar * 0.4:.1f}" text-anchor="end">{html.escape(name)}</text>'
        )
    body.append(
        f'<text x="{left.x + left.w / 2:.1f}" y="30" text-anchor="middle">flow steps (wall time)</text>'
    )
    pnames = [p for p in order if p in phases]
    walls = [phases[p]["wall"] * phases[p]["parallelism"] for p in pnames]
    cpus = [phases[p]["cpu"] or 0.0 for p in pnames]
    waits = [phases[p].get("cpu_wait") or 0.0 for p in pnames]
    top = max([*walls, *(c + w for c, w in zip(cpus, waits, strict=True))], default=1.0)
    right = _Panel(560, 40, 300, 336, (0.0, top or 1.0), (0.0, 1.0))
    body += right.frame("seconds, summed over chunks", "", yticks=False)
    bar = right.h / max(len(pnames), 1)
    for i, name in enumerate(pnames):
        y = right.y + i * bar + bar * 0.1
        for dy, x0, length, color in (
            (0.0, 0.0, walls[i], _COLORS[0]),
            (0.4, 0.0, cpus[i], _COLORS[1]),
            (0.4, cpus[i], waits[i], _COLORS[2]),
        ):
            x = float(right.px(x0))
            body.append(f'<rect x="{x:.1f}" y="{y + dy * bar:.1f}" width="{float(right.px(x0 + length)) - x:.1f}" '
                        f'height="{bar * 0.38:.1f}" fill="{color}"/>')  # fmt: skip
        body.append(
            f'<text x="{right.x - 6:.1f}" y="{y + bar * 0.45:.1f}" text-anchor="end">{html.escape(name)}</text>'
        )
    body.append(f'<text x="{right.x + right.w / 2:.1f}" y="30" text-anchor="middle">chunk phases</text>')
    legend = [("wall (all chunks)", _COLORS[0]), ("CPU", _COLORS[1]), ("CPU wait (queued)", _COLORS[2])]
    return Svg(_svg(body, "", legend))
