"""Profiler and bottleneck detector: where a study's time went, and what kind of time it was.

Inputs are cheap figures recorded anyway: each chunk task's wall time per phase and its CPU time (kept in the
chunk result's ``timings``, so they persist with the cache), the flow's step times, and the resource monitor's
time series of the whole process tree. Nothing here re-runs or instruments the numeric code.

Definitions (the report states them too):

- *CPU wait* = time a thread was ready to run but queued for a core (Linux ``schedstat`` run delay): on a
  busy machine CPU-bound work spends much of its wall time here, and it is still CPU-bound.
- *I/O-wait estimate* = wall - CPU - CPU wait of a block of work on one thread: time spent blocked.
- *Classification* of a block: CPU-bound when CPU (plus CPU wait, where measured) covers at least
  ``CPU_BOUND_RATIO`` of its wall time (times its parallelism); otherwise I/O-bound when storage I/O ran at
  ``IO_BOUND_RATE`` or more during the rest; otherwise *waiting* (on locks, the GIL, the orchestrator, a
  sleep).
- *Parallel efficiency* = total CPU time of the computed chunk tasks / (backtest step wall x workers).
- *Load imbalance* = slowest computed chunk / median computed chunk.
- *Orchestration overhead* = flow wall - time doing study work: the union of the running intervals of the
  chunk tasks and their load tasks, plus the flow's other steps (plan, collect, prune, ...), each of which is
  study work.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import psutil
import pyarrow.parquet as pq

from backtest.atomic import write_json
from backtest.observe.monitor import (
    Sample,
    cpu_seconds_between,
    cpu_wait_between,
    io_bytes_between,
    peak_between,
    write_samples,
)


class Finding(Protocol):
    """A recommendation or an alert, as ``profile.json`` stores it (those modules build on this one)."""

    def to_dict(self) -> dict[str, Any]: ...


#: ``timings`` keys that are not wall seconds of a phase (so never summed into a chunk's wall time)
CPU_KEY = "cpu"  # CPU seconds of the whole task body
CPU_LOAD_KEY = "cpu_load"  # CPU seconds of its load phase
CPU_WAIT_KEY = "cpu_wait"  # seconds queued for a core (run delay) during the task body
ATTEMPTS_KEY = "attempts"  # the task run's attempt number that produced the result
FETCH_KEY = "fetch"  # wall seconds making the chunk's price file from the source (near 0 when it existed)
FETCHED_KEY = "fetched"  # 1.0 when the task read its prices from the source, 0.0 when from the price cache
NON_WALL_KEYS = frozenset({CPU_KEY, CPU_LOAD_KEY, CPU_WAIT_KEY, ATTEMPTS_KEY, FETCHED_KEY})

#: the study's phases and the chunk timings that make them up
PHASES: dict[str, tuple[str, ...]] = {
    "load": (FETCH_KEY, "load"),  # fetching from the source (when the price file is missing), then reading it
    "simulate": ("optimise", "test"),
    "select": ("select",),
    "persist": ("collect",),
}
#: a cross-sectional study's phases: its score tasks load and score, its block tasks load the market (the
#: chunks' closes and scores) and form the portfolios
RANKING_PHASES: dict[str, tuple[str, ...]] = {
    "load": (FETCH_KEY, "load"),
    "scores": ("scores",),
    "portfolios": ("portfolios",),
}

#: files a run writes beside its results (read back by the report)
PROFILE_FILE = "profile.json"
RESOURCES_FILE = "resources.parquet"
REPORT_FILE = "report.html"

CPU_BOUND_RATIO = 0.6
IO_BOUND_RATE = 8 * 2**20  # bytes of storage I/O per second of non-CPU time
CPU_BOUND, IO_BOUND, WAITING = "cpu-bound", "io-bound", "waiting"


# -- measuring inside a task ---------------------------------------------------------------------------------
def cpu_clock() -> float:
    """CPU seconds of the current unit of work: the process's when this thread is its main thread (a
    process-pool worker runs one task at a time there, and the process's helper threads, e.g. Arrow's
    readers, work for it), otherwise this thread's alone (one of several tasks sharing a thread pool)."""
    if threading.current_thread() is threading.main_thread():
        return time.process_time()
    return time.thread_time()


