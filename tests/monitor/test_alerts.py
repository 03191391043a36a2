"""Each alert fires exactly once when its threshold is crossed, and not when it is not."""

from __future__ import annotations

from backtest.alerts import AlertBook, AlertThresholds, cache_hit_rate_low, chunk_retried, slow_chunks
from backtest.monitor import Sample


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


def test_retried_chunk_once():
    assert chunk_retried("chunk-0001", 1) is None
    book = AlertBook()
    assert [a.key for a in book.check_retry("chunk-0001", 2)] == ["chunk-retried:chunk-0001"]
    assert book.check_retry("chunk-0001", 3) == []
    assert len(book.raised) == 1 and book.raised[0].to_dict()["event"] == "backtest.alert.chunk-retried"
