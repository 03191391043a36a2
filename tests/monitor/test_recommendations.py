"""Each recommendation rule fires on figures that call for it, with the right numbers, and stays quiet
otherwise."""

from __future__ import annotations

from dataclasses import replace

from backtest.profiling import BlockFigures, ChunkFigures, RunProfile
from backtest.recommendations import (
    cache_missing,
    chunks_too_small,
    fewer_workers,
    loading_dominates,
    machine_contended,
    memory_pressure,
    more_workers,
    one_chunk_dominates,
    orchestration_heavy,
    recommend,
    threads_waiting,
    too_few_chunks,
)

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


def test_chunks_too_small_suggests_a_size_that_amortises_the_overhead():
    p = profile(chunks=chunks([0.2] * 40), per_task_overhead=0.1, chunk_size=50)
    r = chunks_too_small(p)
    # work should be 20x the 0.1 s overhead: 2 s, i.e. 10x the 0.2 s chunks -> 500 symbols
    assert r is not None and r.figures["suggested_chunk_size"] == 500 and "--chunk-size 500" in r.advice
    # never fewer chunks than workers: 40 x 50 symbols on 2 workers caps at 1,000
    assert chunks_too_small(replace(p, per_task_overhead=1.0)).figures["suggested_chunk_size"] == 1000
    assert chunks_too_small(replace(p, per_task_overhead=0.01)) is None  # 5 % of the work


def test_too_few_chunks_for_the_workers():
    p = profile(chunks=chunks([20.0, 20.0, 20.0], symbols=600), chunk_size=600, parallel_efficiency=0.5)
    r = too_few_chunks(p)
    assert r is not None and r.figures["suggested_chunk_size"] == 225  # 1,800 symbols / (4 x 2 workers)
    assert too_few_chunks(replace(p, parallel_efficiency=0.9)) is None


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
    # the load tasks' time (fetch: no CPU figure) counts as loading too
    fetching = (
        BlockFigures("fetch", 15.0, None, 2.0, GIB),
        BlockFigures("load", 1.0, 1.9, 2.0, GIB),
        BlockFigures("simulate", 20.0, 38.0, 2.0, GIB),
    )
    r = loading_dominates(profile(phases=fetching))
    assert (
        r is not None and abs(r.figures["load_share"] - 16 / 36) < 1e-12 and r.figures["load_seconds"] == 32
    )
    assert loading_dominates(profile(phases=fetching[1:])) is None
    warm = tuple(replace(c, status="cached", wall=0.0, cpu=0.0) for c in chunks([2.0] * 40))
    assert loading_dominates(profile(phases=fetching[:1], chunks=warm)) is None


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
    # queued for a core is not blocked: a busy machine, not the GIL
    queued = tuple(replace(c, cpu=0.4 * c.wall, cpu_wait=0.55 * c.wall) for c in chunks([2.0] * 40))
    assert threads_waiting(profile(chunks=queued)) is None
    r = machine_contended(profile(chunks=queued))
    assert r is not None and abs(r.figures["queued_share"] - 0.55) < 1e-9
    assert machine_contended(profile()) is None
    assert cache_missing(profile(warm=True, cache_hit_rate=0.5)) is not None
    assert cache_missing(profile(warm=False, cache_hit_rate=0.0)) is None
