"""A study run's results in the database: the run, its chunks, selections, metrics, portfolio, oos returns.

Writes are one transaction per chunk: a crash leaves each chunk's rows complete or absent, never half of a
chunk. Every write first deletes what the same run already holds for the chunk's symbols, so re-writing a
chunk (a retried flow run persisting again) replaces it instead of failing on the primary key or doubling
it. Runs are identified by their Prefect flow run id, so persisting the same flow run twice reuses its row.

Out-of-sample returns are the only large table (millions of rows for the reference workload W): they
are written only when asked (``include_oos``), since the study's Parquet output already holds them and
writing them costs seconds per million rows on SQLite (see benchmarks/README.md).

Reads used by ``backtest results`` go through a small TTL cache: the same run or symbol is often looked up
repeatedly (a notebook, a dashboard refreshing), and a finished run's results never change.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from cachetools import TTLCache, cached
from cachetools.keys import hashkey
from sqlalchemy.engine import Connection

from backtest.db import schema as s
from backtest.db.connect import open_db
from backtest.db.engine import DatabaseError, connection, db_errors, read_txn
from backtest.db.sqlio import bulk_insert
from backtest.engine.metrics import METRIC_NAMES
from backtest.results.chunkio import read_tables

__all__ = [
    "ChunkRecord",
    "PersistReport",
    "RunRecord",
    "find_results",
    "finish_run",
    "persist_run",
    "point_at_results",
    "read_chunk_tables",
    "read_metrics",
    "read_run",
    "read_selections",
    "release_results",
    "results_key_of",
    "start_run",
    "write_chunk",
]

_SEL_DATES = ("train_start", "train_end", "validate_start", "validate_end", "test_start", "test_end")
_SEL_FLOATS = ("is_score", "val_score", "test_score", "degradation", "test_return")
RESULT_TTL_SECONDS = 10.0
_RESULT_CACHE: TTLCache[Any, Any] = TTLCache(maxsize=256, ttl=RESULT_TTL_SECONDS)


@dataclass(frozen=True)
class ChunkRecord:
    """One chunk of a run as the persist step sees it: where its result file is, or why it failed."""

    index: int
    cache_key: str
    symbols: tuple[str, ...]
    state: str
    error: str | None = None
    result_path: str | None = None


@dataclass(frozen=True)
class PersistReport:
    run_id: int
    chunks: int
    selections: int
    metrics: int
    oos_rows: int
    portfolio_rows: int
    seconds: float
    chunk_seconds: list[float] = field(default_factory=list)
    #: the earlier run whose identical results this run points at (nothing rewritten), or None
    results_of: int | None = None
    holdings: int = 0  # rows of a cross-sectional run's holdings

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("run_id", "chunks", "selections", "metrics", "oos_rows")}
        out["portfolio_rows"] = self.portfolio_rows
        out["results_of"] = self.results_of
        if self.holdings:
            out["holdings"] = self.holdings
        out["seconds"] = round(self.seconds, 3)
        out["max_chunk_seconds"] = round(max(self.chunk_seconds, default=0.0), 3)
        return out


def read_chunk_tables(
    path: Path | str, names: Sequence[str]
) -> tuple[tuple[str, ...], dict[str, pd.DataFrame]]:
    """Some tables of a persisted chunk result (``backtest.results.chunkio`` format), reading only those columns."""
    symbols, _, frames = read_tables(Path(path), names)
    return symbols, {name: frame for name, frame in frames.items() if isinstance(frame, pd.DataFrame)}


def _json_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _selection_columns(run_id: int, frame: pd.DataFrame) -> dict[str, Any]:
    n = len(frame)
    param_cols = [c for c in frame.columns if c.startswith("param_")]
    names = [c.removeprefix("param_") for c in param_cols]
    # a combination's parameters are the same on every row that selected it: one JSON text per combination
    _, first, inverse = np.unique(frame["combo"].to_numpy(), return_index=True, return_inverse=True)
    # numbers, or names (a ranking study's side and weighting)
    values = frame[param_cols].to_numpy(dtype=object)[first].tolist() if param_cols else [[]] * len(first)
    texts = [json.dumps({n: _json_value(v) for n, v in zip(names, row, strict=True)}) for row in values]
    params = np.array(texts, dtype=object)[inverse] if n else np.array([], dtype=object)
    columns: dict[str, Any] = {
        "run_id": np.full(n, run_id, dtype=np.int64),
        "symbol": frame["symbol"].to_numpy(dtype=object),
        "fold": frame["fold"].to_numpy(dtype=np.int64),
        "combo": frame["combo"].to_numpy(dtype=np.int64),
        "params": params,
        "train_rank": frame["train_rank"].to_numpy(dtype=np.int64),
        "basis": frame["basis"].to_numpy(dtype=object),
        "test_days": frame["test_days"].to_numpy(dtype=np.int64),
    }
    for name in _SEL_DATES:
        columns[name] = frame[name].to_numpy().astype("datetime64[D]")
    for name in _SEL_FLOATS:
        columns[name] = frame[name].to_numpy(dtype=np.float64)
    return columns


def _metric_columns(run_id: int, frame: pd.DataFrame) -> dict[str, Any]:
    columns: dict[str, Any] = {
        "run_id": np.full(len(frame), run_id, dtype=np.int64),
        "symbol": frame["symbol"].to_numpy(dtype=object),
    }
    for name in METRIC_NAMES:
        columns[name] = frame[name].to_numpy(dtype=np.float64)
    columns["folds"] = frame["folds"].to_numpy(dtype=np.int64)
    for name in ("psr", "dsr"):
        columns[name] = frame[name].to_numpy(dtype=np.float64)
    return columns


def _overfitting_row(run_id: int, luck: dict[str, Any]) -> dict[str, Any]:
    """The run's statistics of luck (summary.json's ``figures.overfitting``) as a ``run_overfitting`` row."""
    inputs = luck.get("inputs", {})
    row = {name: luck.get(name) for name in ("trials", "sharpe_variance", "psr", "dsr", "pbo")}
    row.update(
        run_id=run_id,
        degradation_slope=luck.get("degradation_slope"),
        spa_pvalue=luck.get("spa_pvalue"),
        observations=inputs.get("T"),
        skewness=inputs.get("skewness"),
        kurtosis=inputs.get("kurtosis"),
        daily_sharpe=inputs.get("daily_sharpe"),
        sharpe_star=inputs.get("sharpe_star"),
        blocks=inputs.get("S"),
        splits=inputs.get("splits"),
        verdict=luck.get("verdict"),
    )
    return {k: _clean(v) for k, v in row.items()}


def _oos_columns(run_id: int, frame: pd.DataFrame) -> dict[str, Any]:
    return {
        "run_id": np.full(len(frame), run_id, dtype=np.int64),
        "symbol": np.asarray(frame["symbol"].astype(object)),
        "date": frame["date"].to_numpy().astype("datetime64[D]"),
        "fold": frame["fold"].to_numpy(dtype=np.int64),
        "ret": frame["ret"].to_numpy(dtype=np.float64),
        "traded": frame["traded"].to_numpy(dtype=np.float64),
        "held": frame["held"].to_numpy(dtype=np.float64),
    }


def start_run(
    conn: Connection,
    *,
    flow_run_id: str | None,
    strategy: str,
    config: dict[str, Any],
    price_source: str,
    started_at: dt.datetime,
) -> tuple[int, bool]:
    """The run's id, and whether its row is new: the existing row of the same flow run is reused (persisting
    again replaces its rows); a new row holds no rows yet (they cascade with a deleted run's id).

    This and the other writers below each run one transaction on ``conn``, a connection opened for writing
    (``engine.connection(engine, backtest_write=True)``) that ``persist_run`` holds for a whole run: one
    connect, and on SQLite one close with its checkpoint, per run instead of per chunk."""
    with conn.begin():
        if flow_run_id is not None:
            found = conn.execute(sa.select(s.runs.c.id).where(s.runs.c.flow_run_id == flow_run_id)).scalar()
            if found is not None:
                conn.execute(
                    sa.update(s.runs)
                    .where(s.runs.c.id == found)
                    .values(state="Running", config=config, strategy=strategy, price_source=price_source)
                )
                return int(found), False
        run_id = int(
            conn.execute(
                sa.insert(s.runs)
                .values(
                    flow_run_id=flow_run_id,
                    strategy=strategy,
                    state="Running",
                    started_at=started_at,
                    price_source=price_source,
                    config=config,
                )
                .returning(s.runs.c.id)
            ).scalar_one()
        )
        return run_id, True


def _delete_chunk(conn: Connection, run_id: int, index: int, symbols: Sequence[str]) -> None:
    for table in (s.selections, s.symbol_metrics, s.oos_returns):
        if symbols:
            conn.execute(sa.delete(table).where(table.c.run_id == run_id, table.c.symbol.in_(symbols)))
    conn.execute(sa.delete(s.chunks).where(s.chunks.c.run_id == run_id, s.chunks.c.chunk == index))


def write_chunk(
    conn: Connection, run_id: int, chunk: ChunkRecord, *, include_oos: bool, replace: bool = True
) -> tuple[int, int, int]:
    """One chunk's rows in one transaction, replacing what the run held for it (``replace=False``: the run is
    new and holds nothing, so nothing is deleted first): (selections, metrics, oos)."""
    frames: dict[str, pd.DataFrame] = {}
    symbols = chunk.symbols
    if chunk.result_path is not None:
        names = ["selections", "symbol_metrics"] + (["oos_returns"] if include_oos else [])
        symbols, frames = read_chunk_tables(chunk.result_path, names)
    counts = [0, 0, 0]
    with conn.begin():
        if replace:
            _delete_chunk(conn, run_id, chunk.index, symbols)
        if "selections" in frames:
            counts[0] = bulk_insert(conn, s.selections, _selection_columns(run_id, frames["selections"]))
            counts[1] = bulk_insert(conn, s.symbol_metrics, _metric_columns(run_id, frames["symbol_metrics"]))
        if "oos_returns" in frames:
            counts[2] = bulk_insert(conn, s.oos_returns, _oos_columns(run_id, frames["oos_returns"]))
        conn.execute(
            sa.insert(s.chunks).values(
                run_id=run_id,
                chunk=chunk.index,
                cache_key=chunk.cache_key,
                symbols=len(symbols),
                state=chunk.state,
                error=chunk.error,
                selections=counts[0],
                oos_rows=counts[2],
                written_at=dt.datetime.now(dt.UTC),
            )
        )
    return counts[0], counts[1], counts[2]


def write_portfolio(conn: Connection, run_id: int, frame: pd.DataFrame) -> int:
    columns: dict[str, Any] = {"run_id": np.full(len(frame), run_id, dtype=np.int64)}
    columns["date"] = frame["date"].to_numpy().astype("datetime64[D]")
    for column in s.portfolio.columns:
        if column.name not in columns:
            columns[column.name] = frame[column.name].to_numpy()
    with conn.begin():
        conn.execute(sa.delete(s.portfolio).where(s.portfolio.c.run_id == run_id))
        return bulk_insert(conn, s.portfolio, columns)


def finish_run(
    conn: Connection,
    run_id: int,
    *,
    state: str,
    wall_seconds: float | None,
    summary: dict[str, Any],
    results_key: str | None = None,
    results_of: int | None = None,
    replace: bool = True,
) -> None:
    """The run's final state, summary and statistics of luck (``replace=False``: a new run, nothing to delete)."""
    luck = (summary.get("figures") or {}).get("overfitting")
    with conn.begin():
        if replace:
            conn.execute(sa.delete(s.run_overfitting).where(s.run_overfitting.c.run_id == run_id))
        if luck and state == "Completed":
            conn.execute(sa.insert(s.run_overfitting).values(**_overfitting_row(run_id, luck)))
        conn.execute(
            sa.update(s.runs)
            .where(s.runs.c.id == run_id)
            .values(
                state=state,
                finished_at=dt.datetime.now(dt.UTC),
                wall_seconds=wall_seconds,
                summary=json.loads(json.dumps(_clean(summary), default=str)),
                results_key=results_key if state == "Completed" else None,
                results_of=results_of,
            )
        )
    _RESULT_CACHE.clear()


