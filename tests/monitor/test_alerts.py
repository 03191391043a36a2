"""Each alert fires exactly once when its threshold is crossed, and not when it is not."""

from __future__ import annotations

from backtest.observe.alerts import (
    AlertBook,
    AlertThresholds,
    cache_hit_rate_low,
    chunk_retried,
    slow_chunks,
    startup_chunks,
)
from backtest.observe.monitor import Sample


def sample(t: float, cpu: float = 10.0, mem: float = 40.0) -> Sample:
    return Sample(
        time=1_000.0 + t,
        elapsed=t,
        processes=2,
        tree_rss=500 * 2**20,
        root_rss=400 * 2**20,
        tree_cpu_seconds=t,
        tree_cpu_wait_seconds=0.0,
        tree_cpu_percent=cpu * 2,
        machine_cpu_percent=cpu,
        cpu_per_core=(cpu, cpu),
        machine_memory_percent=mem,
        machine_available=2**30,
        tree_read_bytes=0,
        tree_write_bytes=0,
        tree_read_chars=0,
        tree_write_chars=0,
        net_sent=0,
        net_recv=0,
        open_fds=10,
    )


def feed(book: AlertBook, samples: list[Sample]) -> list[str]:
    """Feed samples one at a time, as the monitor's listener does; return the kinds raised."""
    raised = []
    for i in range(len(samples)):
        raised += [a.kind for a in book.check_samples(samples[: i + 1])]
    return raised


def test_sustained_cpu_fires_once_and_only_when_sustained():
    t = AlertThresholds(cpu_percent=85, cpu_sustained_seconds=10)
    hot = [sample(i, cpu=95) for i in range(40)]  # 40 s above the threshold
    assert feed(AlertBook(t), hot) == ["cpu-high"]
    # above the threshold for 8 s at a time only: never sustained
    bursts = [sample(i, cpu=95 if i % 10 < 8 else 50) for i in range(40)]
    assert feed(AlertBook(t), bursts) == []
    # exactly at the threshold is not above it
    assert feed(AlertBook(t), [sample(i, cpu=85) for i in range(40)]) == []
    # the alert names the lowest value of the window and the period
    alert = AlertBook(t).check_samples(hot[:12])[0]
    assert alert.value == 95 and alert.details["seconds"] >= 10 and alert.event == "backtest.alert.cpu-high"


def test_memory_fires_once_above_ninety_percent():
    book = AlertBook()
    samples = [sample(i, mem=m) for i, m in enumerate([50, 89.9, 90.0, 91.0, 95.0, 80.0, 93.0])]
    assert feed(book, samples) == ["memory-high"]
    assert book.raised[0].value == 91.0
    assert feed(AlertBook(), [sample(i, mem=90.0) for i in range(5)]) == []


def test_cache_hit_rate_only_on_a_warm_run():
    t = AlertThresholds()
    assert cache_hit_rate_low(7, 10, warm=True, t=t) is not None  # 70 % < 80 %
    assert cache_hit_rate_low(8, 10, warm=True, t=t) is None  # 80 % is not below
    assert cache_hit_rate_low(0, 10, warm=False, t=t) is None  # a cold run misses by design
    book = AlertBook(t)
    assert [a.kind for a in book.check_cache(1, 10, warm=True)] == ["cache-hit-rate-low"]
    assert book.check_cache(1, 10, warm=True) == []


def test_slow_chunk_relative_to_the_median_once_per_chunk():
    t = AlertThresholds(slow_chunk_factor=3.0, slow_chunk_min_seconds=1.0)
    seconds = {"chunk-0000": 1.0, "chunk-0001": 1.1, "chunk-0002": 0.9, "chunk-0003": 3.5}
    assert [a.subject for a in slow_chunks(seconds, t)] == ["chunk-0003"]  # 3.5 > 3 x 1.05
    assert slow_chunks({**seconds, "chunk-0003": 3.1}, t) == []  # 3.1 < 3 x 1.05
    assert slow_chunks({"a": 0.01, "b": 0.01, "c": 0.01, "d": 0.9}, t) == []  # fast in absolute terms
    assert slow_chunks({"a": 1.0, "b": 9.0}, t) == []  # too few chunks for a median
    book = AlertBook(t)
    assert len(book.check_chunks(seconds)) == 1
    assert book.check_chunks({**seconds, "chunk-0004": 1.0}) == []  # same condition: not again
    assert [a.subject for a in book.check_chunks({**seconds, "chunk-0005": 9.0})] == ["chunk-0005"]


