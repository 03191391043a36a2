"""Alert rules: thresholds over resource samples and chunk figures, each condition raised once per run.

The rules are pure (figures in, alerts out); ``AlertBook`` remembers which conditions have been raised, so a
CPU that stays above its threshold for ten minutes is one alert, not six hundred. Emitting (Prefect events,
log lines) is the orchestration layer's job: the core only decides.
"""

from __future__ import annotations

import statistics
import threading
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from backtest.observe.monitor import Sample

#: event names (a Prefect automation matches ``backtest.alert.*``)
EVENT_PREFIX = "backtest.alert"


@dataclass(frozen=True)
class AlertThresholds:
    """When to alert. Defaults follow the design: CPU above 85 % for a sustained period, memory above 90 % of
    the machine, a cache hit rate below 80 % on a warm run, a chunk slower than 3x the median (start-up chunks aside), any retry."""

    cpu_percent: float = 85.0
    cpu_sustained_seconds: float = 30.0
    memory_percent: float = 90.0
    cache_hit_rate: float = 0.8
    slow_chunk_factor: float = 3.0
    #: the median of fewer chunks than this says too little to call one of them slow
    slow_chunk_min_chunks: int = 3
    #: a chunk faster than this is never "slow" (3x a 10 ms median is noise, not a problem)
    slow_chunk_min_seconds: float = 1.0


@dataclass(frozen=True)
class Alert:
    """One raised condition: ``key`` identifies the condition (raised once per run), ``kind`` names the event."""

    kind: str  # cpu-high, memory-high, cache-hit-rate-low, chunk-slow, chunk-retried
    key: str
    message: str
    value: float
    threshold: float
    subject: str | None = None  # the chunk concerned, if any
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def event(self) -> str:
        return f"{EVENT_PREFIX}.{self.kind}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "event": self.event}


def cpu_sustained(samples: Sequence[Sample], t: AlertThresholds) -> Alert | None:
    """Machine CPU above the threshold in every sample of the last ``cpu_sustained_seconds`` (and the series
    covers at least that long): a saturated machine, where more workers would only queue."""
    if len(samples) < 2:
        return None
    last = samples[-1].time
    window = [s for s in samples if s.time >= last - t.cpu_sustained_seconds]
    earlier = [s for s in samples if s.time < last - t.cpu_sustained_seconds]
    if not earlier and window[-1].time - window[0].time < t.cpu_sustained_seconds:
        return None  # the series is shorter than the sustain period
    if earlier:
        window = [earlier[-1], *window]  # the sample that opens the window counts too
    low = min(s.machine_cpu_percent for s in window)
    if low <= t.cpu_percent:
        return None
    span = window[-1].time - window[0].time
    return Alert(
        kind="cpu-high",
        key="cpu-high",
        message=f"CPU above {t.cpu_percent:.0f} % for {span:.0f} s (lowest {low:.0f} %, "
        f"{len(samples[-1].cpu_per_core)} cores): the machine is saturated",
        value=low,
        threshold=t.cpu_percent,
        details={"seconds": span},
    )


def memory_high(sample: Sample, t: AlertThresholds) -> Alert | None:
    """Machine memory use above the threshold (the run's own share is in the details)."""
    if sample.machine_memory_percent <= t.memory_percent:
        return None
    return Alert(
        kind="memory-high",
        key="memory-high",
        message=f"memory {sample.machine_memory_percent:.0f} % of the machine used (threshold "
        f"{t.memory_percent:.0f} %); this run holds {sample.tree_rss / 2**20:,.0f} MiB",
        value=sample.machine_memory_percent,
        threshold=t.memory_percent,
        details={"tree_rss": sample.tree_rss, "available": sample.machine_available},
    )


def cache_hit_rate_low(hits: int, total: int, warm: bool, t: AlertThresholds) -> Alert | None:
    """On a warm run (the cache held results for this study before it started), fewer hits than expected
    means inputs, code or configuration changed for many chunks, or the cache is not being read."""
    if not warm or total <= 0:
        return None
    rate = hits / total
    if rate >= t.cache_hit_rate:
        return None
    return Alert(
        kind="cache-hit-rate-low",
        key="cache-hit-rate-low",
        message=f"cache hit rate {rate:.0%} ({hits} of {total} chunks) on a warm run, below "
        f"{t.cache_hit_rate:.0%}",
        value=rate,
        threshold=t.cache_hit_rate,
        details={"hits": hits, "chunks": total},
    )


