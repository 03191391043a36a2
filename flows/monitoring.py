"""The study flow's watcher: resource monitor, alerts as Prefect events, progress, per-chunk figures.

One object keeps the flow's own code to a few calls (``start``, ``chunk_finished``, ``finish``). The alert
rules and the analysis are the core's (backtest.observe.alerts, backtest.observe.profiling); this module decides when to run
them and turns what they find into Prefect events, log lines and artifacts.

Alerts are emitted with ``emit_event`` on the flow run as the event's resource, so they show on the flow
run's page in the UI and automations can match them (deployments/automations.py). The resource rules run on
the monitor's thread, where there is no run context, so logging uses a logger bound to the flow run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from prefect.events import emit_event
from prefect.logging.loggers import flow_run_logger

from backtest.atomic import write_json
from backtest.engine.planning import ChunkSpec
from backtest.observe.alerts import Alert, AlertBook, AlertThresholds, startup_chunks
from backtest.observe.monitor import ResourceMonitor, Sample, samples_frame, write_samples
from backtest.observe.profiling import (
    CACHED,
    COMPUTED,
    FAILED,
    FETCHED_KEY,
    PHASES,
    PROFILE_FILE,
    RESOURCES_FILE,
    RunProfile,
    analyse,
    chunk_figures,
    read_chunk_timings,
    save_profile,
    wall_timings,
)
from backtest.observe.recommendations import recommend
from flows.progress import Progress, ProgressTracker, notify
from tasks import artifacts

#: the progress artifact is updated at most this often while chunks finish (and always after the last one):
#: each update is a request the server handles on the cores the chunks compute on, and the UI shows it
#: on its next refresh anyway (the terminal's progress bar is updated on every chunk, in process)
PROGRESS_EVERY_SECONDS = 2.0


def flow_run_resource(flow_run: Any) -> dict[str, str]:
    """The event resource naming a flow run (what the UI's flow run page and automations match on)."""
    return {
        "prefect.resource.id": f"prefect.flow-run.{flow_run.id}",
        "prefect.resource.name": str(flow_run.name),
        "prefect.resource.role": "flow-run",
    }


def emit_alert(alert: Alert, flow_run: Any, logger: Any) -> None:
    """One alert: a warning log line on the flow run and a Prefect event about it."""
    logger.warning("ALERT %s: %s", alert.kind, alert.message)
    payload = {k: v for k, v in alert.to_dict().items() if k != "event"}
    emit_event(event=alert.event, resource=flow_run_resource(flow_run), payload=payload)


def _bars_per_symbol(counts: Mapping[str, Any]) -> float | None:
    """The bars the chunk size was chosen for: the summary's ``bars`` (planning.estimate_bars, the width of
    the chunks' arrays) if the flow counted it, else the stored bars per symbol (bars x combinations over
    both; smaller where symbols were listed late or delisted early)."""
    try:
        if counts.get("bars"):
            return float(counts["bars"])
        return float(counts["bars_x_combinations"]) / (
            float(counts["combinations"]) * float(counts["symbols"])
        )
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None


class RunWatch:
    """Watches one run of the study flow from start to finish."""

    def __init__(
        self, flow_run: Any, thresholds: AlertThresholds | None = None, interval: float = 1.0
    ) -> None:
        self.flow_run = flow_run
        self.book = AlertBook(thresholds)
        self.logger = flow_run_logger(flow_run=flow_run)
        self.monitor = ResourceMonitor(interval=interval, listener=self._on_sample)
        self.started = time.time()
        self.specs: dict[str, ChunkSpec] = {}
        self.results_dir = Path()
        self.tracker = ProgressTracker(0, 0)
        self.phases: Mapping[str, tuple[str, ...]] = PHASES
        self.footers = True
        self.poster: artifacts.ArtifactPoster | None = None
        self._progress_sent = float("-inf")
        self.warm = False
        self.finished: dict[str, tuple[str, dict[str, float] | None, float | None]] = {}
        self._sustain = max(self.book.thresholds.cpu_sustained_seconds, interval)
        self._out: Path | None = None
        self._summary: dict[str, Any] | None = None
        self._finished_at = 0.0

    def plan(
        self,
        specs: Sequence[ChunkSpec],
        results_dir: Path,
        phases: Mapping[str, tuple[str, ...]] = PHASES,
        footers: bool = True,
    ) -> None:
        """The chunks (tasks) of the run; warm means the cache already held a result of one of them (a stat
        each: ``results_dir / spec.key``). ``phases``: the study's phases, which the chunks' timings add up
        to; ``footers``: a result file's footer holds its chunk's timings (else only the task's return value
        has them, and a cached one has none)."""
        self.specs = {s.name: s for s in specs}
        self.results_dir = Path(results_dir)
        self.phases = phases
        self.footers = footers
        self.tracker = ProgressTracker(len(specs), sum(len(s.symbols) for s in specs))
        self.warm = any((self.results_dir / s.key).exists() for s in specs)

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def start(self) -> RunWatch:
        """Start sampling and posting (call it inside the flow run: the artifacts attach to its context)."""
        self.started = time.time()
        self.monitor.start()
        self.poster = artifacts.ArtifactPoster(self.logger)
        return self

    def post(self, what: str, call: Callable[[], Any]) -> None:
        """An artifact call on the poster's thread (directly when the watch was never started)."""
        if self.poster is not None:
            self.poster.post(what, call)
        else:
            call()

    def __enter__(self) -> RunWatch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop sampling; if the run was analysed, extend its saved series and peak RSS figures to its end
        (the summary dict the flow returns, summary.json and profile.json)."""
        self.stop()
        if self.poster is not None:
            self.poster.close()  # what is queued is posted before the flow run ends
        if self._out is None or self._summary is None:
            return
        peaks = {
            "peak_rss_bytes": self.monitor.peak_tree_rss,
            "peak_flow_process_rss_bytes": self.monitor.peak_root_rss,
            # after the analysis: summary.json, the summary artifact and building the report
            "publish_seconds": time.perf_counter() - self._finished_at,
        }
        self._summary["peak_rss_bytes"] = peaks["peak_rss_bytes"]  # the others go in the profile
        self._summary.get("profile", {}).update(peaks)
        try:
            write_samples(self.monitor.samples, self._out / RESOURCES_FILE)
            summary_path, profile_path = self._out / "summary.json", self._out / PROFILE_FILE
            if summary_path.exists():
                summary = json.loads(summary_path.read_text())
                summary["peak_rss_bytes"] = peaks["peak_rss_bytes"]
                summary.get("profile", {}).update(peaks)
                write_json(summary_path, summary)
            if profile_path.exists():
                doc = json.loads(profile_path.read_text())
                doc["profile"].update(peaks)
                write_json(profile_path, doc)
        except (OSError, ValueError, KeyError) as exc:
            self.logger.warning("could not update the peak figures in %s: %s", self._out, exc)

    def start_progress(self) -> None:
        self.tracker.started = time.perf_counter()
        if self.poster is not None:
            self.poster.start_progress(self.tracker.total_chunks)

    def stop(self) -> None:
        self.monitor.stop()

    def _emit(self, alerts: Sequence[Alert]) -> None:
        for alert in alerts:
            try:
                emit_alert(alert, self.flow_run, self.logger)
            except Exception as exc:  # an unreachable events API must not fail the study
                self.logger.warning("could not emit alert %s: %s", alert.kind, exc)

    def _on_sample(self, sample: Sample) -> None:
        try:
            since = sample.time - self._sustain - 2 * self.monitor.interval
            recent = [s for s in self.monitor.samples if s.time >= since]
            self._emit(self.book.check_samples(recent))
        except Exception as exc:  # the monitor thread must keep sampling whatever a rule does
            self.logger.warning("resource alert check failed: %s", exc)

    # -- chunks ------------------------------------------------------------------------------------------------------
    def prices_fetched(self) -> int:
        """How many chunks computed in this run read their prices from the source (no price file yet)."""
        return sum(
            bool(timings and timings.get(FETCHED_KEY)) for status, timings, _ in self.finished.values()
            if status == COMPUTED
        )  # fmt: skip

    def chunk_finished(
        self, name: str, state: Any, timings: Mapping[str, float] | None = None, cached: bool = False
    ) -> Progress:
        """Record a finished chunk, check the chunk rules, update the progress artifact and the in-process
        listener. Its ``timings`` are those the task returned, or else those of its persisted result's
        footer; ``cached``: the task found its result already there (not a Prefect cache hit)."""
        spec = self.specs[name]
        status = FAILED if state.is_failed() else CACHED if cached or state.name == "Cached" else COMPUTED
        # a cached chunk's timings are of its first run, which this run's profile does not use: reading them
        # decoded the footer of every chunk result (about 70 ms each), most of a warm run on W
        if timings is None and status == COMPUTED and self.footers:
            try:
                timings = read_chunk_timings(self.results_dir / spec.key)
            except (OSError, ValueError) as exc:
                self.logger.warning("no timings for %s: %s", name, exc)
        end = state.timestamp.timestamp() if getattr(state, "timestamp", None) else time.time()
        self.finished[name] = (status, timings, end)
        if status == COMPUTED and timings:
            self._emit(self.book.check_retry(name, int(timings.get("attempts", 1))))
            self._check_slow_chunks()
        progress = self.tracker.finished(name, len(spec.symbols), "Cached" if cached else state.name)
        now = time.perf_counter()
        last = len(self.finished) >= len(self.specs)
        # one update every PROGRESS_EVERY_SECONDS at most, and always the last
        if last or now - self._progress_sent >= PROGRESS_EVERY_SECONDS:
            if self.poster is not None:
                self.poster.progress(progress.percent, progress.describe())
            self._progress_sent = now
        notify(progress)
        return progress

    def _computed_seconds(self) -> dict[str, float]:
        out = {}
        for name, (status, timings, _) in self.finished.items():
            if status == COMPUTED and timings:
                out[name] = sum(wall_timings(timings).values())
        return out

    def _check_slow_chunks(self) -> None:
        """The slow-chunk rule over the chunks computed so far, start-up chunks left out. A chunk ran from its
        end (its final state's time) back by its task body's time; a start-up chunk still running when another
        ends started before that first end, so it is recognised as one when it finishes in turn. Tasks of
        different kinds (a cross-sectional study's score chunks and portfolio blocks, named ``chunk-...`` and
        ``block-...``) are only compared with their own kind."""
        seconds = self._computed_seconds()
        kinds: dict[str, dict[str, float]] = {}
        for name, secs in seconds.items():
            kinds.setdefault(name.partition("-")[0], {})[name] = secs
        for same in kinds.values():
            spans = {}
            for name, secs in same.items():
                end = self.finished[name][2]
                if end is not None:
                    spans[name] = (end - secs, end)
            self._emit(self.book.check_chunks(same, startup_chunks(spans)))

    def backtest_done(self) -> None:
        """After the backtest step: the slow-chunk rule against the final median, and the cache rule."""
        hits = sum(status == CACHED for status, _, _ in self.finished.values())
        self._check_slow_chunks()
        self._emit(self.book.check_cache(hits, len(self.specs), self.warm))

    def finish(
        self,
        summary: dict[str, Any],
        phases: Mapping[str, float],
        wall: float,
        out: Path,
        workers: int,
        runner: str,
    ) -> RunProfile | None:
        """Analyse the run so far, save ``profile.json`` and ``resources.parquet`` in ``out`` and add the
        headline figures to ``summary`` (written to summary.json by the flow). Sampling goes on until the flow
        returns (building the report costs memory too); ``close`` then brings the peak figures up to date.

        The study's results are already written when this runs: a failure here is logged as an error and
        recorded in the summary (``profile_error``) instead of failing the run."""
        try:
            return self._finish(summary, phases, wall, out, workers, runner)
        except Exception as exc:
            self.logger.error("the run's profile could not be built: %s: %s", type(exc).__name__, exc)
            summary["profile_error"] = f"{type(exc).__name__}: {exc}"
            return None

    def _finish(
        self,
        summary: dict[str, Any],
        phases: Mapping[str, float],
        wall: float,
        out: Path,
        workers: int,
        runner: str,
    ) -> RunProfile:
        self.monitor.sample()
        samples = self.monitor.samples
        frame = samples_frame(samples)
        chunks = []
        for name, spec in self.specs.items():
            status, timings, end = self.finished.get(name, (FAILED, None, None))
            chunks.append(chunk_figures(name, len(spec.symbols), status, timings, end, frame, self.phases))
        profile = analyse(
            chunks=chunks,
            steps=phases,
            flow_start=self.started,
            wall=wall,
            workers=workers,
            runner=runner,
            chunk_size=max((len(s.symbols) for s in self.specs.values()), default=1),
            samples=frame,
            warm=self.warm,
            cores=self.monitor.cores,
            monitor_overhead=self.monitor.overhead_fraction(),
            phases=self.phases,
        )
        recs = recommend(profile, _bars_per_symbol(summary.get("counts", {})))
        alerts = self.alerts
        save_profile(out, profile, recs, alerts, samples)
        self._out, self._summary, self._finished_at = out, summary, time.perf_counter()
        summary.update(
            peak_rss_bytes=profile.peak_rss,
            parallel_efficiency=profile.parallel_efficiency,
            cache_hit_rate=profile.cache_hit_rate,
            orchestration_overhead_seconds=profile.orchestration_overhead,
            bottleneck=profile.bottleneck,
            alerts=[a.to_dict() for a in alerts],
            recommendations=[r.advice for r in recs],
            profile=profile.summary(),
        )
        return profile

    @property
    def alerts(self) -> list[Alert]:
        return self.book.raised
