"""Tasks of the SQL layer: persist a run's results, maintain the database. A few lines each over the core."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.tasks import exponential_backoff
from prefect.utilities.annotations import quote

from backtest.db.connect import open_db
from backtest.db.engine import QueryStat, describe_url, query_log
from backtest.db.optimize import maintain
from backtest.db.results import ChunkRecord, persist_ranking_run, persist_run
from backtest.engine.planning import ChunkSpec
from backtest.results.cache import CacheLayout
from backtest.results.summary import ChunkOutcome, RunSummary
from tasks.chunks import retry_transient

#: a write of a run's rows: retried twice when the database was briefly unreachable or locked, never cached
#: (the rows are its result: nothing for Prefect to keep)
_WRITE: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": exponential_backoff(backoff_factor=1),
    "retry_condition_fn": retry_transient,
    "persist_result": False,
}

__all__ = [
    "chunk_records",
    "maintain_db",
    "mark_queries",
    "persist_ranking_results",
    "persist_results",
    "record_ranking_run",
    "record_run",
    "slowest_since",
]


def mark_queries() -> dict[str, QueryStat]:
    """This process's query timings so far: the start mark of a run's query report."""
    return query_log().snapshot()


def slowest_since(mark: Mapping[str, QueryStat], n: int = 10) -> list[dict[str, Any]]:
    log = query_log()
    return [q.to_dict() for q in log.slowest(n, log.since(dict(mark)))]


def chunk_records(
    specs: Sequence[ChunkSpec], outcomes: Sequence[ChunkOutcome], cache: CacheLayout
) -> list[ChunkRecord]:
    """What the persist step needs about each chunk: its result file when it succeeded, its error if not."""
    by_name = {o.chunk: o for o in outcomes}
    records = []
    for spec in specs:
        outcome = by_name.get(spec.name)
        path = cache.result_file(spec.key)
        failed = outcome is None or outcome.failed or not path.exists()
        error = (outcome.error if outcome is not None else None) or "no result file"
        records.append(
            ChunkRecord(
                index=spec.index,
                cache_key=spec.key,
                symbols=spec.symbols,
                state="Failed" if failed else outcome.state,
                error=error if failed else None,
                result_path=None if failed else str(path),
            )
        )
    return records


@task(name="persist-results", **_WRITE)
def persist_results(
    db_url: str,
    flow_run_id: str,
    strategy: str,
    config: dict[str, Any],
    price_source: str,
    started_at: dt.datetime,
    chunks: list[ChunkRecord],
    state: str,
    summary: dict[str, Any],
    portfolio_path: str | None,
    include_oos: bool,
    collected_key: str | None = None,
) -> dict[str, Any]:
    """The run, its chunks and results in the database, one transaction per chunk (a retry replaces them);
    a warm re-run whose results an earlier run holds (same ``collected_key``) points at them instead."""
    report = persist_run(
        db_url,
        flow_run_id=flow_run_id,
        strategy=strategy,
        config=config,
        price_source=price_source,
        started_at=started_at,
        chunks=chunks,
        state=state,
        summary=summary,
        portfolio_path=portfolio_path,
        include_oos=include_oos,
        collected_key=collected_key,
    )
    if report.results_of is not None:
        get_run_logger().info(
            "run %d persisted as a pointer to the identical results of run %d in %.2f s",
            report.run_id,
            report.results_of,
            report.seconds,
        )
        return report.to_dict()
    get_run_logger().info(
        "run %d persisted: %d selections, %d metric rows, %d oos rows in %.2f s",
        report.run_id,
        report.selections,
        report.metrics,
        report.oos_rows,
        report.seconds,
    )
    return report.to_dict()


@task(name="maintain-db", persist_result=False)
def maintain_db(
    db_url: str,
    light: bool = True,
    retention_days: float | None = None,
    vacuum: bool = True,
    slowest: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A maintenance pass: light at the end of a study, full in the db-maintenance flow."""
    engine = open_db(db_url, migrate=True)
    report = maintain(
        engine, db_url, light=light, retention_days=retention_days, do_vacuum=vacuum, slowest=slowest
    )
    logger = get_run_logger()
    for plan in report.plans:
        if not plan.uses_index:
            logger.warning("query %r scans a table: %s", plan.name, plan.plan)
    for problem in report.problems:
        logger.error("integrity: %s", problem)
    return report.to_dict()


