"""Resource monitor: a background thread sampling the whole process tree of a run with psutil.

A study runs in several processes (the flow, process-pool or Dask workers, the ephemeral Prefect server), so
memory and CPU are only meaningful summed over the tree: the root process and all its descendants,
re-discovered at every sample because workers come and go. CPU time is kept per process and summed over every
process ever seen, so the tree's cumulative CPU never goes backwards when a worker exits.

The sampler times itself (its own thread CPU time), so a run can state the monitor's overhead instead of
assuming it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

from backtest.atomic import atomic_path

#: per-core CPU columns are stored as cpu_core_0, cpu_core_1, ...
CORE_PREFIX = "cpu_core_"


@dataclass(frozen=True)
class Sample:
    """One observation of the machine and of the run's process tree.

    ``tree_cpu_seconds`` is cumulative (user + system of every process of the tree ever seen), and so is
    ``tree_cpu_wait_seconds`` (time its threads were ready to run but queued for a core, from Linux's
    per-thread ``schedstat``; 0 elsewhere); the CPU
    percentages are over the interval since the previous sample (100 = one core busy).
    """

    time: float  # epoch seconds
    elapsed: float  # seconds since the monitor started
    processes: int
    tree_rss: int  # bytes, summed over the tree
    root_rss: int  # bytes, the root process alone
    tree_cpu_seconds: float
    tree_cpu_wait_seconds: float
    tree_cpu_percent: float
    machine_cpu_percent: float  # mean over cores
    cpu_per_core: tuple[float, ...]
    machine_memory_percent: float
    machine_available: int  # bytes
    tree_read_bytes: int  # cumulative storage I/O of the live tree
    tree_write_bytes: int
    tree_read_chars: int  # cumulative read()/write() bytes, page cache included
    tree_write_chars: int
    net_sent: int  # machine-wide, cumulative
    net_recv: int
    open_fds: int  # file descriptors of the tree (files, sockets, pipes)

    def row(self) -> dict[str, float | int]:
        data = asdict(self)
        cores = data.pop("cpu_per_core")
        data.update({f"{CORE_PREFIX}{i}": v for i, v in enumerate(cores)})
        return data


SampleListener = Callable[[Sample], None]


class _TreeState:
    """Per-process bookkeeping kept between samples (psutil objects cache their own CPU baselines)."""

    def __init__(self, root: psutil.Process) -> None:
        self.root = root
        self.procs: dict[int, psutil.Process] = {root.pid: root}
        self.cpu_by_pid: dict[tuple[int, float], float] = {}
        self.wait_by_thread: dict[tuple[int, float, int], float] = {}

    def live(self) -> list[psutil.Process]:
        try:
            children = self.root.children(recursive=True)
        except psutil.Error:
            children = []
        current: dict[int, psutil.Process] = {self.root.pid: self.root}
        for child in children:
            # keep the known object (same pid and start time) so per-process state carries over
            known = self.procs.get(child.pid)
            current[child.pid] = known if known is not None and known == child else child
        self.procs = current
        return list(current.values())


class ResourceMonitor:
    """Samples a process tree every ``interval`` seconds on a daemon thread; use as a context manager.

    ``listener`` (if given) is called from the monitor thread with every new sample: alert rules hang there.
    A listener that raises is reported once on stderr by the thread machinery and sampling stops, so
    listeners catch their own errors.
    """

    def __init__(
        self,
        interval: float = 1.0,
        pid: int | None = None,
        listener: SampleListener | None = None,
        max_samples: int = 100_000,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"monitor interval must be positive, got {interval}")
        self.interval = interval
        self.listener = listener
        self.max_samples = max_samples
        self._tree = _TreeState(psutil.Process(pid or os.getpid()))
        self._samples: list[Sample] = []
        self._lock = threading.Lock()
        self._sampling = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_time = 0.0
        self._last: tuple[float, float] | None = None  # (monotonic, tree cpu seconds) of the previous sample
        self._self_cpu = 0.0
        self._peak_tree_rss = 0
        self._peak_root_rss = 0
        self._cores = psutil.cpu_count() or 1

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> ResourceMonitor:
        if self._thread is not None:
            raise RuntimeError("the monitor is already running")
        self._start_time = time.time()
        psutil.cpu_percent(percpu=True)  # baseline: the first real sample covers the first interval
        self.sample()
        self._thread = threading.Thread(target=self._run, name="resource-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and take a last sample, so the series covers the whole run."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=10 * self.interval + 5)
        self._thread = None
        self.sample()

    def __enter__(self) -> ResourceMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            sample = self.sample()
            if self.listener is not None:
                self.listener(sample)

    # -- sampling ----------------------------------------------------------------------------------------
    def sample(self) -> Sample:
        """Observe the tree now and append the sample (also callable directly, e.g. at phase boundaries)."""
        with self._sampling:  # the thread and a direct call never interleave their per-process bookkeeping
            return self._sample()

    def _sample(self) -> Sample:
        cpu0 = time.thread_time()
        now, mono = time.time(), time.monotonic()
        procs = self._tree.live()
        rss = read_b = write_b = read_c = write_c = fds = 0
        root_rss = 0
        seen = 0
        for proc in procs:
            try:
                with proc.oneshot():
                    mem = proc.memory_info().rss
                    cpu = proc.cpu_times()
                    key = (proc.pid, proc.create_time())
                    self._tree.cpu_by_pid[key] = cpu.user + cpu.system
                    for tid, delay in _thread_run_delays(proc.pid):
                        self._tree.wait_by_thread[(*key, tid)] = delay
                    try:
                        io = proc.io_counters()
                        read_b, write_b = read_b + io.read_bytes, write_b + io.write_bytes
                        read_c += getattr(io, "read_chars", io.read_bytes)
                        write_c += getattr(io, "write_chars", io.write_bytes)
                    except (psutil.AccessDenied, AttributeError):
                        pass
                    with contextlib.suppress(psutil.AccessDenied, AttributeError):
                        fds += proc.num_fds()
            except psutil.Error:
                continue  # the process ended between discovery and reading: its last CPU time is kept
            rss += mem
            seen += 1
            if proc.pid == self._tree.root.pid:
                root_rss = mem
        tree_cpu = sum(self._tree.cpu_by_pid.values())
        tree_wait = sum(self._tree.wait_by_thread.values())
        if self._last is None:
            tree_pct = 0.0
        else:
            dt = max(mono - self._last[0], 1e-9)
            tree_pct = 100.0 * max(tree_cpu - self._last[1], 0.0) / dt
        self._last = (mono, tree_cpu)
        per_core = tuple(psutil.cpu_percent(percpu=True))
        vm = psutil.virtual_memory()
        try:
            net = psutil.net_io_counters()
            sent, recv = net.bytes_sent, net.bytes_recv
        except (OSError, AttributeError):
            sent = recv = 0
        sample = Sample(
            time=now,
            elapsed=now - self._start_time,
            processes=seen,
            tree_rss=rss,
            root_rss=root_rss,
            tree_cpu_seconds=tree_cpu,
            tree_cpu_wait_seconds=tree_wait,
            tree_cpu_percent=tree_pct,
            machine_cpu_percent=sum(per_core) / max(len(per_core), 1),
            cpu_per_core=per_core,
            machine_memory_percent=vm.percent,
            machine_available=vm.available,
            tree_read_bytes=read_b,
            tree_write_bytes=write_b,
            tree_read_chars=read_c,
            tree_write_chars=write_c,
            net_sent=sent,
            net_recv=recv,
            open_fds=fds,
        )
        with self._lock:
            if len(self._samples) < self.max_samples:
                self._samples.append(sample)
            self._peak_tree_rss = max(self._peak_tree_rss, rss)
            self._peak_root_rss = max(self._peak_root_rss, root_rss)
            self._self_cpu += time.thread_time() - cpu0
        return sample

    # -- results -----------------------------------------------------------------------------------------
    @property
    def samples(self) -> list[Sample]:
        with self._lock:
            return list(self._samples)

    @property
    def peak_tree_rss(self) -> int:
        return self._peak_tree_rss

    @property
    def peak_root_rss(self) -> int:
        return self._peak_root_rss

    @property
    def cores(self) -> int:
        return self._cores

    @property
    def self_cpu_seconds(self) -> float:
        """CPU the sampling itself has cost (thread time of every ``sample`` call)."""
        return self._self_cpu

    def overhead_fraction(self) -> float:
        """The monitor's CPU as a fraction of the wall time it has been running (one core's worth)."""
        elapsed = time.time() - self._start_time if self._start_time else 0.0
        return self._self_cpu / elapsed if elapsed > 0 else 0.0

    def frame(self) -> pd.DataFrame:
        return samples_frame(self.samples)


def _thread_run_delays(pid: int) -> list[tuple[int, float]]:
    """(thread id, seconds queued for a core) of every thread of a process, from /proc (Linux only)."""
    base = f"/proc/{pid}/task"
    out = []
    try:
        tids = os.listdir(base)
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"{base}/{tid}/schedstat") as f:
                out.append((int(tid), int(f.read().split()[1]) / 1e9))
        except (OSError, ValueError, IndexError):
            continue  # the thread ended
    return out


def cpu_wait_between(frame: pd.DataFrame, start: float, end: float) -> float | None:
    """Seconds the tree's threads queued for a core between two epoch times (as ``cpu_seconds_between``)."""
    if "tree_cpu_wait_seconds" not in frame:
        return None
    return _delta_between(frame, "tree_cpu_wait_seconds", start, end)