def results_key_of(collected_key: str | None, include_oos: bool) -> str | None:
    """What a run's result rows are: its merged tables' cache key, and whether oos returns were written."""
    if not collected_key:
        return None
    return collected_key + ("+oos" if include_oos else "")


def find_results(conn: Connection, results_key: str, run_id: int) -> int | None:
    """The earlier completed run holding the rows of ``results_key`` (not ``run_id`` itself), or None."""
    r = s.runs.c
    with conn.begin():
        found = conn.execute(
            sa.select(sa.func.coalesce(r.results_of, r.id))
            .where(r.results_key == results_key, r.state == "Completed", r.id != run_id)
            .order_by(r.id.desc())
            .limit(1)
        ).scalar()
    return None if found is None or int(found) == run_id else int(found)


def point_at_results(
    conn: Connection, run_id: int, holder: int, chunks: Sequence[ChunkRecord]
) -> tuple[int, int, int, int]:
    """Record ``run_id`` as a run whose results are ``holder``'s: its own chunk rows (state, counts copied
    from the holder's chunk of the same key), none of its own result rows. Returns the holder's row counts
    (selections, metrics, oos, portfolio), which are this run's results as readers see them."""
    c = s.chunks.c
    with conn.begin():
        for table in (s.selections, s.symbol_metrics, s.oos_returns, s.portfolio, s.holdings, s.chunks):
            conn.execute(sa.delete(table).where(table.c.run_id == run_id))  # a re-persisted run's old rows
        held = {
            row.cache_key: row
            for row in conn.execute(
                sa.select(c.cache_key, c.selections, c.oos_rows).where(c.run_id == holder)
            )
        }
        now = dt.datetime.now(dt.UTC)
        rows = []
        for chunk in chunks:
            same = held.get(chunk.cache_key)
            rows.append(
                {
                    "run_id": run_id,
                    "chunk": chunk.index,
                    "cache_key": chunk.cache_key,
                    "symbols": len(chunk.symbols),
                    "state": chunk.state,
                    "error": chunk.error,
                    "selections": same.selections if same is not None else 0,
                    "oos_rows": same.oos_rows if same is not None else 0,
                    "written_at": now,
                }
            )
        if rows:
            conn.execute(sa.insert(s.chunks), rows)
        counts = [
            conn.execute(
                sa.select(sa.func.count()).select_from(table).where(table.c.run_id == holder)
            ).scalar()
            for table in (s.selections, s.symbol_metrics, s.oos_returns, s.portfolio)
        ]
    return int(counts[0] or 0), int(counts[1] or 0), int(counts[2] or 0), int(counts[3] or 0)


