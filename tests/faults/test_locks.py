"""Chunk locks die with their process: a SIGKILLed run or worker must not block the next run forever."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tasks.caching import ProcessLockManager
from tests.faults.conftest import REPO

TAKE_AND_DIE = """
import os, signal, sys
from pathlib import Path
from tasks.caching import ProcessLockManager
ProcessLockManager(Path(sys.argv[1])).acquire_lock("chunk-a", holder="run-1")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_lock_whose_process_died_is_broken_and_a_live_one_is_kept(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", TAKE_AND_DIE, str(tmp_path)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert done.returncode == -9
    lock = tmp_path / "chunk-a.lock"
    record = json.loads(lock.read_text())
    assert record["holder"] == "run-1" and record["pid"] != os.getpid()

    manager = ProcessLockManager(tmp_path)
    assert not manager.is_locked("chunk-a") and not lock.exists()  # the holder is gone: broken
    assert manager.acquire_lock("chunk-a", holder="run-2", acquire_timeout=1)
    other = ProcessLockManager(tmp_path)
    assert other.is_locked("chunk-a")  # held by this live process: respected
    assert not other.acquire_lock("chunk-a", holder="run-3", acquire_timeout=0.3)
    manager.release_lock("chunk-a", holder="run-2")
    assert not other.is_locked("chunk-a")


def test_a_lock_of_another_host_or_without_a_process_is_respected(tmp_path):
    (tmp_path / "chunk-b.lock").write_text(
        json.dumps({"holder": "x", "expiration": None, "host": "elsewhere", "pid": 1})
    )
    (tmp_path / "chunk-c.lock").write_text(json.dumps({"holder": "y", "expiration": None}))
    manager = ProcessLockManager(tmp_path)
    assert manager.is_locked("chunk-b") and manager.is_locked("chunk-c")