def samples_frame(samples: Sequence[Sample]) -> pd.DataFrame:
    """The time series as a table (one row per sample, per-core CPU as columns)."""
    if not samples:
        names = [f.name for f in fields(Sample) if f.name != "cpu_per_core"]
        return pd.DataFrame(columns=names)
    return pd.DataFrame([s.row() for s in samples])


def write_samples(samples: Sequence[Sample], path: Path) -> Path:
    """Write the series as Parquet atomically (a reader never sees half a file)."""
    with atomic_path(path) as tmp:
        samples_frame(samples).to_parquet(tmp, index=False)
    return path


def read_samples(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)


def cpu_seconds_between(frame: pd.DataFrame, start: float, end: float) -> float | None:
    """Tree CPU seconds spent between two epoch times, interpolated from the cumulative counter (an interval
    reaching past either end of the series is cut to it).

    None when the interval lies entirely outside the series, or there are no samples.
    """
    return _delta_between(frame, "tree_cpu_seconds", start, end)


def io_bytes_between(frame: pd.DataFrame, start: float, end: float) -> float | None:
    """Storage bytes read and written by the tree between two epoch times (as ``cpu_seconds_between``)."""
    if frame.empty:
        return None
    total = frame["tree_read_bytes"] + frame["tree_write_bytes"]
    return _delta_between(frame.assign(_io=total), "_io", start, end)


def _delta_between(frame: pd.DataFrame, column: str, start: float, end: float) -> float | None:
    if frame.empty or end < start:
        return None
    t = frame["time"].to_numpy(dtype=float)
    c = frame[column].to_numpy(dtype=float)
    if end < t[0] or start > t[-1]:
        return None
    return float(max(np.interp(end, t, c) - np.interp(start, t, c), 0.0))


def peak_between(frame: pd.DataFrame, start: float, end: float, column: str = "tree_rss") -> int | None:
    """Largest sampled value of ``column`` within [start, end], widened to the nearest samples around it
    (a short interval may hold no sample at all)."""
    if frame.empty:
        return None
    t = frame["time"].to_numpy(dtype=float)
    lo = max(int(np.searchsorted(t, start, side="right")) - 1, 0)
    hi = min(int(np.searchsorted(t, end, side="left")), len(t) - 1)
    if hi < lo:
        return None
    return int(frame[column].iloc[lo : hi + 1].max())