def release_results(conn: Connection, run_ids: Sequence[int]) -> int:
    """Before ``run_ids`` are deleted: results other, surviving runs point at move to the newest of those
    runs (its rows now), and the others point at it. Returns how many result sets moved."""
    r = s.runs.c
    doomed = set(run_ids)
    moved = 0
    for holder in sorted(doomed):
        pointing = (
            conn.execute(sa.select(r.id).where(r.results_of == holder).order_by(r.id.desc())).scalars().all()
        )
        alive = [int(i) for i in pointing if int(i) not in doomed]
        if not alive:
            continue
        heir = alive[0]
        for table in (s.selections, s.symbol_metrics, s.oos_returns, s.portfolio, s.holdings):
            conn.execute(sa.update(table).where(table.c.run_id == holder).values(run_id=heir))
        conn.execute(sa.update(s.runs).where(r.id == heir).values(results_of=None))
        conn.execute(sa.update(s.runs).where(r.results_of == holder, r.id != heir).values(results_of=heir))
        moved += 1
    _RESULT_CACHE.clear()
    return moved


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def persist_run(
    url: str,
    *,
    flow_run_id: str | None,
    strategy: str,
    config: dict[str, Any],
    price_source: str,
    started_at: dt.datetime,
    chunks: Sequence[ChunkRecord],
    state: str,
    summary: dict[str, Any],
    portfolio_path: str | None = None,
    include_oos: bool = False,
    collected_key: str | None = None,
) -> PersistReport:
    """Everything a finished (or failed) run produced, chunk by chunk, each chunk in its own transaction.

    With ``collected_key`` (the cache key of the run's merged tables) a completed run whose identical results
    an earlier completed run already holds is recorded as a pointer to that run (``runs.results_of``): its
    run and chunk rows are written, the result rows are not, and every reader follows the pointer.
    """
    t0 = time.perf_counter()
    key = results_key_of(collected_key, include_oos) if state == "Completed" else None
    engine = open_db(url, create=True, migrate=True)
    totals = [0, 0, 0]
    seconds: list[float] = []
    portfolio_rows = 0
    # one connection for all of the run's transactions
    with db_errors(url, "write results to"), connection(engine, backtest_write=True) as conn:
        run_id, new = start_run(
            conn,
            flow_run_id=flow_run_id,
            strategy=strategy,
            config=config,
            price_source=price_source,
            started_at=started_at,
        )
        holder = find_results(conn, key, run_id) if key else None
        if holder is not None:
            sel, met, oos, portfolio_rows = point_at_results(conn, run_id, holder, chunks)
            finish_run(
                conn,
                run_id,
                state=state,
                wall_seconds=summary.get("wall_seconds"),
                summary=summary,
                results_key=key,
                results_of=holder,
                replace=not new,
            )
            return PersistReport(
                run_id, len(chunks), sel, met, oos, portfolio_rows, time.perf_counter() - t0, [], holder
            )
        for chunk in chunks:
            t = time.perf_counter()
            for i, n in enumerate(write_chunk(conn, run_id, chunk, include_oos=include_oos, replace=not new)):
                totals[i] += n
            seconds.append(time.perf_counter() - t)
        if portfolio_path is not None and Path(portfolio_path).exists():
            portfolio_rows = write_portfolio(conn, run_id, pd.read_parquet(portfolio_path))
        finish_run(
            conn,
            run_id,
            state=state,
            wall_seconds=summary.get("wall_seconds"),
            summary=summary,
            results_key=key,
            replace=not new,
        )
    return PersistReport(
        run_id,
        len(chunks),
        totals[0],
        totals[1],
        totals[2],
        portfolio_rows,
        time.perf_counter() - t0,
        seconds,
    )


