"""The profiler classifies work by what it measured, and the run analysis follows its definitions."""

from __future__ import annotations

import threading
import time

import pandas as pd
import pytest

from backtest.config import FoldSpec, ParamGrid, StudyConfig
from backtest.engine.study import StudyPlan, date_range, run_chunk
from backtest.observe.profiling import (
    CPU_BOUND,
    IO_BOUND,
    WAITING,
    ChunkFigures,
    Measured,
    add_task_figures,
    analyse,
    chunk_figures,
    classify,
    measure,
    read_chunk_timings,
    wall_timings,
)
from backtest.results.chunkio import chunk_to_bytes
from backtest.results.outputs import chunk_row
from tests.panels import random_panel


def burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        sum(i * i for i in range(500))


def run_in_thread(work) -> Measured:
    """Measure ``work`` in a worker thread, as a chunk task runs on the thread runner."""
    box: list[Measured] = []

    def target() -> None:
        with measure() as m:
            work()
        box.append(m)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    return box[0]


def test_synthetic_cpu_bound_and_sleep_bound_tasks_are_classified():
    cpu = run_in_thread(lambda: burn(0.3))
    assert cpu.cpu >= 0.29 and cpu.classification == CPU_BOUND
    sleepy = run_in_thread(lambda: time.sleep(0.3))
    assert sleepy.wall >= 0.3 and sleepy.cpu < 0.05
    assert sleepy.io_wait > 0.25 and sleepy.classification == WAITING
    # on the main thread (a process worker) the process clock is used: same answer
    with measure() as main:
        burn(0.2)
    assert main.classification == CPU_BOUND


def test_classification_rules_on_constructed_figures():
    assert classify(10.0, 7.0) == CPU_BOUND
    assert classify(10.0, 2.0, io_bytes=0) == WAITING
    assert classify(10.0, 2.0, io_bytes=500 * 2**20) == IO_BOUND  # 500 MiB in 8 s of non-CPU time
    assert classify(10.0, 2.0, io_bytes=10 * 2**20) == WAITING  # 1.25 MiB/s is not I/O-bound
    # two workers: 12 CPU seconds in 10 s of wall time is 60 % of what the two could do
    assert classify(10.0, 12.0, parallelism=2) == CPU_BOUND
    assert classify(10.0, 9.0, parallelism=2) == WAITING
    assert classify(0.0, 0.0) == WAITING


def test_task_figures_persist_with_the_chunk_and_stay_out_of_wall_time(tmp_path):
    panel = random_panel(n_symbols=6, n_bars=1300, seed=3)
    config = StudyConfig(
        grid=ParamGrid.from_mapping({"fast": [5, 10], "slow": [40, 60]}),
        folds=FoldSpec(train_years=2, validate_years=1, test_years=1),
    )
    plan = StudyPlan.create(config, *date_range(panel))
    with measure() as total:
        with measure() as load:
            pass
        result = run_chunk(panel, plan)
    add_task_figures(result.timings, load, total, attempt=2, fetched=False)
    path = tmp_path / "chunk.parquet"
    path.write_bytes(chunk_to_bytes(result))
    timings = read_chunk_timings(path)
    assert timings["attempts"] == 2 and timings["cpu"] == pytest.approx(total.cpu)
    walls = wall_timings(timings)
    assert set(walls) == {"optimise", "select", "test", "collect"}
    assert chunk_row("chunk-0000", result)["compute_seconds"] == pytest.approx(sum(walls.values()), abs=1e-3)
    fig = chunk_figures("chunk-0000", 6, "computed", timings, end=time.time())
    assert fig.attempts == 2 and fig.wall == pytest.approx(sum(walls.values()))
    assert fig.phases["simulate"] == pytest.approx(walls["optimise"] + walls["test"])
    cached = chunk_figures("chunk-0000", 6, "cached", timings, end=time.time())
    assert cached.wall == 0.0 and cached.original_wall == pytest.approx(fig.wall)
    assert fig.fetch is None  # read from the price cache: nothing fetched
    fetching = {**timings, "fetch": 0.25, "fetched": 1.0}  # prices fetched from the source first
    fetched = chunk_figures("chunk-0000", 6, "computed", fetching, end=time.time())
    assert fetched.fetch == pytest.approx(0.25) and fetched.row()["fetch_s"] == pytest.approx(0.25)
    assert fetched.phases["load"] == pytest.approx(0.25 + walls.get("load", 0.0))
    assert fetched.wall == pytest.approx(fig.wall + 0.25)


