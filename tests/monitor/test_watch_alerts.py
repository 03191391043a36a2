"""The flow's watcher leaves the start-up chunks out of the slow-chunk rule and still catches a slow one."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest

from backtest.observe.profiling import COMPUTED
from flows import monitoring
from tests.monitor.test_alerts import run_spans


@pytest.fixture
def watch(monkeypatch):
    emitted: list[str] = []
    monkeypatch.setattr(monitoring, "emit_alert", lambda alert, flow_run, logger: emitted.append(alert.key))
    w = monitoring.RunWatch(SimpleNamespace(id=uuid.uuid4(), name="demo", deployment_id=None))
    w.emitted = emitted
    return w


def finish(w: monitoring.RunWatch, spans: dict[str, tuple[float, float]]) -> None:
    """Record the chunks as the flow does (timings of the persisted results, the final state's time) in the
    order they ended, checking the rule after each, then at the end of the backtest step."""
    for name, (start, end) in sorted(spans.items(), key=lambda kv: kv[1][1]):
        w.finished[name] = (COMPUTED, {"optimise": end - start - 0.01, "load": 0.01, "attempts": 1.0}, end)
        w._check_slow_chunks()
    w.backtest_done()


def test_cold_start_chunks_raise_no_alert(watch):
    finish(watch, run_spans([0.18] * 10, workers=2, start_up=8.0))
    assert watch.emitted == [] and watch.alerts == []


def test_a_slow_chunk_after_start_up_alerts_once(watch):
    walls = [0.18] * 10
    walls[6] = 4.0
    finish(watch, run_spans(walls, workers=2, start_up=8.0))
    assert watch.emitted == ["chunk-slow:chunk-0006"]


def test_a_ranking_studys_blocks_are_compared_with_blocks_only(watch):
    """Portfolio blocks take longer than score chunks by nature: neither kind is slow against the other's
    median, a block slow among blocks still is."""
    spans = run_spans([0.18] * 10, workers=2, start_up=0.0)
    t = max(end for _, end in spans.values())
    blocks = {f"block-{i:02d}": (t + 0.6 * i, t + 0.6 * (i + 1)) for i in range(4)}
    finish(watch, {**spans, **blocks})
    assert watch.emitted == []
    slow = {**blocks, "block-04": (t + 2.4, t + 6.0)}
    finish(watch, {**spans, **slow})
    assert watch.emitted == ["chunk-slow:block-04"]


def test_the_recommendations_get_the_bars_the_chunk_size_was_chosen_for():
    counts = {"symbols": 10, "combinations": 4, "bars_x_combinations": 10 * 4 * 4_500}
    assert monitoring._bars_per_symbol(counts) == 4_500  # stored bars per symbol
    assert monitoring._bars_per_symbol({**counts, "bars": 5_040}) == 5_040  # the panel's width, if counted
    assert monitoring._bars_per_symbol({}) is None