def persist_ranking_run(
    url: str,
    *,
    flow_run_id: str | None,
    strategy: str,
    config: dict[str, Any],
    price_source: str,
    started_at: dt.datetime,
    state: str,
    summary: dict[str, Any],
    out: Path,
    collected_key: str | None = None,
) -> PersistReport:
    """A cross-sectional run from its output files: one selection row per fold (symbol ``PORTFOLIO_SYMBOL``),
    the holdings decided on its test windows' rebalance days, the daily portfolio and the statistics of luck.
    One transaction for the rows; persisting the same flow run again replaces them. With ``collected_key``
    (the cache key of its tables) a run whose identical results an earlier run holds points at them, as
    ``persist_run`` does."""
    t0 = time.perf_counter()
    key = results_key_of(collected_key, False) if state == "Completed" else None
    engine = open_db(url, create=True, migrate=True)
    sel = hold = rows = 0
    with db_errors(url, "write results to"), connection(engine, backtest_write=True) as conn:
        run_id, new = start_run(
            conn,
            flow_run_id=flow_run_id,
            strategy=strategy,
            config=config,
            price_source=price_source,
            started_at=started_at,
        )
        holder = find_results(conn, key, run_id) if key else None
        if holder is not None:
            sel, _, _, rows = point_at_results(conn, run_id, holder, [])
            with conn.begin():
                hold = _count_rows(conn, s.holdings, holder)
        else:
            done = state == "Completed" and (out / "selections.parquet").exists()
            with conn.begin():
                if not new:
                    for table in (s.selections, s.holdings, s.portfolio):
                        conn.execute(sa.delete(table).where(table.c.run_id == run_id))
                if done:
                    sel, hold = _write_ranking_tables(conn, run_id, out)
            if done:
                portfolio = pd.read_parquet(out / "portfolio.parquet")
                portfolio["n_symbols"] = portfolio["n_holdings"]  # the symbols held that day
                portfolio["gross_exposure"] = np.nan  # not recorded by a ranking study
                rows = write_portfolio(conn, run_id, portfolio)
        finish_run(
            conn,
            run_id,
            state=state,
            wall_seconds=summary.get("wall_seconds"),
            summary=summary,
            results_key=key,
            results_of=holder,
            replace=not new,
        )
    return PersistReport(run_id, 0, sel, 0, 0, rows, time.perf_counter() - t0, [], holder, holdings=hold)


