"""Each recommendation rule fires on figures that call for it, with the right numbers, and stays quiet
otherwise."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from backtest.engine.planning import TASK_OVERHEAD_SECONDS, choose_chunk_size, work_per_symbol
from backtest.observe.profiling import BlockFigures, ChunkFigures, RunProfile
from backtest.observe.recommendations import (
    CHUNK_SIZE_TOLERANCE,
    cache_missing,
    chunk_size_off,
    fewer_workers,
    loading_dominates,
    machine_contended,
    memory_pressure,
    more_workers,
    one_chunk_dominates,
    orchestration_heavy,
    recommend,
    threads_waiting,
)
from tests.monitor.test_alerts import run_spans

GIB = 2**30


def chunks(walls: list[float], symbols: int = 50, start: float = 0.0) -> tuple[ChunkFigures, ...]:
    """Chunks started one after the other at 1 s intervals, each computed in ``wall`` seconds."""
    return tuple(
        ChunkFigures(f"chunk-{i:04d}", symbols, "computed", wall=w, cpu=0.95 * w, end=start + i + w)
        for i, w in enumerate(walls)
    )


def profile(**kw) -> RunProfile:
    """A healthy run: 40 chunks of 50 symbols, 2 s each, CPU-bound on 2 of 2 cores, little overhead."""
    base = dict(
        wall=45.0,
        workers=2,
        cores=2,
        runner="threads",
        chunk_size=50,
        chunks=chunks([2.0] * 40),
        phases=(
            BlockFigures("load", 2.0, 3.8, 2.0, GIB),
            BlockFigures("simulate", 36.0, 70.0, 2.0, GIB),
            BlockFigures("select", 1.0, 1.9, 2.0, GIB),
            BlockFigures("persist", 1.0, 1.9, 2.0, GIB),
        ),
        steps=(BlockFigures("plan", 0.5, 0.5, 1.0, GIB), BlockFigures("backtest", 41.0, 78.0, 2.0, GIB)),
        peak_rss=GIB,
        peak_root_rss=GIB,
        machine_memory=16 * GIB,
        parallel_efficiency=0.95,
        cache_hit_rate=0.0,
        warm=False,
        load_imbalance=1.0,
        orchestration_overhead=2.0,
        per_task_overhead=0.05,
        busy_seconds=43.0,
        bottleneck={"where": "chunks", "phase": "simulate", "classification": "cpu-bound"},
    )
    base.update(kw)
    return RunProfile(**base)


def test_a_healthy_run_gets_no_advice():
    assert recommend(profile()) == []


def scheduled(sizes: list[int], per_symbol: float, workers: int, start_up: float = 8.0) -> tuple:
    """Chunks of ``sizes`` symbols run on ``workers`` fresh workers (run_spans), ``per_symbol`` s each."""
    spans = run_spans([n * per_symbol for n in sizes], workers, start_up)
    return tuple(
        ChunkFigures(name, n, "computed", wall=end - start, cpu=0.95 * (end - start), end=end)
        for (name, (start, end)), n in zip(spans.items(), sizes, strict=True)
    )


def split(n: int, size: int) -> list[int]:
    return [min(size, n - i) for i in range(0, n, size)]


def test_the_demo_run_is_advised_the_size_the_chooser_now_picks():
    """500 symbols x 20 years, 100 combinations, 2 workers in chunks of 51: 0.18 s of work per 0.2 s task."""
    p = profile(chunks=scheduled(split(500, 51), 0.18 / 51, 2), chunk_size=51)
    r = chunk_size_off(p)
    assert r is not None and r.rule == "chunk-size" and r.figures["suggested_chunk_size"] == 250
    assert (
        "--chunk-size 250 (now 51)" in r.advice
        and f"{TASK_OVERHEAD_SECONDS:.2f} s of orchestration" in r.advice
    )
    assert r.figures["suggested_chunk_size"] == choose_chunk_size(500, 4_900, 100, 2, memory_bytes=16 * GIB)
    assert [x.rule for x in recommend(p)].count("chunk-size") == 1
    # the start-up chunks' 8 s are not taken for work: without them the same advice
    quick = chunk_size_off(replace(p, chunks=scheduled(split(500, 51), 0.18 / 51, 2, 0.0)))
    assert (
        quick is not None and abs(quick.figures["work_per_symbol_s"] - r.figures["work_per_symbol_s"]) < 1e-12
    )
    # a run of chunks that all started up on fresh workers says nothing about the work: no advice
    assert chunk_size_off(profile(chunks=scheduled([250, 250], 0.18 / 51, 2), chunk_size=250)) is None


def test_too_big_chunks_for_balance_and_a_near_miss_or_small_saving_is_no_advice():
    p = profile(chunks=scheduled(split(4_000, 1_000), 0.05, 2), chunk_size=1_000)  # 4 chunks of 50 s
    r = chunk_size_off(p)
    assert r is not None and r.figures["suggested_chunk_size"] == 500 and "leave workers idle" in r.advice
    assert chunk_size_off(profile(chunks=scheduled(split(4_000, 500), 0.05, 2), chunk_size=500)) is None
    near = profile(chunks=scheduled(split(4_000, 400), 0.05, 2), chunk_size=400)  # 10 chunks, not 8
    assert chunk_size_off(near) is None
    # 40 chunks of 2 s where 8 would do: 3.2 s of orchestration saved on 80 s of work is not worth it
    assert chunk_size_off(profile()) is None


def test_chunks_grow_only_as_far_as_the_choosers_size_limit():
    # 40 chunks of 100 symbols, 0.2 s of work each: the task cost is half the work
    p = profile(chunks=scheduled(split(4_000, 100), 0.002, 2), chunk_size=100)
    free = chunk_size_off(p)  # bars unknown: no limit, 4 chunks per worker of 1 s each
    assert free is not None and free.figures["suggested_chunk_size"] == 500
    limited = chunk_size_off(p, bars_per_symbol=5_040.0)  # 20 years: the chunk limit is 257
    assert limited is not None and limited.figures["reason"] == "size-limit"
    big = chunk_size_off(profile(chunks=scheduled(split(4_000, 500), 0.002, 2), chunk_size=500), 5_040.0)
    assert big is not None and big.figures["suggested_chunk_size"] == 250 and "chunk limit" in big.advice
    assert limited.figures["suggested_chunk_size"] == 250 == choose_chunk_size(4_000, 5_040, 2, 2)
    assert [r.figures for r in recommend(p, 5_040.0) if r.rule == "chunk-size"] == [limited.figures]


@given(
    n=st.integers(100, 8_000),
    bars=st.integers(500, 10_000),
    combos=st.integers(1, 400),
    workers=st.integers(1, 4),
    off=st.floats(1 / 1.45, 1.45),
    bars_off=st.floats(0.9, 1.1),
)
@settings(max_examples=60, deadline=None)
def test_a_default_run_is_never_advised_another_size(n, bars, combos, workers, off, bars_off):
    """Whatever the workload, a run at the chooser's size whose measured work per symbol is within the
    tolerance of the chooser's estimate gets no chunk-size advice (the study's bars per symbol differ a little
    from the chooser's estimate from the dates, as with symbols listed late)."""
    size = choose_chunk_size(n, bars, combos, workers)
    per_symbol = work_per_symbol(bars, combos) * off
    p = profile(chunks=scheduled(split(n, size), per_symbol, workers), chunk_size=size, workers=workers)
    assert CHUNK_SIZE_TOLERANCE > 1.45
    assert chunk_size_off(p, bars_per_symbol=bars * bars_off) is None


