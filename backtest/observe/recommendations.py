"""Recommendations: rules turning a run's profile into concrete advice, with the numbers behind it.

Each rule is a pure function of a ``RunProfile`` returning a ``Recommendation`` or None, so each can be tested
on constructed figures. Thresholds are module constants: they say when a figure is worth acting on.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from backtest.engine.planning import (
    CHUNKS_PER_WORKER,
    MAX_CHUNK_SYMBOL_BARS,
    MAX_TASK_OVERHEAD_SHARE,
    TASK_OVERHEAD_SECONDS,
    ChunkChoice,
    size_chunks,
    size_limit,
)
from backtest.observe.alerts import startup_chunks
from backtest.observe.profiling import CPU_BOUND, IO_BOUND, ChunkFigures, RunProfile

#: chunk-size advice only when the size the run's own figures call for is this many times larger or
#: smaller than the run's: the chooser's estimate and a run's measurement never agree to the symbol, and a
#: near miss is not worth a re-run
CHUNK_SIZE_TOLERANCE = 1.5
#: loading above this share of the chunks' time "dominates"
LOAD_DOMINATES_SHARE = 0.30
#: the slowest chunk above this multiple of the median "dominates"
IMBALANCE_LIMIT = 2.0
#: orchestration above this share of the flow's wall time is worth reducing
OVERHEAD_SHARE_LIMIT = 0.20
#: chunk threads blocked (not computing, not queued for a core) above this share of their time contend
BLOCKED_SHARE = 0.4
#: chunks queued for a core above this share of their time: the machine is busy with other work
QUEUED_SHARE = 0.3
#: plan memory for at most this share of the machine
MEMORY_BUDGET = 0.8


@dataclass(frozen=True)
class Recommendation:
    rule: str
    advice: str
    figures: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _symbols(p: RunProfile) -> int:
    return sum(c.symbols for c in p.chunks)


def _median_wall(p: RunProfile) -> float | None:
    walls = [c.wall for c in p.computed]
    return statistics.median(walls) if walls else None


def _startup(p: RunProfile) -> frozenset[str]:
    """The run's start-up chunks (alerts.startup_chunks): the first chunk of each fresh worker."""
    return startup_chunks(
        {c.chunk: (c.start, c.end) for c in p.computed if c.start is not None and c.end is not None}
    )


def _steady(p: RunProfile) -> list[ChunkFigures]:
    """The computed chunks that were not start-up chunks: the ones whose time says what the work costs."""
    startup = _startup(p)
    return [c for c in p.computed if c.chunk not in startup]


def chunk_size_off(p: RunProfile, bars_per_symbol: float | None = None) -> Recommendation | None:
    """The chunk size the run's measured work calls for, by the very rules that chose the default size
    (planning.size_chunks, with the same per-task cost), when the run's size is outside what those rules give
    for any work per symbol within ``CHUNK_SIZE_TOLERANCE`` of the measured one.

    Why the band: the rules only ever shrink chunks as the work per symbol grows, so a default run, whose size
    the chooser took from its estimate of the work, is never told to use another size unless its measured
    work is more than ``CHUNK_SIZE_TOLERANCE`` times away from that estimate: a near miss is not worth a
    re-run. Fewer, bigger chunks are advised only when they save at least ``MAX_TASK_OVERHEAD_SHARE`` of the
    work's time in orchestration. The work per symbol (the chunk task's time, loading its prices included)
    is measured on the chunks that were not the first of a fresh worker, since those carry the kernels'
    one-time load; without any such chunk there is no advice. Given the study's ``bars_per_symbol``, chunks
    grow at most to the chooser's ``size_limit`` (the chunk limit, and memory), with the same
    tolerance."""
    steady = _steady(p)
    symbols = sum(c.symbols for c in steady)
    if not steady or symbols <= 0 or p.chunk_size <= 0:
        return None
    work = sum(c.wall for c in steady) / symbols  # the chunk task's wall includes fetching its prices
    if work <= 0:
        return None
    max_size = size_limit(max(round(bars_per_symbol), 1), p.workers) if bars_per_symbol else None
    n_symbols, t = _symbols(p), CHUNK_SIZE_TOLERANCE
    smallest = size_chunks(n_symbols, work * t, p.workers, None if max_size is None else int(max_size / t))
    largest = size_chunks(n_symbols, work / t, p.workers, None if max_size is None else int(max_size * t))
    if smallest.size <= p.chunk_size <= largest.size:
        return None
    choice = size_chunks(n_symbols, work, p.workers, max_size)
    too_small = p.chunk_size < smallest.size
    saved = (len(p.chunks) - choice.chunks) * TASK_OVERHEAD_SECONDS / (n_symbols * work)
    if too_small and saved < MAX_TASK_OVERHEAD_SHARE:
        return None  # fewer tasks would save too little of the work's time to be worth a change
    share = TASK_OVERHEAD_SECONDS / (p.chunk_size * work)
    per_worker = len(p.chunks) / max(p.workers, 1)
    return Recommendation(
        "chunk-size",
        _chunk_size_advice(p, choice, work, share, per_worker, too_small),
        {
            "chunk_size": p.chunk_size,
            "suggested_chunk_size": choice.size,
            "suggested_chunks": choice.chunks,
            "work_per_symbol_s": work,
            "task_overhead_s": TASK_OVERHEAD_SECONDS,
            "overhead_share": share,
            "chunks_per_worker": per_worker,
            "reason": choice.reason,
        },
    )


