"""The query optimiser's side of the SQL layer: query-plan checks, statistics, vacuum, integrity, pruning.

- ``SYSTEM_QUERIES`` lists every query the system makes against a large table, built by the same functions
  the code runs, with representative values. ``check_query_plans`` EXPLAINs each (``EXPLAIN QUERY PLAN`` on
  SQLite, ``EXPLAIN`` on PostgreSQL) and raises ``QueryPlanError`` naming the query and the plan when one
  scans a table instead of searching an index. On PostgreSQL the check runs with ``enable_seqscan`` off:
  on small tables the planner rightly prefers a sequential scan, so the question asked is "can an index
  serve this query", which is what a missing index breaks.
- ``optimize`` refreshes planner statistics of the tables a run writes: a sampled ``ANALYZE`` of each on
  both backends (SQLite: ``analysis_limit`` rows per index, about a millisecond a table); ``full`` runs a
  complete ``ANALYZE`` and ``PRAGMA optimize`` on SQLite. (``PRAGMA optimize`` alone looks only at tables
  the connection itself has queried, before SQLite 3.46: on the fresh connection maintenance opens it did
  nothing at all.)
- ``vacuum`` rebuilds the file only when worthwhile: on SQLite when free pages exceed ``min_free_ratio``
  of the file (after pruning runs, say); on PostgreSQL ``VACUUM (ANALYZE)`` always (it is incremental).
- ``integrity_check`` runs SQLite's ``quick_check``/``integrity_check`` plus logical checks on both
  backends: the catalog's row counts must match the stored prices, or chunk fingerprints (which come from
  the catalog) would be stale.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from backtest.db import schema as s
from backtest.db.engine import DatabaseError, connection, is_sqlite, sqlite_path, write_txn
from backtest.db.prices import count_query, price_query
from backtest.db.results import latest_run_query, release_results
from backtest.db.sqlio import Explain

__all__ = [
    "SYSTEM_QUERIES",
    "MaintenanceReport",
    "PlanCheck",
    "QueryPlanError",
    "check_query_plans",
    "integrity_check",
    "optimize",
    "prune_runs",
    "table_stats",
    "vacuum",
]


class QueryPlanError(DatabaseError):
    """A query the system makes would scan a whole table: an index is missing or unusable."""


_SYMS = ["AAA", "BBB", "CCC"]
_DAY = dt.date(2020, 1, 1)


def _chunk_prices() -> sa.Executable:
    p = s.prices.c
    return price_query([p.symbol.in_(_SYMS), p.date <= _DAY], with_symbol=False)


def _chunk_counts() -> sa.Executable:
    p = s.prices.c
    return count_query([p.symbol.in_(_SYMS), p.date <= _DAY])


def _by_run(table: sa.Table) -> Callable[[], sa.Executable]:
    return lambda: sa.select(table).where(table.c.run_id == 1)


def _by_symbol(table: sa.Table) -> Callable[[], sa.Executable]:
    return lambda: sa.select(table).where(table.c.symbol == "AAA").order_by(table.c.run_id)


def _delete_chunk(table: sa.Table) -> Callable[[], sa.Executable]:
    return lambda: sa.delete(table).where(table.c.run_id == 1, table.c.symbol.in_(_SYMS))


#: name -> statement factory (the catalog is read whole to plan a study: small by design, not listed)
SYSTEM_QUERIES: dict[str, Callable[[], sa.Executable]] = {
    "chunk prices (study load)": _chunk_prices,
    "chunk row counts (study load)": _chunk_counts,
    "catalog rows of a chunk": lambda: sa.select(s.symbols.c.symbol).where(s.symbols.c.symbol.in_(_SYMS)),
    "symbol replace (ingest)": lambda: sa.delete(s.prices).where(s.prices.c.symbol.in_(_SYMS)),
    "latest run": latest_run_query,
    "runs of a strategy": lambda: (
        sa.select(s.runs).where(s.runs.c.strategy == "sma_crossover").order_by(s.runs.c.started_at.desc())
    ),
    "runs older than retention (prune)": lambda: sa.select(s.runs.c.id).where(s.runs.c.started_at < _DAY),
    "run by flow run id": lambda: sa.select(s.runs.c.id).where(s.runs.c.flow_run_id == "x"),
    "chunks of a run": _by_run(s.chunks),
    "selections of a run": _by_run(s.selections),
    "metrics of a run": _by_run(s.symbol_metrics),
    "portfolio of a run": _by_run(s.portfolio),
    "holdings of a run": _by_run(s.holdings),
    "oos returns of a run and symbol": lambda: sa.select(s.oos_returns).where(
        s.oos_returns.c.run_id == 1, s.oos_returns.c.symbol == "AAA"
    ),
    "selections of a symbol across runs": _by_symbol(s.selections),
    "metrics of a symbol across runs": _by_symbol(s.symbol_metrics),
    "chunk rewrite: selections": _delete_chunk(s.selections),
    "chunk rewrite: metrics": _delete_chunk(s.symbol_metrics),
    "chunk rewrite: oos returns": _delete_chunk(s.oos_returns),
}

#: queries that walk an index in order and stop at a LIMIT: "SCAN ... USING INDEX" is right for them
_INDEX_WALK_OK = frozenset({"latest run"})


@dataclass(frozen=True)
class PlanCheck:
    name: str
    plan: str
    uses_index: bool

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.name, "uses_index": self.uses_index, "plan": self.plan}


def _leading_columns(conn: Connection, schema: str | None = None) -> dict[str, str]:
    """Index name -> its first column, for the tables of our schema (PostgreSQL)."""
    inspector = sa.inspect(conn)
    out: dict[str, str] = {}
    for table in s.metadata.tables:
        pk = inspector.get_pk_constraint(table, schema=schema)
        if pk.get("name") and pk.get("constrained_columns"):
            out[str(pk["name"])] = str(pk["constrained_columns"][0])
        for index in inspector.get_indexes(table, schema=schema):
            if index.get("column_names") and index["column_names"][0]:
                out[str(index["name"])] = str(index["column_names"][0])
        for unique in inspector.get_unique_constraints(table, schema=schema):
            if unique.get("name") and unique.get("column_names"):
                out[str(unique["name"])] = str(unique["column_names"][0])
    return out


_PG_NAMESPACE = sa.table("pg_namespace", sa.column("oid"), sa.column("nspname"))


def _pg_without_statistics(conn: Connection) -> dict[str, str]:
    """Shadow each of our tables, for this transaction only, with an empty temporary copy that has the same
    indexes and no statistics (temporary tables come first in the search path); returns their leading
    columns by index name."""
    prep = conn.dialect.identifier_preparer
    home = str(conn.execute(sa.select(sa.func.current_schema())).scalar())
    existing = set(sa.inspect(conn).get_table_names(schema=home))
    for table in s.metadata.sorted_tables:
        if table.name in existing:
            name = prep.quote(table.name)
            conn.exec_driver_sql(
                f"CREATE TEMPORARY TABLE {name} (LIKE {prep.quote_schema(home)}.{name} INCLUDING INDEXES) "
                "ON COMMIT DROP"
            )
    temp = conn.execute(
        sa.select(_PG_NAMESPACE.c.nspname).where(_PG_NAMESPACE.c.oid == sa.func.pg_my_temp_schema())
    ).scalar()
    return _leading_columns(conn, schema=str(temp))


def _plan_lines(conn: Connection, statement: sa.Executable, first_columns: dict[str, str]) -> list[str]:
    """SQLite: the plan's detail lines. PostgreSQL: one line per plan node, from ``EXPLAIN (FORMAT JSON)``,
    marked ``FULL`` when an index scan has no index condition (it reads the whole index)."""
    rows = conn.execute(Explain(statement)).all()
    if is_sqlite(conn):
        return [str(row[-1]) for row in rows]  # (id, parent, notused, detail)
    raw = rows[0][0]
    tree = json.loads(raw) if isinstance(raw, str) else raw
    lines: list[str] = []

    def walk(node: dict[str, Any], depth: int) -> None:
        kind = str(node.get("Node Type", "?"))
        text = kind + (f" on {node['Relation Name']}" if "Relation Name" in node else "")
        if "Index Name" in node:
            text += f" using {node['Index Name']}"
        if kind in _PG_INDEX_NODES:
            cond = node.get("Index Cond")
            leading = first_columns.get(str(node.get("Index Name")))
            # without a condition on its leading column an index scan reads the whole index
            bounded = cond and (leading is None or re.search(rf"\(\(?{re.escape(leading)}\b", cond))
            text += f" ({cond})" + ("" if bounded else " FULL") if cond else " FULL"
        lines.append("  " * depth + text)
        for child in node.get("Plans", []):
            walk(child, depth + 1)

    walk(tree[0]["Plan"], 0)
    return lines


_PG_INDEX_NODES = frozenset({"Index Scan", "Index Only Scan", "Bitmap Index Scan"})


def _scans(conn: Connection, lines: list[str], index_walk_ok: bool = False) -> bool:
    ours = set(s.metadata.tables)
    for line in lines:
        words = line.strip().split()
        if is_sqlite(conn):
            # "SCAN prices" or "SCAN prices USING COVERING INDEX ..." read the whole table or index;
            # "SEARCH ..." is a key range, "USE TEMP B-TREE" a sort. An index walked in order and stopped
            # by LIMIT (the newest run) reads one entry, not the table.
            walk = index_walk_ok and "INDEX" in words
            if len(words) >= 2 and words[0] == "SCAN" and words[1] in ours and not walk:
                return True
        elif line.strip().startswith("Seq Scan") or (words and words[-1] == "FULL" and not index_walk_ok):
            return True
    return False


def explain_all(conn: Connection) -> list[PlanCheck]:
    """The plans of every system query (PostgreSQL: inside a transaction with sequential scans disabled)."""
    checks = []
    first_columns: dict[str, str] = {}
    if not is_sqlite(conn):
        conn.execute(sa.select(sa.func.set_config("enable_seqscan", "off", True)))
        first_columns = _pg_without_statistics(conn)
    for name, factory in SYSTEM_QUERIES.items():
        lines = _plan_lines(conn, factory(), first_columns)
        walk_ok = name in _INDEX_WALK_OK
        checks.append(PlanCheck(name, " | ".join(lines), not _scans(conn, lines, walk_ok)))
    return checks


_SQLITE_MASTER = sa.table("sqlite_master", sa.column("name"), sa.column("sql"))


def _sqlite_without_statistics(conn: Connection) -> Engine:
    """A private in-memory copy of the database's schema (tables and indexes, no rows, no statistics).

    With statistics the planner rightly scans a 3-row table; the question here is whether an index *can*
    serve each query, which is what a dropped or never-created index breaks.
    """
    ddl = conn.execute(
        sa.select(_SQLITE_MASTER.c.sql).where(
            _SQLITE_MASTER.c.sql.is_not(None), _SQLITE_MASTER.c.name.not_like("sqlite_%")
        )
    ).scalars()
    scratch = sa.create_engine("sqlite://", poolclass=sa.pool.StaticPool)
    with scratch.begin() as copy:
        for statement in ddl:
            copy.exec_driver_sql(statement)
    return scratch


def check_query_plans(engine: Engine, *, raise_on_scan: bool = True) -> list[PlanCheck]:
    """EXPLAIN every system query; raise ``QueryPlanError`` listing those that scan a table."""
    if is_sqlite(engine):
        with connection(engine) as conn:
            scratch = _sqlite_without_statistics(conn)
        with scratch.connect() as conn:
            checks = explain_all(conn)
        scratch.dispose()
    else:
        with connection(engine) as conn, conn.begin():
            checks = explain_all(conn)
            conn.rollback()
    bad = [c for c in checks if not c.uses_index]
    if bad and raise_on_scan:
        detail = "; ".join(f"{c.name}: {c.plan}" for c in bad)
        raise QueryPlanError(
            f"{len(bad)} system quer{'y scans' if len(bad) == 1 else 'ies scan'} a table: {detail}"
        )
    return checks


def _autocommit(engine: Engine) -> contextlib.AbstractContextManager[Connection]:
    return connection(engine, isolation_level="AUTOCOMMIT")


#: rows per index a light ANALYZE reads on SQLite (SQLite's documentation suggests a few hundred to a thousand)
SQLITE_ANALYSIS_LIMIT = 1000


def optimize(engine: Engine, *, full: bool = False) -> list[str]:
    """Refresh the planner's statistics; returns the statements run.

    Light (the end of every study): a sampled ANALYZE of the result tables a run writes, not of a price table
    of tens of millions of rows.
    """
    quote = engine.dialect.identifier_preparer.quote
    written = (s.runs, s.chunks, s.selections, s.symbol_metrics, s.portfolio, s.oos_returns, s.holdings)
    if is_sqlite(engine) and full:
        statements = ["ANALYZE", "PRAGMA optimize"]
    elif is_sqlite(engine):
        # sampled: a full ANALYZE grows with the tables after many runs, a sampled one stays near-instant
        statements = [f"PRAGMA analysis_limit = {SQLITE_ANALYSIS_LIMIT}"]
        statements += [f"ANALYZE {quote(t.name)}" for t in written]
    elif full:
        statements = ["ANALYZE"]
    else:
        statements = [f"ANALYZE {', '.join(quote(t.name) for t in written)}"]
    with _autocommit(engine) as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)
    return statements


def sqlite_pages(engine: Engine) -> tuple[int, int, int]:
    """(page size, pages, free pages) of a SQLite file."""
    with connection(engine) as conn:
        size = int(conn.exec_driver_sql("PRAGMA page_size").scalar() or 0)
        pages = int(conn.exec_driver_sql("PRAGMA page_count").scalar() or 0)
        free = int(conn.exec_driver_sql("PRAGMA freelist_count").scalar() or 0)
    return size, pages, free


def vacuum(engine: Engine, *, min_free_ratio: float = 0.2, force: bool = False) -> dict[str, Any]:
    """VACUUM when worthwhile; returns what was found and done."""
    if not is_sqlite(engine):
        with _autocommit(engine) as conn:
            conn.exec_driver_sql("VACUUM (ANALYZE)")
        return {"vacuumed": True, "reason": "PostgreSQL VACUUM (ANALYZE) is incremental"}
    size, pages, free = sqlite_pages(engine)
    ratio = free / pages if pages else 0.0
    report: dict[str, Any] = {"pages": pages, "free_pages": free, "free_ratio": round(ratio, 4)}
    if not force and ratio < min_free_ratio:
        report.update(vacuumed=False, reason=f"free pages {ratio:.1%} < {min_free_ratio:.0%}")
        return report
    with _autocommit(engine) as conn:
        conn.exec_driver_sql("VACUUM")
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    report.update(vacuumed=True, reclaimed_bytes=(free - sqlite_pages(engine)[2]) * size)
    return report


def integrity_check(engine: Engine, *, quick: bool = False) -> list[str]:
    """Problems found (empty: healthy)."""
    problems: list[str] = []
    with connection(engine) as conn:
        if is_sqlite(conn):
            pragma = "PRAGMA quick_check" if quick else "PRAGMA integrity_check"
            lines = [str(r[0]) for r in conn.exec_driver_sql(pragma)]
            problems += [f"sqlite: {line}" for line in lines if line != "ok"]
            problems += [f"foreign key: {tuple(r)}" for r in conn.exec_driver_sql("PRAGMA foreign_key_check")]
        if not quick:
            counted = (
                sa.select(s.prices.c.symbol, sa.func.count().label("n"))
                .group_by(s.prices.c.symbol)
                .subquery()
            )
            drift = conn.execute(
                sa.select(s.symbols.c.symbol, s.symbols.c.rows, sa.func.coalesce(counted.c.n, 0))
                .select_from(s.symbols.outerjoin(counted, counted.c.symbol == s.symbols.c.symbol))
                .where(s.symbols.c.rows != sa.func.coalesce(counted.c.n, 0))
                .limit(20)
            ).all()
            problems += [
                f"catalog drift: {sym!r} catalogued with {rows} rows, {n} stored (re-ingest it)"
                for sym, rows, n in drift
            ]
    return problems


def table_stats(engine: Engine, url: str) -> dict[str, Any]:
    """Row counts per table and sizes: the file (SQLite) or each table with its indexes (PostgreSQL)."""
    out: dict[str, Any] = {"backend": engine.dialect.name, "tables": []}
    with connection(engine) as conn:
        for table in s.metadata.sorted_tables:
            rows = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()
            entry: dict[str, Any] = {"table": table.name, "rows": int(rows or 0)}
            if not is_sqlite(conn):
                entry["bytes"] = int(
                    conn.execute(sa.select(sa.func.pg_total_relation_size(table.name))).scalar() or 0
                )
            out["tables"].append(entry)
    if is_sqlite(engine):
        path = sqlite_path(url)
        size, pages, free = sqlite_pages(engine)
        wal = path.with_name(path.name + "-wal") if path else None
        out.update(
            file_bytes=size * pages,
            free_bytes=size * free,
            wal_bytes=wal.stat().st_size if wal and wal.exists() else 0,
        )
    else:
        with connection(engine) as conn:
            out["database_bytes"] = int(
                conn.execute(sa.select(sa.func.pg_database_size(sa.func.current_database()))).scalar() or 0
            )
    return out


def prune_runs(engine: Engine, retention_days: float, *, now: dt.datetime | None = None) -> int:
    """Delete runs started more than ``retention_days`` ago (their results cascade, except results a kept
    run points at: those move to that run first); returns how many."""
    cutoff = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=retention_days)
    with write_txn(engine) as conn:
        ids = conn.execute(sa.select(s.runs.c.id).where(s.runs.c.started_at < cutoff)).scalars().all()
        if ids:
            release_results(conn, ids)
            conn.execute(sa.delete(s.runs).where(s.runs.c.id.in_(ids)))
    return len(ids)


@dataclass(frozen=True)
class MaintenanceReport:
    """What a maintenance pass found and did, for the flow's artifact and summary."""

    problems: list[str]
    optimized: list[str]
    vacuum: dict[str, Any]
    pruned_runs: int
    plans: list[PlanCheck]
    stats: dict[str, Any]
    slowest: list[dict[str, Any]]
    seconds: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems and all(p.uses_index for p in self.plans)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problems": self.problems,
            "optimized": self.optimized,
            "vacuum": self.vacuum,
            "pruned_runs": self.pruned_runs,
            "plans": [p.to_dict() for p in self.plans],
            "stats": self.stats,
            "slowest_queries": self.slowest,
            "seconds": round(self.seconds, 3),
            "steps": {k: round(v, 4) for k, v in self.steps.items()},
        }


