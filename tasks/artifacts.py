"""Prefect artifacts of a study: live progress, a per-chunk table and a markdown summary."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from backtest.metrics import HEADLINE_METRICS


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


def summary_markdown(summary: dict[str, Any]) -> None:
    fig = summary.get("figures", {})
    port, bench = fig.get("portfolio", {}), fig.get("benchmark", {})
    cfg = summary["config"]
    lines = [
        f"# Three-phase study: {cfg['strategy']}",
        "",
        f"State **{summary['state']}** in {summary['wall_seconds']:.1f} s; "
        f"{summary['counts']['symbols']} symbols in {summary['counts']['chunks']} chunks, "
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
            "| metric | portfolio | buy and hold |",
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
    lines += ["", "| phase | seconds |", "| --- | --- |"]
    lines += [f"| {k} | {v:.2f} |" for k, v in summary.get("phase_seconds", {}).items()]
    create_markdown_artifact(markdown="\n".join(lines), key="study-summary", description="Study summary")
