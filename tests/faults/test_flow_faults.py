"""Faults during a study run, for real: a killed flow process, killed workers (process pool and Dask), a full
disk under the results, a Prefect server restarting mid-run, and two studies on one store at once.

Each run is a `backtest run` subprocess against a real `prefect server start`. After every fault the run
either recovers or ends cleanly (exit 0 or 1, one clear message, no traceback), and a re-run completes with
tables identical to a clean computation of the same study by the core alone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from tests.faults.conftest import (
    assert_same_tables,
    clean_tables,
    result_files,
    run_args,
    tables,
    wait_for,
)
from tests.faults.test_security import audit_cache
from tests.faults.test_store_faults import remount, tmpfs

pytestmark = pytest.mark.e2e  # killed processes and restarted servers: the e2e group of .ci/run

CHUNKS = 8  # 16 symbols in chunks of 2


def summary_of(out):
    return json.loads((out / "summary.json").read_text())


def assert_clean_end(done: subprocess.CompletedProcess[str]) -> None:
    """Exit 0 or 1 and the command's own output (stdout) without a traceback; stderr is Prefect's run log,
    which may carry the traceback of a failed task (as the UI does)."""
    assert done.returncode in (0, 1), done.stdout + done.stderr
    assert "Traceback" not in done.stdout, done.stdout


def test_flow_process_killed_mid_run_then_disk_full_then_reruns_reuse_persisted_chunks(
    cli, in_process, store, strategy_dir, tmp_path, monkeypatch
):
    """The flow process is SIGKILLed once some chunks are persisted; the re-run reuses them but finds the
    results disk full and fails cleanly; with room again, the next run completes from the cache."""
    (cli.control / "delay").write_text("0.1")
    proc = cli.start(
        run_args(store, tmp_path / "killed", "--chunk-size", "2", "--workers", "1"), tmp_path / "k.log"
    )
    wait_for(lambda: len(result_files(store)) >= 2, 120, "two persisted chunks", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    persisted = len(result_files(store))
    assert 2 <= persisted < CHUNKS, persisted

    with tmpfs(tmp_path / "results", "48k") as disk:
        out = disk / "out"
        state = in_process.run(store, out, chunk_size=2, workers=2)
        assert state.is_failed() and "No space left on device" in state.message, state.message
        assert not [p.name for p in out.rglob("*.tmp")], "a half-written file was left behind"
        remount(disk, "size=20m")
        state = in_process.run(store, out, chunk_size=2, workers=2)
        assert state.is_completed(), state.message
        assert summary_of(out)["cache"]["hits"] == CHUNKS  # every chunk was persisted before the disk filled
        assert_same_tables(tables(out), clean_tables(store, strategy_dir, monkeypatch))


@pytest.mark.parametrize("runner", ["processes", "dask"])
def test_worker_killed_mid_chunk(in_process, store, strategy_dir, tmp_path, monkeypatch, runner):
    victim = store.symbols()[4]  # first symbol of chunk 1 (chunks of 4)
    (in_process.control / f"kill-{victim}").write_text("")
    out = tmp_path / "out"
    # one Dask worker is enough (its nanny restarts it); a process pool needs two to lose one mid-chunk
    state = in_process.run(store, out, runner=runner, workers=1 if runner == "dask" else 2, chunk_size=4)
    assert not (in_process.control / f"kill-{victim}").exists()  # the worker computing chunk 1 was SIGKILLed
    if runner == "dask":
        # the nanny restarts the worker and the scheduler reruns its task elsewhere: the run recovers
        assert state.is_completed(), state.message
    else:
        # a dead process breaks the whole pool: the run fails naming the chunks and saying to re-run
        assert state.is_failed() and "Re-run" in state.message
        assert "worker process died" in summary_of(out)["failed_chunks"][0]["error"]
        # the re-run (on threads: the runner is not part of the cache key) breaks the dead worker's lock
        state = in_process.run(store, out, runner="threads", workers=2, chunk_size=4)
        assert state.is_completed(), state.message
    assert_same_tables(tables(out), clean_tables(store, strategy_dir, monkeypatch))
    audit_cache(
        store.root / "cache"
    )  # and what was persisted is Parquet behind records naming our serializer


def test_prefect_server_restarting_mid_run(
    in_process, prefect_server, store, strategy_dir, tmp_path, monkeypatch
):
    from concurrent.futures import ThreadPoolExecutor

    (in_process.control / "delay").write_text("0.1")
    out = tmp_path / "out"
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(in_process.run, store, out, chunk_size=2, workers=1)
        wait_for(lambda: len(result_files(store)) >= 1 or running.done(), 120, "a persisted chunk")
        prefect_server.stop()
        prefect_server.start()  # same port and database; the client retries with backoff meanwhile
        (in_process.control / "delay").unlink()
        state = running.result(timeout=240)
    # Prefect's client retried its calls while the server was down: the run either completed, or failed
    # cleanly, and then a re-run completes
    if not state.is_completed():
        assert state.is_failed() or state.is_crashed(), state
        state = in_process.run(store, out, chunk_size=2, workers=1)
    assert state.is_completed(), state.message
    assert_same_tables(tables(out), clean_tables(store, strategy_dir, monkeypatch))


def test_two_studies_on_one_store_in_two_processes(cli, store, strategy_dir, tmp_path, monkeypatch):
    (cli.control / "delay").write_text("0.05")
    outs = [tmp_path / "one", tmp_path / "two"]
    procs = [
        cli.start(run_args(store, o, "--chunk-size", "4", "--workers", "2"), o.with_suffix(".log"))
        for o in outs
    ]
    for proc in procs:
        proc.wait(180)
    logs = [o.with_suffix(".log").read_text() for o in outs]
    assert [p.returncode for p in procs] == [0, 0], logs
    caches = [summary_of(o)["cache"] for o in outs]
    # every chunk was computed by exactly one of them; the other waited for its lock and read the result
    assert sum(c["misses"] for c in caches) == 4 and sum(c["hits"] for c in caches) == 4
    clean = clean_tables(store, strategy_dir, monkeypatch)
    for out in outs:
        assert_same_tables(tables(out), clean)
    audit_cache(store.root / "cache")