def maintain(
    engine: Engine,
    url: str,
    *,
    light: bool,
    retention_days: float | None = None,
    do_vacuum: bool = True,
    slowest: list[dict[str, Any]] | None = None,
) -> MaintenanceReport:
    """A maintenance pass. ``light`` (the end of every study): a sampled ANALYZE and the plan check
    only, milliseconds. Full: integrity check with catalog drift, prune, full ANALYZE, vacuum when
    worthwhile, sizes."""
    t0 = time.perf_counter()
    steps: dict[str, float] = {}

    def step(name: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        value = fn()
        steps[name] = time.perf_counter() - t
        return value

    # even a quick check reads every page: too slow for the end of every study over a large database
    problems: list[str] = [] if light else step("integrity", lambda: integrity_check(engine))
    pruned = 0
    if not light and retention_days is not None:
        pruned = step("prune", lambda: prune_runs(engine, retention_days))
    optimized = step("optimize", lambda: optimize(engine, full=not light))
    vac: dict[str, Any] = {"vacuumed": False, "reason": "light maintenance"}
    if not light and do_vacuum:
        vac = step("vacuum", lambda: vacuum(engine))
    plans = step("query_plans", lambda: check_query_plans(engine, raise_on_scan=False))
    stats = {} if light else step("stats", lambda: table_stats(engine, url))
    return MaintenanceReport(
        problems, optimized, vac, pruned, plans, stats, slowest or [], time.perf_counter() - t0, steps
    )