def run_spans(walls: list[float], workers: int, start_up: float = 0.0) -> dict[str, tuple[float, float]]:
    """When each chunk ran on ``workers`` workers taking chunks in order as they free up (list scheduling),
    the first chunk of each worker ``start_up`` seconds longer (the kernels' load on a fresh worker)."""
    free = [0.0] * workers
    spans = {}
    for i, wall in enumerate(walls):
        w = min(range(workers), key=free.__getitem__)
        first = free[w] == 0.0
        start = free[w]
        free[w] = start + wall + (start_up if first else 0.0)
        spans[f"chunk-{i:04d}"] = (start, free[w])
    return spans


def test_start_up_chunks_are_the_first_of_each_worker():
    spans = run_spans([0.2] * 10, workers=2, start_up=8.0)
    assert startup_chunks(spans) == {"chunk-0000", "chunk-0001"}
    assert startup_chunks(run_spans([0.2] * 10, workers=3, start_up=8.0)) == {
        "chunk-0000",
        "chunk-0001",
        "chunk-0002",
    }
    # one worker: only its first chunk; no figures, no start-up chunks
    assert startup_chunks(run_spans([1.0] * 5, workers=1, start_up=3.0)) == {"chunk-0000"}
    assert startup_chunks({}) == frozenset()
    # a worker whose first chunk starts after another's has finished (kernels ready in its process by then,
    # for threads) is judged like any other
    late = {"a": (0.0, 1.0), "b": (0.0, 1.2), "c": (1.1, 2.0)}
    assert startup_chunks(late) == {"a", "b"}


def test_no_false_slow_chunk_at_start_up_but_a_truly_slow_one_later_alerts():
    """The demo's cold run: two fresh workers, 8 s of kernel load on each first chunk, median 0.18 s."""
    t = AlertThresholds()
    walls = [0.18] * 10
    spans = run_spans(walls, workers=2, start_up=8.0)
    seconds = {name: end - start for name, (start, end) in spans.items()}
    assert [a.subject for a in slow_chunks(seconds, t)] == ["chunk-0000", "chunk-0001"]  # the old rule
    assert slow_chunks(seconds, t, startup_chunks(spans)) == []
    # the same start-up, and chunk 7 stalls for 5 s later in the run: that one still alerts
    walls[7] = 5.0
    spans = run_spans(walls, workers=2, start_up=8.0)
    seconds = {name: end - start for name, (start, end) in spans.items()}
    alerts = slow_chunks(seconds, t, startup_chunks(spans))
    assert [a.subject for a in alerts] == ["chunk-0007"]
    assert abs(alerts[0].details["median"] - 0.18) < 1e-9  # start-up chunks do not lift the median either
    # checked as chunks finish (as the flow does): nothing until chunk 7, which alerts once
    book, raised = AlertBook(t), []
    for n in range(1, len(spans) + 1):
        done = dict(sorted(spans.items(), key=lambda kv: kv[1][1])[:n])
        secs = {name: end - start for name, (start, end) in done.items()}
        raised += [a.subject for a in book.check_chunks(secs, startup_chunks(done))]
    assert raised == ["chunk-0007"]


def test_retried_chunk_once():
    assert chunk_retried("chunk-0001", 1) is None
    book = AlertBook()
    assert [a.key for a in book.check_retry("chunk-0001", 2)] == ["chunk-retried:chunk-0001"]
    assert book.check_retry("chunk-0001", 3) == []
    assert len(book.raised) == 1 and book.raised[0].to_dict()["event"] == "backtest.alert.chunk-retried"