def run_delay() -> float:
    """Seconds this thread has spent ready to run but waiting for a core (0 where Linux does not say)."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def _io_bytes() -> int:
    try:
        io = psutil.Process().io_counters()
    except (psutil.Error, AttributeError):
        return 0
    return int(io.read_bytes + io.write_bytes)


@dataclass
class Measured:
    """Wall time, CPU time and storage I/O of one block (filled in when the block ends)."""

    wall: float = 0.0
    cpu: float = 0.0
    cpu_wait: float = 0.0  # queued for a core
    io_bytes: int = 0  # the whole process's storage I/O during the block (shared with concurrent threads)

    @property
    def io_wait(self) -> float:
        return max(self.wall - self.cpu - self.cpu_wait, 0.0)

    @property
    def classification(self) -> str:
        return classify(self.wall, self.cpu, self.io_bytes, cpu_wait=self.cpu_wait)


@contextmanager
def measure() -> Iterator[Measured]:
    """``with measure() as m: work()`` then ``m.wall``, ``m.cpu``, ``m.io_bytes``, ``m.classification``."""
    m = Measured()
    w0, c0, q0, io0 = time.perf_counter(), cpu_clock(), run_delay(), _io_bytes()
    try:
        yield m
    finally:
        m.wall = time.perf_counter() - w0
        m.cpu = cpu_clock() - c0
        m.cpu_wait = max(run_delay() - q0, 0.0)
        m.io_bytes = max(_io_bytes() - io0, 0)


def classify(
    wall: float, cpu: float, io_bytes: int | None = None, parallelism: float = 1.0, cpu_wait: float = 0.0
) -> str:
    """CPU-bound, I/O-bound or waiting (see the module's definitions)."""
    if wall <= 0:
        return WAITING
    if cpu + cpu_wait >= CPU_BOUND_RATIO * wall * max(parallelism, 1e-9):
        return CPU_BOUND
    idle = max(wall * max(parallelism, 1.0) - cpu - cpu_wait, 1e-9)
    if io_bytes is not None and io_bytes >= IO_BOUND_RATE * idle:
        return IO_BOUND
    return WAITING


def add_task_figures(
    timings: dict[str, float], load: Measured, total: Measured, attempt: int, fetched: bool
) -> None:
    """Record a chunk task's CPU time, attempt number and price source beside its phase wall times."""
    timings[CPU_KEY] = total.cpu
    timings[CPU_LOAD_KEY] = load.cpu
    timings[CPU_WAIT_KEY] = total.cpu_wait
    timings[ATTEMPTS_KEY] = float(attempt)
    timings[FETCHED_KEY] = 1.0 if fetched else 0.0


def wall_timings(timings: Mapping[str, float]) -> dict[str, float]:
    """The phase wall times of a ``timings`` dict (without CPU and attempt figures)."""
    return {k: float(v) for k, v in timings.items() if k not in NON_WALL_KEYS}


def read_chunk_timings(path: Path) -> dict[str, float]:
    """A persisted chunk result's timings, read from the Parquet footer only (no table data is read)."""
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(b"backtest")
    return {k: float(v) for k, v in (json.loads(raw).get("timings", {}) if raw else {}).items()}


# -- figures of a run ------------------------------------------------------------------------------------------
COMPUTED, CACHED, FAILED = "computed", "cached", "failed"


@dataclass(frozen=True)
class ChunkFigures:
    """One chunk's figures in one run. A cached chunk did no work in this run: its figures are zero and its
    ``original_wall`` is what computing it cost when it was computed."""

    chunk: str
    symbols: int
    status: str  # computed, cached, failed
    wall: float = 0.0  # seconds inside the task body
    cpu: float = 0.0
    cpu_wait: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # wall seconds per study phase
    load_cpu: float = 0.0
    attempts: int = 1
    end: float | None = None  # epoch seconds when the task finished
    peak_rss: int | None = None  # peak RSS of the process tree while the chunk ran (sampled)
    original_wall: float | None = None
    #: seconds spent fetching its prices from the source into the chunk's price file (None: read from cache)
    fetch: float | None = None
    #: the study's phases (``PHASES`` or ``RANKING_PHASES``): the chunk table's columns
    phase_names: tuple[str, ...] = tuple(PHASES)

    @property
    def io_wait(self) -> float:
        return max(self.wall - self.cpu - self.cpu_wait, 0.0)

    @property
    def start(self) -> float | None:
        return None if self.end is None else self.end - self.wall

    @property
    def classification(self) -> str | None:
        return classify(self.wall, self.cpu, cpu_wait=self.cpu_wait) if self.status == COMPUTED else None

    def row(self) -> dict[str, Any]:
        return {
            "chunk": self.chunk,
            "symbols": self.symbols,
            "status": self.status,
            "attempts": self.attempts,
            "wall_s": round(self.wall, 3),
            "cpu_s": round(self.cpu, 3),
            "cpu_wait_s": round(self.cpu_wait, 3),
            "io_wait_s": round(self.io_wait, 3),
            "fetch_s": None if self.fetch is None else round(self.fetch, 3),
            **{f"{p}_s": round(self.phases.get(p, 0.0), 3) for p in self.phase_names},
            "peak_rss_mib": None if self.peak_rss is None else round(self.peak_rss / 2**20, 1),
            "class": self.classification,
            "symbols_per_s": round(self.symbols / self.wall, 1) if self.wall > 0 else None,
        }


def phase_walls(
    timings: Mapping[str, float], phases: Mapping[str, tuple[str, ...]] = PHASES
) -> dict[str, float]:
    """Wall seconds per study phase from a chunk's timings (unknown keys go to ``other``)."""
    out = dict.fromkeys(phases, 0.0)
    known = {key: phase for phase, keys in phases.items() for key in keys}
    for key, value in wall_timings(timings).items():
        phase = known.get(key, "other")
        out[phase] = out.get(phase, 0.0) + value
    return out


def chunk_figures(
    chunk: str,
    symbols: int,
    status: str,
    timings: Mapping[str, float] | None,
    end: float | None,
    samples: pd.DataFrame | None = None,
    phases: Mapping[str, tuple[str, ...]] = PHASES,
) -> ChunkFigures:
    """A chunk's figures from its persisted timings (and the monitor's samples for its memory)."""
    timings = timings or {}
    walls = wall_timings(timings)
    wall = sum(walls.values())
    if status != COMPUTED:
        return ChunkFigures(
            chunk, symbols, status, original_wall=wall if walls else None, end=end, phase_names=tuple(phases)
        )
    peak = None
    if samples is not None and end is not None:
        peak = peak_between(samples, end - wall, end)
    return ChunkFigures(
        chunk=chunk,
        symbols=symbols,
        status=status,
        wall=wall,
        cpu=float(timings.get(CPU_KEY, 0.0)),
        cpu_wait=float(timings.get(CPU_WAIT_KEY, 0.0)),
        phases=phase_walls(timings, phases),
        load_cpu=float(timings.get(CPU_LOAD_KEY, 0.0)),
        attempts=int(timings.get(ATTEMPTS_KEY, 1)),
        end=end,
        peak_rss=peak,
        fetch=float(timings.get(FETCH_KEY, 0.0)) if timings.get(FETCHED_KEY) else None,
        phase_names=tuple(phases),
    )


@dataclass(frozen=True)
class BlockFigures:
    """Wall, CPU, I/O-wait estimate and peak memory of a phase or a flow step, with its classification.

    ``cpu_estimated`` marks a CPU time apportioned from a larger measured block (the chunk task measures its
    load and the rest; the rest is split over simulate/select/persist in proportion to their wall time).
    """

    name: str
    wall: float
    cpu: float | None
    parallelism: float
    peak_rss: int | None
    io_bytes: int | None = None
    cpu_estimated: bool = False
    cpu_wait: float = 0.0  # queued for a core (measured per chunk, apportioned to phases by wall time)

    @property
    def io_wait(self) -> float | None:
        if self.cpu is None:
            return None
        return max(self.wall * self.parallelism - self.cpu - self.cpu_wait, 0.0)

    @property
    def classification(self) -> str | None:
        if self.cpu is None:
            return None
        return classify(self.wall, self.cpu, self.io_bytes, self.parallelism, self.cpu_wait)

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "io_wait": self.io_wait,
            "classification": self.classification,
        }


