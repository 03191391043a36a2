"""Measuring instruments of the benchmarks: the synthetic store, the machine, peak memory, results files.

- ``ensure_store`` makes (or reuses, when already complete) a synthetic universe of N symbols x Y years
  ingested into a Parquet store under a data folder (``benchmarks/.data/`` by default, gitignored), keyed by
  N, Y and the seed, and says how long generating and ingesting took (now, or when it was built).
- ``describe_machine`` says what the numbers were measured on (cores, memory, load, library versions).
- ``RssSampler`` records the peak resident memory of this process (and of its children) while it is active.
- ``write_results`` saves a run's results as ``<results>/<name>-<timestamp>.json``.

Used by ``backtest bench`` (``benchmarks.suite``) and by the scripts under ``benchmarks/``. Nothing here imports
Prefect: its settings are read at import, and the callers set them first. ``generate_universe`` and
``ingest_folder`` use process pools, so a script calling ``ensure_store`` keeps its work under
``if __name__ == "__main__":``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

#: the checkout, for ``git describe`` of what was measured (in an installed copy git just finds nothing)
REPO_ROOT = Path(__file__).resolve().parent.parent
#: relative to the working directory: ``backtest bench`` is meant to run from the repository root
DEFAULT_DATA_DIR = Path("benchmarks/.data")
RESULTS_DIR = Path("benchmarks/results")
MARKER = "complete.json"
#: bump when the layout of a universe folder changes, so old folders are rebuilt rather than misread
LAYOUT_VERSION = 1

#: the reference workload W of docs/design.md section 4
W_SYMBOLS = 4000
W_YEARS = 20.0
W_SEED = 42
SMALL_UNIVERSE = 64


def data_dir(path: Path | str | None = None) -> Path:
    return Path(path) if path is not None else DEFAULT_DATA_DIR


def universe_dir(n_symbols: int, years: float, seed: int, data: Path | str | None = None) -> Path:
    return data_dir(data) / f"universe-n{n_symbols}-y{years:g}-s{seed}"


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Serialise two benchmark processes building the same universe."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def ensure_store(
    n_symbols: int = W_SYMBOLS,
    years: float = W_YEARS,
    seed: int = W_SEED,
    data: Path | str | None = None,
    *,
    keep_csv: bool = False,
    log: Callable[[str], None] = print,
    rebuild: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """The ``Store`` of a synthetic universe of ``n_symbols`` x ``years``, built on first use and then reused.

    A universe folder is reused only when its ``complete.json`` marker matches the request and the store's
    catalog holds exactly ``n_symbols`` symbols; otherwise the CSVs are generated and ingested again (the
    store's flow cache, ``<store>/cache/``, is dropped with it). The CSVs are deleted after a successful
    ingest unless ``keep_csv``: the store is all the benchmarks read. ``rebuild`` builds it again anyway.

    The second value describes the data: its marker (sizes, rows, generate and ingest seconds, when it was
    built) and ``reused``, so a run reusing a store still reports what building it cost.
    """
    from backtest.data.ingest import ingest_folder
    from backtest.data.store import Store
    from backtest.data.synthetic import generate_universe

    folder = universe_dir(n_symbols, years, seed, data)
    csv_dir, store_dir = folder / "csv", folder / "store"
    wanted = {"layout": LAYOUT_VERSION, "n_symbols": n_symbols, "years": float(years), "seed": seed}
    with _locked(folder):
        marker = _read_marker(folder)
        if not rebuild and marker is not None and all(marker.get(k) == v for k, v in wanted.items()):
            store = Store(store_dir)
            if (store_dir / "catalog.parquet").exists() and len(store.symbols()) == n_symbols:
                log(f"data: reusing {store_dir} ({n_symbols:,} symbols x {years:g} years, seed {seed})")
                return store, {**marker, "reused": True}
        log(f"data: building {n_symbols:,} symbols x {years:g} years (seed {seed}) in {folder}")
        (folder / MARKER).unlink(missing_ok=True)
        shutil.rmtree(store_dir, ignore_errors=True)
        # a small universe is quicker to write in this process than to hand to a pool of fresh processes
        workers = 1 if n_symbols <= SMALL_UNIVERSE else None
        generated = generate_universe(csv_dir, n_symbols, years, seed, workers=workers)
        log(f"data: generated {generated.rows:,} rows in {generated.seconds:.1f} s")
        store = Store(store_dir)
        report = ingest_folder(csv_dir, store, durable=False, workers=workers)
        totals = report.totals()
        log(
            f"data: ingested {totals['rows']:,} rows ({totals['rejected_rows']:,} rejected, "
            f"{totals['failed']:,} files failed) in {report.elapsed_s:.1f} s"
        )
        stored = len(store.symbols())
        if not report.ok or stored != n_symbols:
            raise RuntimeError(
                f"ingest of {csv_dir} stored {stored} of {n_symbols} symbols "
                f"({totals['failed']} files failed): see `backtest ingest {csv_dir} --store DIR`"
            )
        if not keep_csv:
            shutil.rmtree(csv_dir, ignore_errors=True)
        marker = {
            **wanted,
            "rows": int(store.catalog()["rows"].sum()),
            "rejected_rows": totals["rejected_rows"],
            "generate_seconds": round(generated.seconds, 2),
            "ingest_seconds": round(report.elapsed_s, 2),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        (folder / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        return store, {**marker, "reused": False}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


def _git(*args: str) -> str | None:
    """Read-only git queries (never a command that changes the repository)."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def describe_machine() -> dict[str, Any]:
    """Cores, memory, load and versions: the header of every benchmark's output.

    Versions come from package metadata, so describing the machine imports nothing (Prefect reads its
    settings at import, and the scripts set them first).
    """
    vm = psutil.virtual_memory()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": usable,
        "memory_total_gb": round(vm.total / 1e9, 2),
        "memory_available_gb": round(vm.available / 1e9, 2),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "versions": {
            name: _version(name)
            for name in (
                "numpy",
                "numba",
                "pandas",
                "pyarrow",
                "prefect",
                "psutil",
                "vectorbt",
                "prefect-walkforward-backtest",
            )
        },
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_tracked_changes": None if status is None else len(status.splitlines()),
    }