def startup_chunks(spans: Mapping[str, tuple[float, float]]) -> frozenset[str]:
    """The start-up chunks among computed chunks given as ``name -> (start, end)`` (epoch seconds): those that
    started before any computed chunk of the run had finished.

    Such a chunk is the first its worker ran (no worker had finished one yet), so its time includes the
    one-time start-up of a fresh worker: numba loading its kernels from the on-disk cache, or compiling them,
    at the first call in the process (on a fresh machine, many times a median chunk's time). Threads
    share one process's kernels, so every chunk in flight while they load waits for them; each process of a
    process pool or Dask cluster loads its own, on its first chunk. Chunks started after the first end are
    judged like any other: with threads the kernels are loaded by then; a worker process that starts its first
    chunk only after another has finished one would be missed (its start-up shows as a slow chunk), which
    the pools' start of all workers at once makes rare. The rule needs no worker count (a Dask cluster may
    have more workers than asked for) and no figure beyond when each chunk ran.
    """
    if not spans:
        return frozenset()
    first_end = min(end for _, end in spans.values())
    return frozenset(name for name, (start, _) in spans.items() if start < first_end)


def slow_chunks(
    seconds: Mapping[str, float], t: AlertThresholds, startup: Collection[str] = ()
) -> list[Alert]:
    """Chunks whose compute time exceeds ``slow_chunk_factor`` x the median of the computed chunks.

    Start-up chunks (``startup``, see ``startup_chunks``) are left out of both the median and the judgement:
    their time is mostly the kernels' one-time load, not their data, so calling them slow would be a false
    alarm every cold run, and their inflated times would lift the median that later chunks are judged by.
    """
    judged = {name: secs for name, secs in seconds.items() if name not in startup}
    if len(judged) < t.slow_chunk_min_chunks:
        return []
    median = statistics.median(judged.values())
    limit = t.slow_chunk_factor * median
    return [
        Alert(
            kind="chunk-slow",
            key=f"chunk-slow:{name}",
            message=f"{name} took {secs:.2f} s, {secs / median:.1f}x the median {median:.2f} s "
            f"(threshold {t.slow_chunk_factor:g}x)",
            value=secs,
            threshold=limit,
            subject=name,
            details={"median": median, "ratio": secs / median if median > 0 else None},
        )
        for name, secs in judged.items()
        if secs > limit and secs >= t.slow_chunk_min_seconds
    ]


def chunk_retried(name: str, attempts: int) -> Alert | None:
    """A chunk that needed more than one attempt: a transient failure worth knowing about."""
    if attempts <= 1:
        return None
    return Alert(
        kind="chunk-retried",
        key=f"chunk-retried:{name}",
        message=f"{name} was retried: {attempts} attempts",
        value=float(attempts),
        threshold=1.0,
        subject=name,
    )


class AlertBook:
    """The alerts of one run: ``admit`` passes each condition the first time only (thread-safe, as the
    resource rules run on the monitor's thread while the chunk rules run on the flow's)."""

    def __init__(self, thresholds: AlertThresholds | None = None) -> None:
        self.thresholds = thresholds or AlertThresholds()
        self._raised: dict[str, Alert] = {}
        self._lock = threading.Lock()

    def admit(self, candidates: Iterable[Alert | None]) -> list[Alert]:
        new = []
        with self._lock:
            for alert in candidates:
                if alert is not None and alert.key not in self._raised:
                    self._raised[alert.key] = alert
                    new.append(alert)
        return new

    def check_samples(self, samples: Sequence[Sample]) -> list[Alert]:
        if not samples:
            return []
        return self.admit(
            [cpu_sustained(samples, self.thresholds), memory_high(samples[-1], self.thresholds)]
        )

    def check_chunks(self, seconds: Mapping[str, float], startup: Collection[str] = ()) -> list[Alert]:
        return self.admit(slow_chunks(seconds, self.thresholds, startup))

    def check_retry(self, name: str, attempts: int) -> list[Alert]:
        return self.admit([chunk_retried(name, attempts)])

    def check_cache(self, hits: int, total: int, warm: bool) -> list[Alert]:
        return self.admit([cache_hit_rate_low(hits, total, warm, self.thresholds)])

    @property
    def raised(self) -> list[Alert]:
        with self._lock:
            return list(self._raised.values())
