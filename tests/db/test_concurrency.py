"""SQLite with concurrent readers and writers, in threads and in processes: never "database is locked"."""

from __future__ import annotations

import contextlib
import datetime as dt
import multiprocessing
import sqlite3
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from backtest.db import schema as s
from backtest.db.connect import open_db
from backtest.db.engine import write_txn
from backtest.db.prices import DbPriceSource, sync_prices
from backtest.db.results import read_metrics
from backtest.db.sqlio import bulk_insert

_ROWS = 2_000


def _write_results(url: str, run_id: int, rounds: int) -> int:
    """Re-write the same chunk of a run ``rounds`` times (delete + insert in one transaction each)."""
    engine = open_db(url)
    symbols = np.array([f"S{i:03d}" for i in range(20)], dtype=object)
    days = np.datetime64("2010-01-01") + np.arange(_ROWS // 20)
    for _ in range(rounds):
        with write_txn(engine) as conn:
            conn.execute(sa.delete(s.oos_returns).where(s.oos_returns.c.run_id == run_id))
            bulk_insert(
                conn,
                s.oos_returns,
                {
                    "run_id": np.full(_ROWS, run_id),
                    "symbol": np.repeat(symbols, len(days)),
                    "date": np.tile(days, len(symbols)),
                    "fold": np.zeros(_ROWS, dtype=np.int64),
                    "ret": np.random.default_rng(run_id).normal(size=_ROWS),
                    "traded": np.zeros(_ROWS),
                    "held": np.ones(_ROWS),
                },
            )
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).select_from(s.oos_returns).where(s.oos_returns.c.run_id == run_id)
            ).scalar()
            or 0
        )


def _new_run(url: str) -> int:
    with write_txn(open_db(url, create=True, migrate=True)) as conn:
        return int(
            conn.execute(
                sa.insert(s.runs)
                .values(strategy="x", state="Running", started_at=dt.datetime.now(dt.UTC), config={})
                .returning(s.runs.c.id)
            ).scalar_one()
        )


def test_threads_read_while_others_write(db_store, tmp_path):
    url = f"sqlite:///{tmp_path / 'busy.db'}"
    sync_prices(db_store, url)
    runs = [_new_run(url) for _ in range(2)]
    symbols = db_store.symbols()
    expected = db_store.load(symbols)
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                panel = DbPriceSource(url).load(symbols)
                assert np.array_equal(panel.close, expected.close, equal_nan=True)
                read_metrics.__wrapped__(url, runs[0])  # bypass the TTL cache: a real query each time
        except BaseException as exc:
            errors.append(exc)

    def writer(run_id: int) -> None:
        try:
            assert _write_results(url, run_id, 8) == _ROWS
        except BaseException as exc:
            errors.append(exc)

    readers = [threading.Thread(target=reader) for _ in range(3)]
    writers = [threading.Thread(target=writer, args=(r,)) for r in runs]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join(timeout=120)
    stop.set()
    for t in readers:
        t.join(timeout=60)
    assert not errors, errors[0]


def test_processes_write_and_read_the_same_file(db_store, tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    sync_prices(db_store, url)
    runs = [_new_run(url) for _ in range(3)]
    context = multiprocessing.get_context("spawn")
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        done = list(pool.map(_write_results, [url] * 3, runs, [6] * 3))
    assert done == [_ROWS] * 3, f"after {time.perf_counter() - t0:.1f} s"


def test_connections_creating_one_database_at_once(tmp_path):
    # Two studies started together on a new store both create its database. Switching a new file to WAL
    # upgrades a read transaction, for which SQLite never waits: without the retry some of these
    # connections failed at once with "database is locked" (threads race as processes do).
    from backtest.db.engine import _sqlite_connect

    for i in range(100):
        path = tmp_path / f"new{i}.db"
        barrier = threading.Barrier(4)
        outcomes: list[str | None] = []

        def connect(path: Path, barrier: threading.Barrier, outcomes: list[str | None]) -> None:
            barrier.wait()
            conn = sqlite3.connect(path, check_same_thread=False)
            try:
                _sqlite_connect(conn, None)
                outcomes.append(None)
            except Exception as exc:
                outcomes.append(f"{type(exc).__name__}: {exc}")
            finally:
                conn.close()

        threads = [threading.Thread(target=connect, args=(path, barrier, outcomes)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert outcomes == [None] * 4, f"round {i}: {outcomes}"
        with contextlib.closing(sqlite3.connect(path)) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
