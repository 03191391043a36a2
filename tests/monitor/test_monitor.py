"""The resource monitor sees the whole process tree, keeps a usable series, and costs little."""

from __future__ import annotations

import subprocess
import sys
import time

import pandas as pd
import psutil
import pytest

from backtest.observe.monitor import (
    ResourceMonitor,
    atomic_path,
    cpu_seconds_between,
    io_bytes_between,
    peak_between,
    read_samples,
    write_samples,
)

CHILD = """
import sys, time
block = bytearray(200 * 2**20)
block[:: 4096] = b"x" * len(block[:: 4096])  # touch every page: resident, not just reserved
sys.stdout.write("ready\\n"); sys.stdout.flush()
time.sleep(float(sys.argv[1]))
"""


def test_monitor_sees_a_child_process_memory():
    monitor = ResourceMonitor(interval=0.1)
    with monitor:
        before = monitor.sample()
        child = subprocess.Popen([sys.executable, "-c", CHILD, "1.0"], stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        during = monitor.sample()
        child_rss = psutil.Process(child.pid).memory_info().rss
        child.wait(timeout=30)
        time.sleep(0.2)
    after = monitor.samples[-1]
    # (other children of the test process, such as a test server, count in both samples)
    assert during.processes >= 2
    assert child_rss > 200 * 2**20
    # the tree's RSS rose by the child's (give or take this process's own small changes)
    assert abs((during.tree_rss - before.tree_rss) - child_rss) < 0.1 * child_rss
    assert monitor.peak_tree_rss >= before.tree_rss + 0.95 * child_rss
    # the child has ended: its memory no longer counts, but its CPU time stays in the cumulative figure
    assert after.tree_rss < during.tree_rss - 0.9 * child_rss
    assert after.tree_cpu_seconds >= during.tree_cpu_seconds


def test_series_helpers_and_round_trip(tmp_path):
    monitor = ResourceMonitor(interval=0.05)
    with monitor:
        t0, c0 = time.time(), time.process_time()
        while time.process_time() - c0 < 0.4:  # burn CPU (wall time varies on a busy machine)
            sum(i * i for i in range(1000))
        t1, own = time.time(), time.process_time() - c0
        time.sleep(0.1)
    path = write_samples(monitor.samples, tmp_path / "resources.parquet")
    frame = read_samples(path)
    # at least the first, one periodic and the last sample (a sample of a large process tree takes a while)
    assert len(frame) >= 3 and {"tree_rss", "tree_cpu_percent", "cpu_core_0", "open_fds"} <= set(
        frame.columns
    )
    assert frame["time"].is_monotonic_increasing
    busy = cpu_seconds_between(frame, t0, t1)
    # the monitor's figure (interpolated between samples 50 ms apart) agrees with our own process clock
    assert busy is not None and abs(busy - own) < 0.1 + 0.2 * own
    assert (
        peak_between(frame, t0, t1)
        == frame.loc[frame["time"].between(t0 - 0.06, t1 + 0.06), "tree_rss"].max()
    )
    assert io_bytes_between(frame, t0, t1) is not None
    assert cpu_seconds_between(frame, t1 + 100, t1 + 200) is None
    assert cpu_seconds_between(pd.DataFrame(), t0, t1) is None


def test_sampling_costs_under_one_percent_at_the_default_interval():
    # a tree like a run's: a process and a few children. A tree of its own, not this process's: in the whole
    # test session this process has other children (servers, workers) that a sample would read too.
    spawn = "import subprocess, sys, time; kids = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']) for _ in range(3)]; time.sleep(30)"
    parent = subprocess.Popen([sys.executable, "-c", spawn])
    try:
        deadline = time.monotonic() + 30
        while len(psutil.Process(parent.pid).children()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        monitor = ResourceMonitor(interval=1.0, pid=parent.pid)
        monitor.sample()
        n = 30
        for _ in range(n):
            monitor.sample()
        per_sample = monitor.self_cpu_seconds / (n + 1)
    finally:
        for child in psutil.Process(parent.pid).children(recursive=True):
            child.kill()
        parent.kill()
        parent.wait()
    # CPU per second of run at one sample a second
    assert per_sample / monitor.interval < 0.01, f"{per_sample * 1000:.1f} ms per sample"


def test_atomic_writes_leave_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "out" / "resources.parquet"
    with pytest.raises(OSError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half a file")
        raise OSError(28, "No space left on device")
    assert list((tmp_path / "out").iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"whole")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["resources.parquet"]
