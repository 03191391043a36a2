"""The report task: build report.html and its plots from a run's saved files, publish the report artifacts."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from backtest.observe.preload import preload
from backtest.observe.profiling import PROFILE_FILE, REPORT_FILE
from tasks.artifacts import ArtifactPoster


def preload_report() -> threading.Thread:
    """Start importing the report's plots (matplotlib) on a background thread, once per process. Call it when
    a flow starts that will draw them (``must_draw``): the import then overlaps the run instead of delaying
    ``publish_report`` at its end."""
    return preload("backtest.observe.plots", "warm_text")


def must_draw(results_cache: Path, titles: dict[str, str]) -> bool:
    """Whether a report of these results draws a plot: not when the plot cache holds every result plot."""
    from backtest.observe.report import RESULT_PLOTS, cached_plots

    wanted = [name for name in titles if name in RESULT_PLOTS]
    return len(cached_plots(results_cache, wanted)) < len(wanted)


@task(name="build-report", persist_result=False, retries=0)
def publish_report(out: str, results_cache: str | None = None) -> str:
    """Plots and report.html in ``out``; a markdown artifact (summary, bottlenecks, recommendations) and a
    table artifact of per-chunk figures on the flow run. Returns the report's path.

    ``results_cache`` is the cache entry of the run's merged tables: the plots drawn from those tables alone
    are kept there and reused by every run with the same results (a warm re-run draws only two plots). The
    artifacts need only the saved summary: they are posted by an ``ArtifactPoster`` while the plots are drawn
    (their API round trips were a sizeable share of a warm run's report), and a failed post is a warning, as
    for the flow's other artifacts: the report itself is the file.
    """
    from backtest.observe.report import build_report, plot_cache_dir  # matplotlib: only here (or preloaded)

    folder = Path(out)
    plot_cache = plot_cache_dir(Path(results_cache)) if results_cache else None
    poster = ArtifactPoster(get_run_logger())  # in this task run's context
    poster.post("the report's artifacts", lambda: _post_artifacts(folder))
    try:
        files = build_report(folder, plot_cache)
    finally:
        poster.close()
    return str(files.html)


def _post_artifacts(folder: Path) -> None:
    from backtest.observe.report import report_markdown

    summary = json.loads((folder / "summary.json").read_text())
    doc_path = folder / PROFILE_FILE
    doc = json.loads(doc_path.read_text()) if doc_path.exists() else None
    create_markdown_artifact(
        markdown=report_markdown(summary, doc, folder / REPORT_FILE),
        key="study-report",
        description="Run report: summary, bottlenecks, recommendations",
    )
    if doc and doc.get("chunks"):
        create_table_artifact(
            table=doc["chunks"], key="study-chunk-profile", description="Per-chunk time, CPU, memory"
        )