def _write_ranking_tables(conn: Connection, run_id: int, out: Path) -> tuple[int, int]:
    selections = pd.read_parquet(out / "selections.parquet")
    selections.insert(0, "symbol", s.PORTFOLIO_SYMBOL)
    sel = bulk_insert(conn, s.selections, _selection_columns(run_id, selections))
    holdings = pd.read_parquet(out / "holdings.parquet")
    hold = bulk_insert(
        conn,
        s.holdings,
        {
            "run_id": np.full(len(holdings), run_id, dtype=np.int64),
            "fold": holdings["fold"].to_numpy(dtype=np.int64),
            "date": holdings["date"].to_numpy().astype("datetime64[D]"),
            "symbol": holdings["symbol"].to_numpy(dtype=object),
            "weight": holdings["weight"].to_numpy(dtype=np.float64),
        },
    )
    return sel, hold


def _count_rows(conn: Connection, table: sa.Table, run_id: int) -> int:
    return int(
        conn.execute(sa.select(sa.func.count()).select_from(table).where(table.c.run_id == run_id)).scalar()
        or 0
    )


def read_holdings(url: str, run: int | str | None = None) -> pd.DataFrame:
    """A cross-sectional run's holdings (fold, date, symbol, weight), in date order."""
    frame = _read_table(url, s.holdings, run, None)
    return frame.sort_values(["fold", "date", "symbol"], ignore_index=True)


