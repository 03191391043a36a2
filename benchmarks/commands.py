"""The study as a user runs it: ``backtest run`` and ``backtest demo`` as commands in new processes, timed from
the shell's point of view beside their flows' own seconds.

Everything else in the suite runs flows inside the benchmark's process, on a Prefect server already up: that
is the work, not the wait. Here a command pays what a user pays: its interpreter and imports, the project's
Prefect server (started by the first command of a project, on a new home whose database is migrated first,
then reused), its kernels loaded (or, on a new machine, compiled), the flow, the report. Each project is a
folder of its own under the benchmark's runs folder, its server stopped at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Log = Callable[[str], None]
TIMEOUT = 1800.0


def command_env(**extra: str) -> dict[str, str]:
    """This process's environment for a command as a user starts it: no server named, no opt-out."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "BACKTEST_EPHEMERAL")}
    return {**env, **extra}


def backtest(args: list[str], project: Path, out: Path | None, env: dict[str, str]) -> dict[str, Any]:
    """One ``backtest`` command in ``project`` (its working folder); its wall time, and its run's summary."""
    project.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", "from cli.app import app; app()", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    run: dict[str, Any] = {"wall_seconds": time.perf_counter() - t0, "returncode": done.returncode}
    path = (out or project) / "summary.json"
    if done.returncode != 0 or not path.exists():
        run["error"] = (done.stderr or done.stdout)[-2000:]
        return run
    summary = json.loads(path.read_text())
    profile = summary.get("profile") or {}
    run.update(
        state=summary.get("state"),
        flow_seconds=summary.get("wall_seconds"),
        phase_seconds=summary.get("phase_seconds"),
        cache=summary.get("cache"),
        peak_rss_with_children_mb=round((summary.get("peak_rss_bytes") or 0) / 1e6, 1),
        peak_rss_mb=round((profile.get("peak_flow_process_rss_bytes") or 0) / 1e6, 1),
        started_server="starting this project's Prefect server" in done.stdout,
    )
    return run


def server_rss_mb(project: Path) -> float | None:
    """The resident memory of the project's server (its supervisor and the server) now."""
    import psutil

    from cli import localserver

    info = localserver.read_info(project)
    if info is None or not localserver.alive(info.pid):
        return None
    try:
        root = psutil.Process(info.pid)
        total = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
    except psutil.Error:
        return None
    return round(total / 1e6, 1)


def stop_server(project: Path) -> None:
    from cli import localserver

    info = localserver.read_info(project)
    if info is not None:
        localserver.stop(info)
        localserver.state_file(project).unlink(missing_ok=True)


def measure_run_commands(store: Any, runs_dir: Path, log: Log) -> dict[str, Any]:
    """``backtest run`` on the whole store in a new project: the first command (it starts the project's server
    on a new home), cold again with the server up, and warm."""
    project = (runs_dir / "command-project").resolve()
    env = command_env()
    base = ["run", "--store", str(store.root.resolve())]
    out: dict[str, Any] = {}
    try:
        for label, wipe in (("first", True), ("cold", True), ("warm", False)):
            if wipe:
                shutil.rmtree(store.root / "cache", ignore_errors=True)
            run = backtest([*base, "--out", str(project / label)], project, project / label, env)
            out[label] = run
            log(
                f"command: `backtest run` {label}: {run['wall_seconds']:.2f} s, its flow "
                f"{run.get('flow_seconds') or float('nan'):.2f} s ({run.get('state', run.get('error'))}), peak RSS "
                f"of its process tree {run.get('peak_rss_with_children_mb') or float('nan'):,.0f} MB"
            )
        out["server_rss_mb"] = server_rss_mb(project)
    finally:
        stop_server(project)
    return out


def measure_demo(runs_dir: Path, symbols: int, years: float, log: Log) -> dict[str, Any]:
    """``backtest demo`` twice in a new project with numba's cache empty, as on a fresh clone: the first
    compiles the kernels (while its server starts and its market is made), the second finds them; its study's
    cache is removed before it, so both flows do the same work."""
    project = (runs_dir / "demo-project").resolve()
    cache = Path(tempfile.mkdtemp(prefix="backtest-bench-numba-"))
    env = command_env(NUMBA_CACHE_DIR=str(cache))
    args = ["demo", "--folder", "demo", "--symbols", str(symbols), "--years", f"{years:g}"]
    out: dict[str, Any] = {"symbols": symbols, "years": years}
    try:
        for label in ("first", "second"):
            shutil.rmtree(project / "demo" / "store" / "cache", ignore_errors=True)
            run = backtest(args, project, project / "demo" / "results", env)
            out[label] = run
            log(
                f"command: `backtest demo` ({symbols} symbols, numba's cache new before the first) {label}: "
                f"{run['wall_seconds']:.1f} s, its flow {run.get('flow_seconds') or float('nan'):.2f} s "
                f"({run.get('state', run.get('error'))})"
            )
    finally:
        stop_server(project)
        with contextlib.suppress(OSError):
            shutil.rmtree(cache)
    return out
