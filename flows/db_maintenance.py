"""The database maintenance flow, deployable on its own schedule (entrypoint
``flows/db_maintenance.py:db_maintenance``): integrity check, prune old runs, optimise, vacuum, and a report
of sizes and slowest queries as Prefect artifacts. The study flow ends with a light version of the same
pass (``tasks.db.maintain_db`` with ``light=True``)."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from backtest.db.engine import describe_url
from tasks.db import maintain_db, mark_queries, slowest_since

DEFAULT_DB = "sqlite:///data/store/backtest.db"


@flow(name="db-maintenance", log_prints=False, persist_result=False)
def db_maintenance(
    db: str = DEFAULT_DB,
    retention_days: float = 90.0,
    vacuum: bool = True,
) -> dict[str, Any]:
    """Check, prune, optimise and vacuum the database; publish its sizes and slowest queries.

    ``db``: the database URL; ``retention_days``: runs started longer ago are deleted with their results;
    ``vacuum``: reclaim free space when worthwhile (SQLite: free pages above 20% of the file).
    The flow fails when the integrity check finds a problem or a system query scans a table.
    """
    if retention_days <= 0:
        raise ValueError(f"retention_days must be positive, got {retention_days:g}")
    mark = mark_queries()
    report = maintain_db(db, light=False, retention_days=retention_days, vacuum=vacuum)
    report["slowest_queries"] = slowest_since(mark)
    _publish(db, report)
    logger = get_run_logger()
    logger.info(
        "%s: %d runs pruned, optimised (%s), vacuum %s, %d problems",
        describe_url(db),
        report["pruned_runs"],
        ", ".join(report["optimized"]),
        "done" if report["vacuum"].get("vacuumed") else "skipped",
        len(report["problems"]),
    )
    if not report["ok"]:
        scans = [p["query"] for p in report["plans"] if not p["uses_index"]]
        raise RuntimeError(
            "database maintenance found problems: "
            + "; ".join(report["problems"] + [f"query scans a table: {q}" for q in scans])
        )
    return report


def _publish(db: str, report: dict[str, Any]) -> None:
    stats = report.get("stats", {})
    tables = stats.get("tables", [])
    size = stats.get("file_bytes", stats.get("database_bytes", 0))
    lines = [
        f"# Database maintenance: {describe_url(db)}",
        "",
        f"- integrity: {'ok' if not report['problems'] else '; '.join(report['problems'])}",
        f"- runs pruned: {report['pruned_runs']}",
        f"- statistics: {', '.join(report['optimized'])}",
        f"- vacuum: {report['vacuum']}",
        f"- size: {size:,} bytes",
        f"- took {report['seconds']:.2f} s ({', '.join(f'{k} {v:.3f} s' for k, v in report['steps'].items())})",
        "",
        "| table | rows | bytes |",
        "| --- | ---: | ---: |",
        *(f"| {t['table']} | {t['rows']:,} | {t.get('bytes', '')} |" for t in tables),
        "",
        "## Slowest queries",
        "",
        "| statement | calls | total s | max s |",
        "| --- | ---: | ---: | ---: |",
        *(
            f"| `{q['statement'][:120].replace('|', '/')}` | {q['calls']} | {q['total_s']:.4f} | {q['max_s']:.4f} |"
            for q in report["slowest_queries"]
        ),
    ]
    create_markdown_artifact(
        "\n".join(lines), key="db-maintenance", description="Database maintenance report"
    )
    create_table_artifact(
        [
            {"query": p["query"], "uses_index": p["uses_index"], "plan": p["plan"][:200]}
            for p in report["plans"]
        ],
        key="db-query-plans",
        description="Query plans of the system's queries",
    )