@dataclass(frozen=True)
class RunProfile:
    """Everything the bottleneck analysis found about one run (the input of the recommendations)."""

    wall: float
    workers: int
    cores: int
    runner: str
    chunk_size: int
    chunks: tuple[ChunkFigures, ...]
    phases: tuple[BlockFigures, ...]  # load, simulate, select, persist
    steps: tuple[BlockFigures, ...]  # the flow's steps (plan, backtest, collect, ...)
    peak_rss: int | None
    peak_root_rss: int | None
    machine_memory: int
    parallel_efficiency: float | None
    cache_hit_rate: float | None
    warm: bool
    load_imbalance: float | None
    orchestration_overhead: float
    per_task_overhead: float | None
    busy_seconds: float
    bottleneck: dict[str, Any]
    monitor_overhead: float | None = None

    @property
    def computed(self) -> list[ChunkFigures]:
        return [c for c in self.chunks if c.status == COMPUTED]

    def summary(self) -> dict[str, Any]:
        """The figures summary.json carries."""
        return {
            "peak_rss_bytes": self.peak_rss,
            "peak_flow_process_rss_bytes": self.peak_root_rss,
            "parallel_efficiency": self.parallel_efficiency,
            "cache_hit_rate": self.cache_hit_rate,
            "warm_cache": self.warm,
            "load_imbalance": self.load_imbalance,
            "orchestration_overhead_seconds": self.orchestration_overhead,
            "orchestration_overhead_fraction": self.orchestration_overhead / self.wall if self.wall else None,
            "per_task_overhead_seconds": self.per_task_overhead,
            "monitor_overhead_fraction": self.monitor_overhead,
            "bottleneck": self.bottleneck,
            "phases": {b.name: b.to_dict() for b in self.phases},
            "steps": {b.name: b.to_dict() for b in self.steps},
            "workers": self.workers,
            "cores": self.cores,
        }