def chunk(name: str, wall: float, cpu: float, end: float, status: str = "computed") -> ChunkFigures:
    return ChunkFigures(
        chunk=name,
        symbols=10,
        status=status,
        wall=wall if status == "computed" else 0.0,
        cpu=cpu if status == "computed" else 0.0,
        phases={"load": 0.1 * wall, "simulate": 0.8 * wall, "select": 0.05 * wall, "persist": 0.05 * wall},
        load_cpu=0.05 * wall,
        end=end,
    )


def test_run_analysis_on_constructed_figures():
    t0 = 1_000_000.0
    # flow: plan 1 s, backtest 10 s (2 workers), collect 2 s; wall 14 s (1 s outside any step)
    steps = {"plan": 1.0, "backtest": 10.0, "collect": 2.0}
    chunks = [
        chunk("c0", 4.0, 3.8, t0 + 1 + 4.5),  # runs 1.5 .. 5.5 s
        chunk("c1", 4.0, 3.9, t0 + 1 + 5.0),  # 2.0 .. 6.0
        chunk("c2", 5.0, 4.8, t0 + 1 + 10.0),  # 6.0 .. 11.0
        chunk("c3", 0.0, 0.0, t0 + 1 + 0.5, status="cached"),
    ]
    samples = pd.DataFrame(
        {
            "time": [t0 + s for s in range(0, 15)],
            "tree_rss": [100 + 10 * s for s in range(15)],
            "root_rss": [90] * 15,
            "tree_cpu_seconds": [1.9 * s for s in range(15)],
            "tree_read_bytes": [0] * 15,
            "tree_write_bytes": [0] * 15,
        }
    )
    kwargs = dict(
        chunks=chunks,
        steps=steps,
        flow_start=t0,
        wall=14.0,
        workers=2,
        runner="threads",
        chunk_size=10,
        samples=samples,
        warm=True,
        cores=2,
        machine_memory=8 * 2**30,
    )
    p = analyse(**kwargs)
    assert p.parallel_efficiency == pytest.approx((3.8 + 3.9 + 4.8) / (10.0 * 2))
    assert p.cache_hit_rate == pytest.approx(0.25)
    assert p.load_imbalance == pytest.approx(5.0 / 4.0)
    # busy: plan 1 + collect 2 + union of chunk intervals (1.5..6.0 and 6.0..11.0 = 9.5) = 12.5
    assert p.busy_seconds == pytest.approx(12.5)
    assert p.orchestration_overhead == pytest.approx(1.5)
    assert p.per_task_overhead == pytest.approx((10.0 * 2 - 13.0) / 4)
    assert p.peak_rss == 240
    steps_by_name = {s.name: s for s in p.steps}
    assert steps_by_name["collect"].cpu == pytest.approx(2 * 1.9)
    assert steps_by_name["collect"].classification == CPU_BOUND
    assert steps_by_name["backtest"].peak_rss == 210  # samples from 1 s to 11 s
    phases = {b.name: b for b in p.phases}
    assert phases["simulate"].wall == pytest.approx(0.8 * 13.0 / 2)
    assert p.bottleneck["where"] == "chunks" and p.bottleneck["phase"] == "simulate"
    assert p.bottleneck["classification"] == CPU_BOUND
    assert {b.name for b in p.phases} == {"load", "simulate", "select", "persist"}
    summary = p.summary()
    assert summary["peak_rss_bytes"] == 240 and summary["bottleneck"]["where"] == "chunks"
