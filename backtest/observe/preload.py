"""Importing a heavy module ahead of time, on a background thread, while the process waits on other things.

The report builder pulls in matplotlib (as much CPU as drawing a warm run's plots): a flow that starts that
import when it starts pays for it while its workers compute and its API calls wait, instead of at the end,
where every second of the report is a second of the run.
"""

from __future__ import annotations

import contextlib
import importlib
import threading

_lock = threading.Lock()
_started: dict[str, threading.Thread] = {}


def preload(module: str, then: str | None = None) -> threading.Thread:
    """Start importing ``module`` on a background thread, at most once per process; return that thread.
    ``then`` names a function of the module to call after the import (more start-up to get out of the way).

    A later ``import`` of the same module on another thread simply waits on Python's per-module import lock
    for the rest of the work, so callers need not join. An import error is left for that later import to
    raise where it is handled. Not a daemon thread: a process that ends early finishes the import before the
    interpreter shuts down, instead of being cut off inside a half-imported extension module.
    """
    with _lock:
        thread = _started.get(module)
        if thread is None:
            thread = threading.Thread(
                target=_import, args=(module, then), name=f"preload-{module}", daemon=False
            )
            _started[module] = thread
            thread.start()
        return thread


def _import(module: str, then: str | None) -> None:
    # an import error is not this thread's to report: the real import, later, raises it where it is handled
    with contextlib.suppress(Exception):
        loaded = importlib.import_module(module)
        if then:
            getattr(loaded, then)()