def _union_length(intervals: Sequence[tuple[float, float]]) -> float:
    total, cur_start, cur_end = 0.0, None, None
    for start, end in sorted(intervals):
        if cur_end is None or start > cur_end:
            if cur_end is not None and cur_start is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None and cur_start is not None:
        total += cur_end - cur_start
    return total


def step_intervals(start: float, steps: Mapping[str, float]) -> dict[str, tuple[float, float]]:
    """Epoch intervals of the flow's consecutive steps, from its start time and the steps' durations."""
    out, t = {}, start
    for name, seconds in steps.items():
        out[name] = (t, t + seconds)
        t += seconds
    return out


def analyse(
    *,
    chunks: Sequence[ChunkFigures],
    steps: Mapping[str, float],
    flow_start: float,
    wall: float,
    workers: int,
    runner: str,
    chunk_size: int,
    samples: pd.DataFrame | None,
    warm: bool,
    backtest_step: str = "backtest",
    cores: int | None = None,
    machine_memory: int | None = None,
    monitor_overhead: float | None = None,
    phases: Mapping[str, tuple[str, ...]] = PHASES,
) -> RunProfile:
    """The bottleneck analysis of one run (see the module's definitions)."""
    samples = samples if samples is not None else pd.DataFrame()
    cores = cores or os.cpu_count() or 1
    machine_memory = machine_memory or psutil.virtual_memory().total
    intervals = step_intervals(flow_start, steps)
    computed = [c for c in chunks if c.status == COMPUTED]
    bt_wall = steps.get(backtest_step, 0.0)
    bt_interval = intervals.get(backtest_step)

    def tree_cpu(interval: tuple[float, float] | None) -> float | None:
        return None if interval is None or samples.empty else cpu_seconds_between(samples, *interval)

    def tree_io(interval: tuple[float, float] | None) -> int | None:
        if interval is None or samples.empty:
            return None
        moved = io_bytes_between(samples, *interval)
        return None if moved is None else int(moved)

    def peak(interval: tuple[float, float] | None) -> int | None:
        return None if interval is None or samples.empty else peak_between(samples, *interval)

    # flow steps, measured on the whole tree
    step_blocks = []
    for name, (s, e) in intervals.items():
        par = float(workers) if name == backtest_step else 1.0
        wait = None if samples.empty else cpu_wait_between(samples, s, e)
        step_blocks.append(
            BlockFigures(
                name, e - s, tree_cpu((s, e)), par, peak((s, e)), tree_io((s, e)), cpu_wait=wait or 0.0
            )
        )

    # study phases, summed over the computed chunks (CPU: load measured, the rest apportioned by wall)
    phase_wall = {p: sum(c.phases.get(p, 0.0) for c in computed) for p in phases}
    load_cpu = sum(c.load_cpu for c in computed)
    rest_cpu = sum(max(c.cpu - c.load_cpu, 0.0) for c in computed)
    rest_wall = sum(phase_wall[p] for p in phases if p != "load")
    all_wall = sum(phase_wall.values())
    queued = sum(c.cpu_wait for c in computed)
    par = float(workers)
    bt_peak = peak(bt_interval)
    phase_blocks = []
    for p in phases:
        w = phase_wall[p] / par  # wall-clock equivalent with ``workers`` chunks in flight
        if not computed:
            phase_blocks.append(BlockFigures(p, 0.0, None, par, None))
            continue
        wait = queued * phase_wall[p] / all_wall if all_wall > 0 else 0.0
        if p == "load":
            phase_blocks.append(BlockFigures(p, w, load_cpu, par, bt_peak, cpu_wait=wait))
        else:
            share = phase_wall[p] / rest_wall if rest_wall > 0 else 0.0
            cpu = rest_cpu * share
            phase_blocks.append(BlockFigures(p, w, cpu, par, bt_peak, cpu_estimated=True, cpu_wait=wait))

    task_cpu = sum(c.cpu for c in computed)
    efficiency = task_cpu / (bt_wall * workers) if computed and bt_wall > 0 and workers > 0 else None
    walls = [c.wall for c in computed]
    median = statistics.median(walls) if walls else 0.0
    imbalance = max(walls) / median if walls and median > 0 else None

    chunk_intervals = [(c.start, c.end) for c in computed if c.start is not None and c.end is not None]
    other_steps = sum(e - s for name, (s, e) in intervals.items() if name != backtest_step)
    busy = other_steps + _union_length(chunk_intervals)
    overhead = max(wall - busy, 0.0)
    per_task = None
    if chunks and bt_wall > 0:
        per_task = max(bt_wall * workers - sum(walls), 0.0) / len(chunks)

    total = len(chunks)
    hits = sum(c.status == CACHED for c in chunks)
    hit_rate = hits / total if total else None

    samples_peak = int(samples["tree_rss"].max()) if not samples.empty else None
    root_peak = int(samples["root_rss"].max()) if not samples.empty else None
    profile = RunProfile(
        wall=wall,
        workers=workers,
        cores=cores,
        runner=runner,
        chunk_size=chunk_size,
        chunks=tuple(chunks),
        phases=tuple(phase_blocks),
        steps=tuple(step_blocks),
        peak_rss=samples_peak,
        peak_root_rss=root_peak,
        machine_memory=machine_memory,
        parallel_efficiency=efficiency,
        cache_hit_rate=hit_rate,
        warm=warm,
        load_imbalance=imbalance,
        orchestration_overhead=overhead,
        per_task_overhead=per_task,
        busy_seconds=busy,
        bottleneck={},
        monitor_overhead=monitor_overhead,
    )
    return _with_bottleneck(profile)


