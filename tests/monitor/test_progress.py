"""Progress: chunks done, symbols per second and an ETA; the listener hears every finished chunk."""

from __future__ import annotations

import pytest

from flows.progress import Progress, ProgressTracker, notify, set_listener


def test_rate_and_eta_from_symbols_done():
    p = Progress(
        done=3,
        total=10,
        chunk="chunk-0002",
        state="Completed",
        symbols_done=300,
        symbols_total=1000,
        elapsed=6.0,
    )
    assert p.symbols_per_second == pytest.approx(50.0)
    assert p.eta_seconds == pytest.approx(14.0)  # 700 symbols left at 50 a second
    assert p.percent == pytest.approx(30.0)
    assert p.describe() == "3/10 chunks, 300/1000 symbols, 50 symbols/s, ETA 14 s"
    done = Progress(10, 10, "chunk-0009", "Cached", 1000, 1000, 8.0)
    assert done.eta_seconds == 0.0
    assert Progress(0, 10, "", "", 0, 1000, 0.0).eta_seconds is None


def test_tracker_counts_and_listener_hears_each_chunk():
    heard: list[Progress] = []
    tracker = ProgressTracker(total_chunks=2, total_symbols=30)
    set_listener(heard.append)
    try:
        notify(tracker.finished("chunk-0000", 10, "Completed"))
        notify(tracker.finished("chunk-0001", 20, "Cached"))
    finally:
        set_listener(None)
    notify(tracker.finished("chunk-0002", 1, "Completed"))  # nobody listens any more
    assert [(p.done, p.symbols_done, p.state) for p in heard] == [(1, 10, "Completed"), (2, 30, "Cached")]
    assert heard[-1].eta_seconds == 0.0
