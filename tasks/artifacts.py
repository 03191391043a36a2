"""Prefect artifacts of a study: live progress, a per-chunk table and a markdown summary."""

from __future__ import annotations

import contextvars
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from backtest.engine.metrics import HEADLINE_METRICS
from backtest.overfitting.trials import luck_table


def start_progress(total: int) -> UUID | None:
    return create_progress_artifact(progress=0.0, key="study-progress", description=f"0/{total} chunks")


def update_progress(artifact_id: UUID | None, percent: float, description: str) -> None:
    """Percent done, with chunks done, symbols per second and the ETA in the description."""
    if artifact_id is not None:
        update_progress_artifact(artifact_id=artifact_id, progress=percent, description=description)


def chunk_table(rows: Sequence[dict[str, Any]]) -> None:
    create_table_artifact(table=list(rows), key="study-chunks", description="Results and timings per chunk")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "n/a" if value is None else str(value)


def summary_markdown(text: str) -> None:
    """The study's summary (``summary_text``) as a markdown artifact."""
    create_markdown_artifact(markdown=text, key="study-summary", description="Study summary")


def summary_text(summary: dict[str, Any]) -> str:
    fig = summary.get("figures", {})
    port, bench = fig.get("portfolio", {}), fig.get("benchmark", {})
    cfg = summary["config"]
    ranking = summary.get("kind") == "cross_sectional"
    lines = [
        f"# {'Cross-sectional' if ranking else 'Three-phase'} study: {cfg['strategy']}",
        "",
        f"State **{summary['state']}** in {summary['wall_seconds']:.1f} s; "
        f"{summary['counts']['symbols']} symbols in {summary['counts']['chunks']} "
        f"{'tasks (score chunks and portfolio blocks)' if ranking else 'chunks'}, "
        f"{summary['counts']['folds']} folds, {summary['counts']['combinations']} combinations; "
        f"cache hits {summary['cache']['hits']}, misses {summary['cache']['misses']}.",
        "",
    ]
    if summary.get("failed_chunks"):
        lines += (
            ["## Failed chunks", ""]
            + [f"- `{c['chunk']}`: {c['error']}" for c in summary["failed_chunks"]]
            + [""]
        )
    if port:
        lines += [
            f"Out of sample from {fig.get('oos_start')} to {fig.get('oos_end')}.",
            "",
            f"| metric | portfolio | {'equal-weight universe' if ranking else 'buy and hold'} |",
            "| --- | --- | --- |",
        ]
        for key in HEADLINE_METRICS:
            lines.append(f"| {key} | {_fmt(port.get(key))} | {_fmt(bench.get(key))} |")
        lines += [
            "",
            f"Mean score of the selected combinations: in sample {_fmt(fig.get('mean_in_sample_score'))}, "
            f"validation {_fmt(fig.get('mean_validation_score'))}, test {_fmt(fig.get('mean_test_score'))} "
            f"(degradation in sample - validation {_fmt(fig.get('mean_degradation'))}).",
        ]
    luck = fig.get("overfitting")
    if luck:
        lines += ["", "## How much could be luck", "", f"{luck.get('verdict', '')}.", ""]
        lines += ["| statistic | value | meaning |", "| --- | --- | --- |"]
        lines += [f"| {r['statistic']} | {_fmt(r['value'])} | {r['meaning']} |" for r in luck_table(luck)]
    lines += ["", "| phase | seconds |", "| --- | --- |"]
    lines += [f"| {k} | {v:.2f} |" for k, v in summary.get("phase_seconds", {}).items()]
    return "\n".join(lines)


class ArtifactPoster:
    """Posts a flow run's artifacts from one background thread, in the order asked, so that the flow's own
    thread never waits for an API round trip.

    The flow's thread takes each finished chunk in turn: a progress update on it costs an API round trip
    per chunk, time in which the next finished chunks wait, and on a warm run that thread is what the cached
    chunks queue behind. Progress updates coalesce: the latest one not yet posted replaces the one
    before it. A post that fails is logged as a warning: artifacts show a run, they are not its results.
    ``close`` posts what is queued and waits for it, before the flow run ends.
    """

    def __init__(self, logger: Any) -> None:
        self._logger = logger
        self._cond = threading.Condition()
        self._jobs: deque[tuple[str, Callable[[], Any]]] = deque()
        self._progress: tuple[float, str] | None = None
        self._progress_id: UUID | None = None
        self._closed = False
        context = contextvars.copy_context()  # the flow run's: artifacts attach to it
        self._thread = threading.Thread(
            target=context.run, args=(self._run,), name="artifact-poster", daemon=True
        )
        self._thread.start()

    def post(self, what: str, call: Callable[[], Any]) -> None:
        """Run ``call`` (one artifact call; ``what`` names it in a warning) on the poster's thread."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the artifact poster is closed")
            self._jobs.append((what, call))
            self._cond.notify()

    def start_progress(self, total: int) -> None:
        self.post("the progress artifact", lambda: self._set_progress_id(start_progress(total)))

    def progress(self, percent: float, description: str) -> None:
        with self._cond:
            self._progress = (percent, description)
            self._cond.notify()

    def close(self, timeout: float = 60.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._logger.warning("artifacts still being posted after %.0f s: left behind", timeout)

    def _set_progress_id(self, artifact_id: UUID | None) -> None:
        self._progress_id = artifact_id

    def _next(self) -> tuple[str, Callable[[], Any]] | None:
        with self._cond:
            while not self._jobs and self._progress is None and not self._closed:
                self._cond.wait()
            if self._jobs:
                return self._jobs.popleft()
            if self._progress is not None:
                (percent, description), self._progress = self._progress, None
                artifact_id = self._progress_id
                return "a progress update", lambda: update_progress(artifact_id, percent, description)
            return None  # closed, and nothing left

    def _run(self) -> None:
        while (job := self._next()) is not None:
            what, call = job
            try:
                call()
            except Exception as exc:  # an unreachable API must not fail the study
                self._logger.warning("could not post %s: %s", what, exc)