_TARGETS = {
    "balance": f"{CHUNKS_PER_WORKER} chunks per worker",
    "overhead": f"orchestration at most {MAX_TASK_OVERHEAD_SHARE:.0%} of a chunk's work",
    "one-per-worker": "one chunk per worker: the work is too small for more",
    "size-limit": "the chunk limit, within a quarter of the free memory",
}


def _chunk_size_advice(
    p: RunProfile, choice: ChunkChoice, work: float, share: float, per_worker: float, too_small: bool
) -> str:
    if too_small:
        now = (
            f"Each chunk task costs about {TASK_OVERHEAD_SECONDS:.2f} s of orchestration against "
            f"{p.chunk_size * work:.2f} s of work ({share:.0%}; {work * 1e3:.2f} ms per symbol measured)"
        )
    elif choice.reason == "size-limit":
        now = (
            f"Chunks of {p.chunk_size} symbols are beyond the chunk limit ({MAX_CHUNK_SYMBOL_BARS / 1e6:.1f} M "
            "symbol-bars: more memory and no measured gain) or a quarter of the free memory"
        )
    else:
        now = (
            f"{len(p.chunks)} chunks for {p.workers} workers ({per_worker:.1f} each) leave workers idle at "
            "the end of the run and the progress moving in big steps"
        )
    return (
        f"{now}. Use --chunk-size {choice.size} (now {p.chunk_size}): {choice.chunks} chunks of about "
        f"{choice.work_seconds:.2f} s of work each ({_TARGETS[choice.reason]}); the default chunk size "
        "follows the same rules."
    )