def _with_bottleneck(p: RunProfile) -> RunProfile:
    """Name where the wall time went: the largest of orchestration overhead, a non-backtest flow step, or the
    chunk work; for chunk work, the phase with the most time and its kind (CPU, I/O, waiting)."""
    candidates: dict[str, float] = {"orchestration": p.orchestration_overhead}
    for step in p.steps:
        if step.name != "backtest":
            candidates[f"step:{step.name}"] = step.wall
    chunk_work = p.busy_seconds - sum(s.wall for s in p.steps if s.name != "backtest")
    candidates["chunks"] = max(chunk_work, 0.0)
    where = max(candidates, key=lambda k: candidates[k])
    share = candidates[where] / p.wall if p.wall > 0 else None
    result: dict[str, Any] = {"where": where, "seconds": candidates[where], "share_of_wall": share}
    if where == "chunks":
        phases = [b for b in p.phases if b.wall > 0]
        if phases:
            top = max(phases, key=lambda b: b.wall)
            total = sum(b.wall for b in phases)
            result.update(
                phase=top.name,
                phase_share=top.wall / total if total else None,
                classification=top.classification,
            )
    elif where.startswith("step:"):
        step = next(s for s in p.steps if f"step:{s.name}" == where)
        result["classification"] = step.classification
    else:
        result["classification"] = WAITING
    return replace(p, bottleneck=result)