def test_more_workers_when_cpu_bound_with_idle_cores_and_memory():
    p = profile(workers=2, cores=8, peak_rss=2 * GIB, machine_memory=8 * GIB)
    r = more_workers(p)
    # 1 GiB per worker, 80 % of 8 GiB minus 2 GiB used leaves 4.4 GiB: 4 more workers
    assert r is not None and r.figures["suggested_workers"] == 6
    assert more_workers(replace(p, peak_rss=6 * GIB)) is None  # no memory to spare
    waiting = replace(p, bottleneck={"where": "chunks", "classification": "waiting"})
    assert more_workers(waiting) is None


def test_fewer_workers_than_cores_and_memory_pressure():
    assert fewer_workers(profile(workers=8, cores=2)).figures["suggested_workers"] == 2
    assert fewer_workers(profile()) is None
    r = memory_pressure(profile(peak_rss=14 * GIB, machine_memory=16 * GIB))
    assert r is not None and r.figures["suggested_chunk_size"] == 25 and "88%" in r.advice
    assert memory_pressure(profile(peak_rss=12 * GIB, machine_memory=16 * GIB)) is None


def test_loading_dominates():
    phases = (
        BlockFigures("load", 20.0, 2.0, 2.0, GIB, io_bytes=10 * GIB),
        BlockFigures("simulate", 20.0, 38.0, 2.0, GIB),
    )
    r = loading_dominates(profile(phases=phases))
    assert r is not None and r.figures["load_share"] == 0.5 and r.figures["classification"] == "io-bound"
    assert "local disk" in r.advice
    assert r.figures["load_seconds"] == 40  # the load phase (fetching included) over both workers
    light = (BlockFigures("load", 1.0, 0.9, 2.0, GIB), phases[1])
    assert loading_dominates(profile(phases=light)) is None
    # a warm run computes nothing: its quick cache lookups are not "loading"
    warm = tuple(replace(c, status="cached", wall=0.0, cpu=0.0) for c in chunks([2.0] * 40))
    assert loading_dominates(profile(phases=phases, chunks=warm)) is None


