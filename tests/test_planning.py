"""The chunk size weighs the per-task cost against the work, keeps memory in budget and gives balance."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from backtest.engine.planning import (
    CHUNK_BYTES_PER_SYMBOL_BAR,
    CHUNKS_PER_WORKER,
    MAX_CHUNK_SYMBOL_BARS,
    MAX_TASK_OVERHEAD_SHARE,
    TASK_OVERHEAD_SECONDS,
    choose_chunk_size,
    plan_chunk_size,
    size_chunks,
    size_limit,
    work_per_symbol,
)

GIB = 2**30


def test_the_demo_gets_few_chunks_worth_their_task_cost():
    """500 symbols x 20 years, 100 combinations, 2 workers: 51 symbols gave 0.18 s of work per 0.2 s task."""
    choice = plan_chunk_size(500, 4_900, 100, 2, memory_bytes=16 * GIB)
    assert choice.size == 250 and choice.chunks == 2 and choice.reason == "one-per-worker"
    assert choose_chunk_size(500, 4_900, 100, 2, memory_bytes=16 * GIB) == 250


def test_the_reference_workload_keeps_chunks_of_250_the_chunk_limit():
    """W: 4,000 symbols x 20 years, 100 combinations, 2 workers: 250, as before (bigger: more memory, no gain)."""
    choice = plan_chunk_size(4_000, 5_040, 100, 2, memory_bytes=16 * GIB)
    assert (choice.size, choice.chunks, choice.reason) == (250, 16, "size-limit")
    assert choice.size * 5_040 <= MAX_CHUNK_SYMBOL_BARS
    assert choose_chunk_size(4_000, 4_868, 100, 2) == 250  # the estimate of bars plan_chunks makes for W
    # a machine with little memory free: a quarter of it is the limit, in whole rounds of 2 chunks
    small = plan_chunk_size(4_000, 5_040, 100, 2, memory_bytes=GIB)
    assert small.reason == "size-limit" and small.chunks % 2 == 0
    assert 2 * small.size * 5_040 * CHUNK_BYTES_PER_SYMBOL_BAR <= GIB / 4
    assert size_limit(5_040, 2, 64 * GIB) == size_limit(5_040, 2, 128 * GIB) == 257  # efficiency caps


def test_enough_work_gives_four_chunks_per_worker_and_little_work_one():
    heavy = size_chunks(4_000, work_seconds=0.05, workers=2)  # 12.5 s of work in each of 8 chunks
    assert (heavy.size, heavy.chunks, heavy.reason) == (500, 8, "balance")
    light = size_chunks(4_000, work_seconds=1e-4, workers=2)  # 0.2 s of work in all
    assert (light.size, light.chunks, light.reason) == (2_000, 2, "one-per-worker")
    # 3 ms a symbol against a 0.2 s task: 500-symbol chunks carry 1.5 s, under 10x their task cost
    middle = size_chunks(4_000, work_seconds=3e-3, workers=2, task_seconds=0.2)
    assert middle.reason == "overhead" and middle.overhead_share <= MAX_TASK_OVERHEAD_SHARE
    assert (middle.size, middle.chunks) == (1_000, 4)  # at least 667 symbols each, in whole rounds of 2


def test_edge_sizes():
    assert choose_chunk_size(0, 5_040, 100, 2) == 1
    assert choose_chunk_size(1, 5_040, 100, 2) == 1
    assert choose_chunk_size(3, 5_040, 100, 2) == 2
    assert choose_chunk_size(10, 5_040, 100, 0) == 10  # no workers given: one


@given(
    n=st.integers(1, 20_000),
    bars=st.integers(1, 12_000),
    combos=st.integers(1, 2_000),
    workers=st.integers(1, 16),
    memory=st.integers(2**26, 2**36),
)
def test_the_rules_hold_for_any_workload(n, bars, combos, workers, memory):
    choice = plan_chunk_size(n, bars, combos, workers, memory)
    assert 1 <= choice.size <= n and choice.chunks == math.ceil(n / choice.size)
    assert choice.size <= math.ceil(n / min(workers, n))  # never more than one worker's share
    if choice.reason != "size-limit":
        assert choice.size <= size_limit(bars, workers, memory)
        # more chunks than one per worker only where each is worth its task cost
        if choice.chunks > workers:
            assert (
                MAX_TASK_OVERHEAD_SHARE * choice.size * work_per_symbol(bars, combos) >= TASK_OVERHEAD_SECONDS
            )
        assert choice.chunks <= max(CHUNKS_PER_WORKER * workers, workers)
    else:
        assert choice.size <= size_limit(bars, workers, memory)