# -- reading -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    id: int
    flow_run_id: str | None
    strategy: str
    state: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    wall_seconds: float | None
    price_source: str
    config: dict[str, Any]
    summary: dict[str, Any] | None
    results_key: str | None = None
    #: the earlier run holding this run's results (identical results are stored once), or None
    results_of: int | None = None
    #: its ``run_overfitting`` row (the statistics of luck), None for a failed run
    overfitting: dict[str, Any] | None = None


def latest_run_query() -> sa.Select:
    return sa.select(s.runs.c.id).order_by(s.runs.c.started_at.desc()).limit(1)


def _resolve_run(conn: Connection, run: int | str | None) -> int:
    r = s.runs.c
    if run is None:
        query = latest_run_query()
        what = "the database has no runs yet"
    elif isinstance(run, int) or str(run).isdigit():
        query = sa.select(r.id).where(r.id == int(run))
        what = f"no run with id {run}"
    else:
        query = sa.select(r.id).where(r.flow_run_id == str(run))
        what = f"no run with flow run id {run!r}"
    found = conn.execute(query).scalar()
    if found is None:
        raise DatabaseError(what)
    return int(found)


@cached(_RESULT_CACHE, key=lambda url, run=None: hashkey("run", url, run))
def read_run(url: str, run: int | str | None = None) -> RunRecord:
    """A run by id or flow run id (default: the latest)."""
    engine = open_db(url)
    with db_errors(url, "read runs from"), read_txn(engine) as conn:
        run_id = _resolve_run(conn, run)
        row = conn.execute(sa.select(s.runs).where(s.runs.c.id == run_id)).one()
        o = s.run_overfitting
        luck = conn.execute(sa.select(o).where(o.c.run_id == run_id)).one_or_none()
    return RunRecord(**row._asdict(), overfitting=None if luck is None else luck._asdict())


def _holder(conn: Connection, run_id: int) -> int:
    """The run whose rows hold ``run_id``'s results: itself, or the earlier run it points at."""
    found = conn.execute(sa.select(s.runs.c.results_of).where(s.runs.c.id == run_id)).scalar()
    return run_id if found is None else int(found)


def _read_table(url: str, table: sa.Table, run: int | str | None, symbol: str | None) -> pd.DataFrame:
    """Rows of a run (through its results pointer, shown under its own id), or of one symbol across runs
    (runs pointing at another's results included, under their own ids)."""
    engine = open_db(url)
    with db_errors(url, "read results from"), read_txn(engine) as conn:
        where = []
        run_id = None
        if run is not None or symbol is None:
            run_id = _resolve_run(conn, run)
            where.append(table.c.run_id == _holder(conn, run_id))
        if symbol is not None:
            where.append(table.c.symbol == symbol)
        order = [table.c.run_id, table.c.symbol] + ([table.c.fold] if "fold" in table.c else [])
        result = conn.execute(sa.select(table).where(*where).order_by(*order))
        frame = pd.DataFrame(result.all(), columns=list(result.keys()))
        if run_id is not None:
            frame["run_id"] = run_id
            return frame
        holders = [int(i) for i in frame["run_id"].unique()]
        r = s.runs.c
        pointers = conn.execute(sa.select(r.id, r.results_of).where(r.results_of.in_(holders))).all()
    if not pointers:
        return frame
    copies = [frame[frame["run_id"] == held].assign(run_id=pointer) for pointer, held in pointers]
    keys = ["run_id", "symbol"] + (["fold"] if "fold" in frame.columns else [])
    return pd.concat([frame, *copies], ignore_index=True).sort_values(keys, ignore_index=True)


@cached(_RESULT_CACHE, key=lambda url, run=None, symbol=None: hashkey("sel", url, run, symbol))
def read_selections(url: str, run: int | str | None = None, symbol: str | None = None) -> pd.DataFrame:
    """Selections of a run (default: the latest), or of one symbol across all runs when only it is given."""
    return _read_table(url, s.selections, run, symbol)


@cached(_RESULT_CACHE, key=lambda url, run=None, symbol=None: hashkey("met", url, run, symbol))
def read_metrics(url: str, run: int | str | None = None, symbol: str | None = None) -> pd.DataFrame:
    """Per-symbol out-of-sample metrics of a run (default: the latest), or of one symbol across runs."""
    return _read_table(url, s.symbol_metrics, run, symbol)


def clear_result_cache() -> None:
    _RESULT_CACHE.clear()