def machine_line(machine: dict[str, Any]) -> str:
    v = machine["versions"]
    return (
        f"{machine['cpu_model']} | {machine['usable_cores']} usable cores ({machine['logical_cores']} logical) | "
        f"{machine['memory_total_gb']:.1f} GB RAM, {machine['memory_available_gb']:.1f} GB free | "
        f"load {'/'.join(f'{x:.2f}' for x in machine['load_average'])} | python {machine['python']}, "
        f"numpy {v['numpy']}, numba {v['numba']}, pandas {v['pandas']}, pyarrow {v['pyarrow']}, "
        f"prefect {v['prefect']} | git {machine['git_commit']}"
        + (f" (+{machine['git_tracked_changes']} modified files)" if machine["git_tracked_changes"] else "")
    )


class RssSampler:
    """Peak RSS of this process (and of this process plus its children) while the ``with`` block runs.

    psutil reports the current RSS only, so a thread samples it every ``interval`` seconds; a peak shorter
    than the interval can be missed. ``ru_maxrss`` (the kernel's lifetime high-water mark of this process)
    is kept beside it as a cross-check.

    The descendants are looked up every ``children_every`` seconds only, and their RSS read every
    ``children_rss_every`` seconds: finding them reads ``/proc`` of every process on the machine, which at
    every sample took a sizeable share of a core from the run being measured (py-spy), and read less often
    but with their RSS at every sample still cost the flow's run several times what sampling costs the
    core's. The descendants (the ephemeral server, process or Dask workers) change their memory over
    seconds, not milliseconds.
    """

    def __init__(
        self,
        interval: float = 0.02,
        children: bool = True,
        children_every: float = 1.0,
        children_rss_every: float = 0.1,
    ) -> None:
        self.interval = interval
        self.children = children
        self.children_every = children_every
        self.children_rss_every = children_rss_every
        self._kids_rss = 0
        self._kids_rss_at = -math.inf
        self.peak_self = 0
        self.peak_tree = 0
        self.start_self = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc = psutil.Process()
        self._kids: list[psutil.Process] = []
        self._kids_at = -math.inf

    def _descendants(self) -> list[psutil.Process]:
        now = time.monotonic()
        if now - self._kids_at >= self.children_every:
            with contextlib.suppress(psutil.Error):
                self._kids = self._proc.children(recursive=True)
            self._kids_at = now
        return self._kids

    def _children_rss(self) -> int:
        now = time.monotonic()
        if now - self._kids_rss_at >= self.children_rss_every:
            total = 0
            for child in self._descendants():
                with contextlib.suppress(psutil.Error):
                    total += child.memory_info().rss
            self._kids_rss, self._kids_rss_at = total, now
        return self._kids_rss

    def _sample(self) -> None:
        own = self._proc.memory_info().rss
        tree = own + (self._children_rss() if self.children else 0)
        self.peak_self = max(self.peak_self, own)
        self.peak_tree = max(self.peak_tree, tree)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(psutil.Error):
                self._sample()

    def __enter__(self) -> RssSampler:
        self.start_self = self._proc.memory_info().rss
        self._sample()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._kids_at = self._kids_rss_at = -math.inf  # the last sample looks the descendants up afresh
        self._sample()

    def to_dict(self) -> dict[str, float]:
        return {
            "start_rss_mb": round(self.start_self / 1e6, 1),
            "peak_rss_mb": round(self.peak_self / 1e6, 1),
            "peak_rss_with_children_mb": round(self.peak_tree / 1e6, 1),
        }


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``), so one timed run's
    leftovers do not count in the next run's peak RSS."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def max_rss_mb() -> float:
    """The kernel's high-water mark of this process's RSS since it started (Linux: KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6, 1)


def timestamp() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def write_results(script: str, payload: dict[str, Any], folder: Path | str | None = None) -> Path:
    """``<folder>/<script>-<timestamp>.json`` (default ``benchmarks/results``); NaN and infinities become
    null."""
    import math

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        if hasattr(value, "item") and not isinstance(value, str | bytes):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value

    folder = Path(folder) if folder is not None else RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{script}-{timestamp()}.json"
    path.write_text(json.dumps(clean(payload), indent=2, default=str) + "\n")
    return path


def goal(met: bool) -> str:
    return "MET" if met else "MISSED"


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.seconds``."""

    def __enter__(self) -> Stopwatch:
        self._t0 = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0
