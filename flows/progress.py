"""A hook for whoever runs the flow in-process (the CLI's progress bar) to hear about finished chunks."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

Listener = Callable[[int, int, str, str], None]  # done, total, chunk name, state name

_listener: ContextVar[Listener | None] = ContextVar("study_progress_listener", default=None)


def set_listener(listener: Listener | None) -> None:
    _listener.set(listener)


def notify(done: int, total: int, chunk: str, state: str) -> None:
    listener = _listener.get()
    if listener is not None:
        listener(done, total, chunk, state)
