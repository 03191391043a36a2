"""Progress of a study: chunks done, symbols per second and an ETA, for the artifact and the terminal bar.

``Progress`` is a plain value computed by the flow at every finished chunk; whoever runs the flow in-process
(the CLI's rich progress bar) hears about it through a listener set in a context variable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """Where the backtest step stands after a chunk finished.

    The rate counts every finished symbol (cached ones too) over the step's elapsed time, so on a part-warm
    run the ETA is optimistic while cache hits come in and corrects itself as computed chunks finish.
    """

    done: int
    total: int
    chunk: str
    state: str
    symbols_done: int
    symbols_total: int
    elapsed: float

    @property
    def symbols_per_second(self) -> float | None:
        return self.symbols_done / self.elapsed if self.elapsed > 0 and self.symbols_done else None

    @property
    def eta_seconds(self) -> float | None:
        rate = self.symbols_per_second
        if self.done >= self.total:
            return 0.0
        return None if not rate else (self.symbols_total - self.symbols_done) / rate

    @property
    def percent(self) -> float:
        return 100.0 * self.done / max(self.total, 1)

    def describe(self) -> str:
        rate, eta = self.symbols_per_second, self.eta_seconds
        return (
            f"{self.done}/{self.total} chunks, {self.symbols_done}/{self.symbols_total} symbols"
            + (f", {rate:,.0f} symbols/s" if rate else "")
            + (f", ETA {eta:,.0f} s" if eta is not None else "")
        )


class ProgressTracker:
    """Counts finished chunks and symbols since the backtest step started."""

    def __init__(self, total_chunks: int, total_symbols: int) -> None:
        self.total_chunks = total_chunks
        self.total_symbols = total_symbols
        self.done = 0
        self.symbols_done = 0
        self.started = time.perf_counter()

    def finished(self, chunk: str, symbols: int, state: str) -> Progress:
        self.done += 1
        self.symbols_done += symbols
        return Progress(
            done=self.done,
            total=self.total_chunks,
            chunk=chunk,
            state=state,
            symbols_done=self.symbols_done,
            symbols_total=self.total_symbols,
            elapsed=time.perf_counter() - self.started,
        )


Listener = Callable[[Progress], None]

_listener: ContextVar[Listener | None] = ContextVar("study_progress_listener", default=None)


def set_listener(listener: Listener | None) -> None:
    _listener.set(listener)


def notify(progress: Progress) -> None:
    listener = _listener.get()
    if listener is not None:
        listener(progress)