def describe_bottleneck(b: dict[str, Any]) -> str:
    if not b:
        return "n/a"
    where = b.get("where", "")
    share = b.get("share_of_wall")
    text = f"{where} ({_share(share)} of the wall time)"
    if b.get("phase"):
        text += f", mostly {b['phase']} ({_share(b.get('phase_share'))} of chunk time)"
    if b.get("classification"):
        text += f": {b['classification']}"
    return text


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def fmt_bytes(n: float | None) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "n/a"
    return f"{n / 2**20:,.0f} MiB"


# -- saving a run's profile -------------------------------------------------------------------------------------
def profile_document(
    profile: RunProfile, recommendations: Sequence[Finding], alerts: Sequence[Finding]
) -> dict[str, Any]:
    """What ``profile.json`` holds: the run's figures, per-chunk rows, recommendations and alerts."""
    return {
        "profile": profile.summary(),
        "wall_seconds": profile.wall,
        "chunk_size": profile.chunk_size,
        "runner": profile.runner,
        "chunks": [c.row() for c in profile.chunks],
        "recommendations": [r.to_dict() for r in recommendations],
        "alerts": [a.to_dict() for a in alerts],
    }


def save_profile(
    out: Path,
    profile: RunProfile,
    recommendations: Sequence[Finding],
    alerts: Sequence[Finding],
    samples: Sequence[Sample],
) -> dict[str, Any]:
    """Write ``profile.json`` and ``resources.parquet`` into ``out``; return the profile document."""
    doc = profile_document(profile, recommendations, alerts)
    write_json(out / PROFILE_FILE, doc)
    write_samples(samples, out / RESOURCES_FILE)
    return doc