def test_one_slow_chunk_is_split_unless_it_was_start_up():
    walls = [1.0] * 10
    walls[6] = 6.0
    p = profile(chunks=chunks(walls), load_imbalance=6.0)
    r = one_chunk_dominates(p)
    assert r is not None and r.rule == "split-slow-chunk" and r.figures["chunk"] == "chunk-0006"
    assert r.figures["suggested_chunk_size"] == 9  # 50 symbols in 6 parts of about the median's work
    walls[6], walls[0] = 1.0, 6.0
    r = one_chunk_dominates(replace(p, chunks=chunks(walls)))
    assert r is not None and r.rule == "start-up-chunk" and "--chunk-size" not in r.advice
    assert one_chunk_dominates(replace(p, load_imbalance=1.5)) is None


def test_orchestration_threads_and_cache():
    r = orchestration_heavy(profile(orchestration_overhead=15.0))
    assert r is not None and abs(r.figures["share"] - 15 / 45) < 1e-12
    blocked = tuple(replace(c, cpu=0.3 * c.wall) for c in chunks([2.0] * 40))  # 70 % neither CPU nor queued
    r = threads_waiting(profile(chunks=blocked))
    assert r is not None and abs(r.figures["blocked_share"] - 0.7) < 1e-9 and "--runner processes" in r.advice
    assert threads_waiting(profile(chunks=blocked, runner="processes")) is None
    # the README's demo on a fresh machine: two chunks started together, one blocked while the other compiled
    # the kernels (numba, once per process): start-up, which processes would pay each, not the GIL
    demo = (
        ChunkFigures(
            "chunk-0000", 250, "computed", wall=10.3, cpu=1.5, cpu_wait=0.1, end=10.3
        ),  # 8.7 s blocked
        ChunkFigures("chunk-0001", 250, "computed", wall=10.3, cpu=9.1, cpu_wait=0.1, end=10.3),
    )
    assert threads_waiting(profile(chunks=demo)) is None
    later = tuple(replace(c, end=c.end + 10.3) for c in blocked[2:])
    assert threads_waiting(profile(chunks=demo + later)) is not None  # the chunks after them are judged
    # queued for a core is not blocked: a busy machine, not the GIL
    queued = tuple(replace(c, cpu=0.4 * c.wall, cpu_wait=0.55 * c.wall) for c in chunks([2.0] * 40))
    assert threads_waiting(profile(chunks=queued)) is None
    r = machine_contended(profile(chunks=queued))
    assert r is not None and abs(r.figures["queued_share"] - 0.55) < 1e-9
    assert machine_contended(profile()) is None
    assert cache_missing(profile(warm=True, cache_hit_rate=0.5)) is not None
    assert cache_missing(profile(warm=False, cache_hit_rate=0.0)) is None
