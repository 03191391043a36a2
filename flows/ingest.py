"""The ingest flow: a folder of price files into the store, with a summary artifact for the UI."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import Completed, Failed

from backtest.data.ingest import OUTCOMES
from tasks.ingest import IngestSummary, ingest_prices_task


@flow(name="ingest-prices", persist_result=False)
def ingest_prices(
    source: str = "data/incoming", store: str = "data/store", workers: int | None = None
) -> Any:
    """Validate every price file of a folder into the store; bad rows are quarantined, never lost.

    Args:
        source: Folder of per-symbol price files (*.csv, *.txt), relative to the project folder or absolute.
        store: Folder of the price store that the study reads (created when missing).
        workers: Reader processes (default: one per CPU).
    """
    summary = ingest_prices_task(source, store, workers)
    create_markdown_artifact(
        markdown=summary_markdown(summary), key="ingest-summary", description="Ingest summary"
    )
    totals = summary.totals
    line = (
        f"{totals['files']} files: {totals['added']} added, {totals['replaced']} replaced, "
        f"{totals['unchanged']} unchanged, {totals['failed']} failed; {totals['rejected_rows']} rows rejected"
    )
    get_run_logger().info("%s -> %s: %s", source, store, line)
    if not summary.ok:
        reason = "no file could be ingested" if totals["files"] else f"no *.csv or *.txt files in {source}"
        # no data on a Failed state: Prefect takes a Failed state's data for the exception that failed it
        return Failed(message=f"{reason} ({line})")
    return Completed(message=line, data=summary.model_dump())


def summary_markdown(summary: IngestSummary) -> str:
    """Outcomes, totals and the first problems: enough to decide whether the night's data is usable."""
    totals = summary.totals
    lines = [
        f"# Ingest {summary.source} -> {summary.store}",
        "",
        f"{'Usable' if summary.ok else '**Nothing usable**'}: {totals['rows']:,} rows stored, "
        f"{totals['rejected_rows']:,} rows rejected in {summary.elapsed_s:.1f} s.",
        "",
        "| outcome | files |",
        "| --- | --- |",
        *(f"| {outcome} | {totals[outcome]:,} |" for outcome in OUTCOMES),
    ]
    if summary.problems:
        lines += ["", f"## Problems (first {len(summary.problems)} of {totals['problems']:,})", ""]
        lines += ["| file | line | reason |", "| --- | --- | --- |"]
        for p in summary.problems:
            reason = str(p["reason"]).replace("|", "\\|")
            lines.append(f"| {p['file']} | {p['line'] if p['line'] is not None else 'file'} | {reason} |")
    return "\n".join(lines)