def more_workers(p: RunProfile) -> Recommendation | None:
    """CPU-bound work, idle cores and memory to spare: more workers finish sooner."""
    if p.workers >= p.cores or p.peak_rss is None or not p.computed:
        return None
    if p.bottleneck.get("classification") != CPU_BOUND:
        return None
    per_worker = p.peak_rss / max(p.workers, 1)  # conservative: the whole tree's memory split by workers
    headroom = MEMORY_BUDGET * p.machine_memory - p.peak_rss
    extra = int(headroom // per_worker) if per_worker > 0 else 0
    suggested = min(p.cores, p.workers + max(extra, 0))
    if suggested <= p.workers:
        return None
    return Recommendation(
        "more-workers",
        f"The work is CPU-bound on {p.workers} of {p.cores} cores and the run peaked at "
        f"{p.peak_rss / 2**30:.2f} GiB of {p.machine_memory / 2**30:.1f} GiB: memory allows "
        f"--workers {suggested}.",
        {"workers": p.workers, "cores": p.cores, "peak_rss": p.peak_rss, "suggested_workers": suggested},
    )


def fewer_workers(p: RunProfile) -> Recommendation | None:
    """More workers than cores only adds contention for CPU-bound work."""
    if p.workers <= p.cores or not p.computed:
        return None
    return Recommendation(
        "fewer-workers",
        f"{p.workers} workers on {p.cores} cores: CPU-bound chunks only queue for the cores. "
        f"Use --workers {p.cores}.",
        {"workers": p.workers, "cores": p.cores, "suggested_workers": p.cores},
    )


def memory_pressure(p: RunProfile) -> Recommendation | None:
    """The run came close to the machine's memory: fewer chunks in flight, or smaller ones."""
    if p.peak_rss is None or p.peak_rss <= MEMORY_BUDGET * p.machine_memory:
        return None
    share = p.peak_rss / p.machine_memory
    smaller = max(p.chunk_size // 2, 1)
    return Recommendation(
        "memory-pressure",
        f"The run peaked at {share:.0%} of the machine's memory ({p.peak_rss / 2**30:.2f} GiB). "
        f"Use --chunk-size {smaller} or fewer --workers (now {p.workers}).",
        {"peak_rss": p.peak_rss, "share": share, "suggested_chunk_size": smaller},
    )


def loading_dominates(p: RunProfile) -> Recommendation | None:
    """Loading prices takes a large share of the chunks' time: the store is slow or cold."""
    phases = {b.name: b for b in p.phases}
    total = sum(b.wall for b in p.phases)
    load = phases.get("load")
    loading = load.wall if load else 0.0
    if not p.computed or total <= 0 or loading / total <= LOAD_DOMINATES_SHARE:
        return None  # (a warm run computes nothing: its quick cache lookups are not "loading")
    share = loading / total
    kind = (load.classification if load else None) or "unknown"
    seconds = loading * p.workers
    return Recommendation(
        "loading-dominates",
        f"Loading prices is {share:.0%} of the chunks' time ({seconds:.1f} s over all chunks: fetching from "
        f"the store and writing the chunk price files, or reading them where they exist, {kind}). Keep the "
        "store on local disk (not a network share) and warm the price cache: a later run on the same data "
        "(another grid, strategy or folds) reads the cached chunk price files instead of the store.",
        {"load_share": share, "load_seconds": seconds, "classification": kind},
    )


def one_chunk_dominates(p: RunProfile) -> Recommendation | None:
    """One chunk much slower than the median holds the run's tail: split it. Unless it was one of the first
    chunks to start, whose time is mostly one-time start-up (numba loading its compiled kernels, imports):
    then say so instead, since splitting would not help."""
    computed = p.computed
    median = _median_wall(p)
    if not computed or not median or p.load_imbalance is None or p.load_imbalance <= IMBALANCE_LIMIT:
        return None
    worst = max(computed, key=lambda c: c.wall)
    first = _startup(p)
    figures = {"chunk": worst.chunk, "seconds": worst.wall, "median": median, "ratio": p.load_imbalance}
    if worst.chunk in first:
        return Recommendation(
            "start-up-chunk",
            f"{worst.chunk} took {worst.wall:.2f} s, {p.load_imbalance:.1f}x the median {median:.2f} s, but "
            "it started before any chunk had finished, as the first chunk of a fresh worker: that is one-time "
            "start-up (loading the compiled kernels), not its data. It weighs less as the study grows; keep "
            "the workers (a Dask cluster, a running worker) alive between runs to avoid it.",
            {**figures, "first_chunks": sorted(first)},
        )
    parts = math.ceil(worst.wall / median)
    suggested = max(math.ceil(worst.symbols / parts), 1)
    return Recommendation(
        "split-slow-chunk",
        f"{worst.chunk} took {worst.wall:.2f} s, {p.load_imbalance:.1f}x the median {median:.2f} s. "
        f"Split it: --chunk-size {suggested} gives chunks of about the median's work "
        "(its symbols may have longer histories or a heavier grid region).",
        {**figures, "suggested_chunk_size": suggested},
    )


def orchestration_heavy(p: RunProfile) -> Recommendation | None:
    """Much of the wall time was spent outside study work: task submission, caching, server round trips."""
    if p.wall <= 0 or p.orchestration_overhead / p.wall <= OVERHEAD_SHARE_LIMIT:
        return None
    share = p.orchestration_overhead / p.wall
    return Recommendation(
        "orchestration-overhead",
        f"{p.orchestration_overhead:.1f} s ({share:.0%}) of the {p.wall:.1f} s run was orchestration. "
        f"Use fewer, larger chunks ({len(p.chunks)} now); and keep to a Prefect server that stays up between "
        "runs (the project's, which `backtest run` starts once and reuses, or PREFECT_API_URL), not a server "
        "of the run's own (--ephemeral).",
        {"overhead_s": p.orchestration_overhead, "share": share, "chunks": len(p.chunks)},
    )


def _shares(p: RunProfile, chunks: Sequence[ChunkFigures] | None = None) -> tuple[float, float] | None:
    """Of the wall time of ``chunks`` (default: the computed ones): the share queued for a core, and the share
    blocked (neither computing nor queued: locks, the GIL, I/O)."""
    chunks = p.computed if chunks is None else chunks
    wall = sum(c.wall for c in chunks)
    if wall <= 0:
        return None
    return sum(c.cpu_wait for c in chunks) / wall, sum(c.io_wait for c in chunks) / wall


def threads_waiting(p: RunProfile) -> Recommendation | None:
    """Thread workers blocked much of the time, with no storage I/O to show for it, are waiting on each
    other: Python-level work holding the GIL. Processes avoid it.

    Only chunks after the start-up ones are judged: while numba loads or compiles the kernels, once per
    process, every chunk in flight waits for it (on a fresh machine the README's demo, two chunks, had one
    blocked most of its time while the other compiled), and each process of a pool would wait as long."""
    if p.runner != "threads" or p.workers < 2:
        return None
    shares = _shares(p, _steady(p))
    if shares is None or shares[1] < BLOCKED_SHARE:
        return None
    load = next((b for b in p.phases if b.name == "load"), None)
    if load is not None and load.classification == IO_BOUND:
        return None  # blocked on storage: loading_dominates has the advice
    return Recommendation(
        "threads-contend",
        f"Chunk threads were blocked {shares[1]:.0%} of their time, neither computing nor queued for a core: "
        "Python-level work (a custom strategy, pandas) holds the GIL against the other threads. "
        "Try --runner processes.",
        {"blocked_share": shares[1], "runner": p.runner},
    )


def machine_contended(p: RunProfile) -> Recommendation | None:
    """Chunks ready to run but queued for a core: the machine was busy with other work (or more threads
    than cores), so timings are slower than this study alone would be."""
    shares = _shares(p)
    if shares is None or shares[0] < QUEUED_SHARE:
        return None
    return Recommendation(
        "machine-busy",
        f"Chunks spent {shares[0]:.0%} of their time queued for a core: the machine was busy with other "
        f"work ({p.cores} cores, {p.workers} workers). Timings and efficiency understate this study; "
        "measure on an idle machine before tuning workers or chunk size.",
        {"queued_share": shares[0], "cores": p.cores, "workers": p.workers},
    )


def cache_missing(p: RunProfile) -> Recommendation | None:
    """A warm run that recomputed most chunks: something in every key changed."""
    if not p.warm or p.cache_hit_rate is None or p.cache_hit_rate >= 0.8:
        return None
    return Recommendation(
        "cache-misses",
        f"The cache held results for this study but only {p.cache_hit_rate:.0%} of the chunks were served "
        "from it: the data, the configuration or the core's code changed for the others (a chunk's key is "
        "its data fingerprint, dates, configuration and code version).",
        {"cache_hit_rate": p.cache_hit_rate},
    )


RULES: tuple[Callable[[RunProfile], Recommendation | None], ...] = (
    memory_pressure,
    one_chunk_dominates,
    chunk_size_off,
    loading_dominates,
    more_workers,
    fewer_workers,
    threads_waiting,
    machine_contended,
    orchestration_heavy,
    cache_missing,
)


def recommend(profile: RunProfile, bars_per_symbol: float | None = None) -> list[Recommendation]:
    """Every rule's advice for this run, most urgent first. ``bars_per_symbol`` (the study's bars over its
    symbols) lets the chunk-size rule apply the chooser's size limit too."""
    advice = []
    for rule in RULES:
        r = chunk_size_off(profile, bars_per_symbol) if rule is chunk_size_off else rule(profile)
        if r is not None:
            advice.append(r)
    return advice
