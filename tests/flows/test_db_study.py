"""The study flow over databases: prices from SQLite and PostgreSQL give the Parquet store's study exactly,
every run's results land in the database, and one changed symbol in the database recomputes only its chunk."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import sqlalchemy as sa

from backtest.data.store import Store
from backtest.data.validation import STORED_SCHEMA
from backtest.db import schema as s
from backtest.db.connect import open_db
from backtest.db.engine import describe_url
from backtest.db.prices import sync_prices
from backtest.db.results import read_run
from flows.params import StudyParams
from flows.study import three_phase_study
from tests.db.pgserver import pg_server, pg_url  # noqa: F401 - fixtures: a real PostgreSQL for this module

TABLES = ("selections", "oos_returns", "oos_metrics", "portfolio")
BASE = dict(
    grid={"fast": [5, 20], "slow": [60, 120]}, train_years=3, validate_years=1, test_years=1, chunk_size=8
)


def _tables(out):
    return {name: pd.read_parquet(out / f"{name}.parquet") for name in TABLES}


def _count(url: str, table: sa.Table, run_id: int) -> int:
    with open_db(url).connect() as conn:
        query = sa.select(sa.func.count()).select_from(table).where(table.c.run_id == run_id)
        return int(conn.execute(query).scalar() or 0)


def test_sqlite_and_postgres_prices_give_the_stores_study_and_keep_every_result(store, tmp_path, pg_url):  # noqa: F811
    reference = three_phase_study(StudyParams(store=str(store.root), out=str(tmp_path / "parquet"), **BASE))
    assert reference is not None
    expected = _tables(tmp_path / "parquet")
    # the default run persisted its results (not its oos returns) into the store's SQLite file
    default_db = f"sqlite:///{store.root / 'backtest.db'}"
    run = read_run(default_db)
    assert run.state == "Completed" and run.price_source == str(store.root)
    assert _count(default_db, s.selections, run.id) == len(expected["selections"])
    assert _count(default_db, s.oos_returns, run.id) == 0
    assert _count(default_db, s.portfolio, run.id) == len(expected["portfolio"])

    sqlite_url = f"sqlite:///{tmp_path / 'prices.db'}"
    for name, url in (("sqlite", sqlite_url), ("postgresql", pg_url)):
        sync_prices(store, url)
        work, out = tmp_path / f"work-{name}", tmp_path / name  # a fresh cache: prices must come from the db
        state = three_phase_study(
            StudyParams(store=str(work), out=str(out), db=url, persist_oos=True, **BASE), return_state=True
        )
        assert state.is_completed(), state.message
        summary = json.loads((out / "summary.json").read_text())
        assert summary["cache"]["hits"] == 0 and summary["db"]["plans_ok"]
        got = _tables(out)
        for table in TABLES:
            pd.testing.assert_frame_equal(got[table], expected[table], check_categorical=False)
        run = read_run(url, summary["flow_run_id"])
        assert run.state == "Completed" and run.price_source == run.config["db"] == describe_url(url)
        assert "s3cret" not in json.dumps(run.config) + run.price_source
        assert _count(url, s.chunks, run.id) == summary["counts"]["chunks"]
        assert _count(url, s.selections, run.id) == len(expected["selections"])
        assert _count(url, s.symbol_metrics, run.id) == len(expected["oos_metrics"])
        assert _count(url, s.oos_returns, run.id) == len(expected["oos_returns"])
        with open_db(url).connect() as conn:
            stored = conn.execute(
                sa.select(s.oos_returns.c.ret)
                .where(s.oos_returns.c.run_id == run.id)
                .order_by(s.oos_returns.c.symbol, s.oos_returns.c.date)
            ).scalars()
            ordered = expected["oos_returns"].sort_values(["symbol", "date"], kind="stable")
            np.testing.assert_array_equal(np.array(list(stored), dtype=float), ordered["ret"].to_numpy(float))


def test_one_symbol_changed_in_the_database_recomputes_only_its_chunk(store, tmp_path):
    url = f"sqlite:///{tmp_path / 'prices.db'}"
    sync_prices(store, url)
    p = StudyParams(store=str(tmp_path / "work"), out=str(tmp_path / "a"), db=url, persist=False, **BASE)
    three_phase_study(p)
    first = json.loads((tmp_path / "a" / "summary.json").read_text())

    edited = Store(tmp_path / "edited")
    shutil.copytree(store.root, edited.root, ignore=shutil.ignore_patterns("cache", "runs", "backtest.db*"))
    symbol = edited.symbols()[3]
    frame = edited.load([symbol]).frame(symbol).reset_index()
    frame[["open", "high", "low", "close"]] *= 1.01
    frame["date"] = frame["date"].dt.date
    with edited.writer(durable=False) as writer:
        writer.write_symbol(
            symbol, pa.Table.from_pandas(frame[list(STORED_SCHEMA.names)], schema=STORED_SCHEMA)
        )
    assert sync_prices(edited, url).written == 1

    three_phase_study(p.model_copy(update={"out": str(tmp_path / "b")}))
    second = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert second["cache"]["misses"] == 1 and second["cache"]["hits"] == first["counts"]["chunks"] - 1


def test_db_maintenance_flow_prunes_old_runs_and_fails_on_a_missing_index(tmp_path):
    import datetime as dt

    from prefect.artifacts import Artifact

    from flows.db_maintenance import db_maintenance

    url = f"sqlite:///{tmp_path / 'm.db'}"
    engine = open_db(url, create=True)
    with engine.begin() as conn:
        for days in (400, 1):
            conn.execute(
                sa.insert(s.runs).values(
                    strategy="sma_crossover",
                    state="Completed",
                    started_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=days),
                    config={},
                )
            )
    report = db_maintenance(db=url, retention_days=90, vacuum=True)
    assert report["ok"] and report["pruned_runs"] == 1 and report["problems"] == []
    assert {t["table"]: t["rows"] for t in report["stats"]["tables"]}["runs"] == 1
    assert report["slowest_queries"] and report["vacuum"]["free_ratio"] >= 0
    assert "Slowest queries" in Artifact.get("db-maintenance").data

    with engine.begin() as conn:
        conn.execute(sa.schema.DropIndex(sa.Index("ix_runs_started_at")))
    state = db_maintenance(db=url, retention_days=90, return_state=True)
    assert state.is_failed() and "runs older than retention (prune)" in str(
        state.result(raise_on_failure=False)
    )


def test_cli_ingest_and_run_through_a_database(synthetic_csv, tmp_path):
    from typer.testing import CliRunner

    from cli.app import app

    runner = CliRunner()
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    ingested = runner.invoke(
        app, ["ingest", str(synthetic_csv), "--store", str(tmp_path / "store"), "--db", url]
    )
    assert ingested.exit_code == 0 and "24 symbols written" in ingested.output, ingested.output
    args = ["run", "--store", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--db", url]
    args += ["--param", "fast=5,20", "--param", "slow=60,120", "--train-years", "3", "--chunk-size", "12"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["db"]["persisted"]["selections"] == len(
        pd.read_parquet(tmp_path / "out" / "selections.parquet")
    )
    shown = runner.invoke(app, ["results", "--db", url, "--run", summary["flow_run_id"], "--json"])
    assert shown.exit_code == 0 and json.loads(shown.output)["run"]["state"] == "Completed"