def record_run(
    db_url: str,
    price_source: str,
    specs: Sequence[ChunkSpec],
    cache: CacheLayout,
    summary: RunSummary,
    mark: Mapping[str, QueryStat],
    include_oos: bool = False,
) -> dict[str, Any]:
    """The study flow's database step: persist the run, then light maintenance with the run's slowest queries."""
    portfolio = Path(summary.out) / "portfolio.parquet"
    config = summary.config  # the parameters' public dump: a password in ``db`` is already masked
    doc = summary.to_dict()
    # the chunk records (every symbol of the study), the summary and the configuration are quoted: Prefect would
    # walk them element by element looking for futures
    persisted = persist_results(
        db_url,
        summary.flow_run_id,
        str(config.get("strategy", "")),
        quote(config),
        describe_url(price_source) if "://" in price_source else price_source,
        dt.datetime.now(dt.UTC) - dt.timedelta(seconds=float(summary.wall_seconds or 0.0)),
        quote(chunk_records(specs, summary.outcomes, cache)),
        summary.state,
        quote(doc),
        str(portfolio) if portfolio.exists() else None,
        include_oos,
        summary.collected_key,
    )
    return maintain_after(db_url, persisted, mark)


def maintain_after(db_url: str, persisted: dict[str, Any], mark: Mapping[str, QueryStat]) -> dict[str, Any]:
    """Light maintenance after a run was persisted, with the run's slowest queries; none for a run that only
    points at an earlier run's rows."""
    done = {"url": describe_url(db_url), "persisted": persisted}
    if persisted.get("results_of") is not None:
        # a pointer to an earlier run's rows: no table changed, so its statistics and query plans are what the
        # maintenance after that run left (a warm re-run skips a task run and a pass over every plan)
        return {
            **done,
            "plans_ok": None,
            "optimized": [],
            "maintenance": f"skipped: no rows written (the results are run {persisted['results_of']}'s)",
            "slowest_queries": slowest_since(mark)[:5],
        }
    report = maintain_db(db_url, light=True, slowest=slowest_since(mark))
    return {
        **done,
        "plans_ok": all(p["uses_index"] for p in report["plans"]),
        "optimized": report["optimized"],
        "slowest_queries": report["slowest_queries"][:5],
    }


@task(name="persist-ranking-results", **_WRITE)
def persist_ranking_results(
    db_url: str, price_source: str, summary: dict[str, Any], collected_key: str | None
) -> dict[str, Any]:
    """A cross-sectional run and its results (read from its output files) in the database."""
    config = summary["config"]
    report = persist_ranking_run(
        db_url,
        flow_run_id=summary["flow_run_id"],
        strategy=str(config.get("strategy", "")),
        config=config,
        price_source=describe_url(price_source) if "://" in price_source else price_source,
        started_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=float(summary.get("wall_seconds") or 0.0)),
        state=summary["state"],
        summary=summary,
        out=Path(summary["out"]),
        collected_key=collected_key,
    )
    if report.results_of is not None:
        get_run_logger().info(
            "run %d persisted as a pointer to the identical results of run %d in %.2f s",
            report.run_id,
            report.results_of,
            report.seconds,
        )
    else:
        get_run_logger().info(
            "run %d persisted: %d fold selections, %d holdings, %d portfolio days in %.2f s",
            report.run_id,
            report.selections,
            report.holdings,
            report.portfolio_rows,
            report.seconds,
        )
    return report.to_dict()


def record_ranking_run(
    db_url: str, price_source: str, summary: dict[str, Any], mark: Mapping[str, QueryStat]
) -> dict[str, Any]:
    """The cross-sectional flow's database step: persist the run, then light maintenance."""
    persisted = persist_ranking_results(db_url, price_source, quote(summary), summary.get("collected_key"))
    return maintain_after(db_url, persisted, mark)
