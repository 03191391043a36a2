"""A warm re-run (unchanged inputs) does only what it must: cached chunks read no prices, a database record
points at the identical results of the earlier run instead of rewriting them, and the result plots of the
report are reused; a changed input still recomputes and rewrites everything, from the cached price files."""

from __future__ import annotations

import filecmp
import json
import os
import time

import pandas as pd
import pytest
import sqlalchemy as sa
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from typer.testing import CliRunner

from backtest.db import schema as s
from backtest.db.connect import open_db
from backtest.db.results import clear_result_cache, read_metrics, read_run, read_selections
from backtest.observe.report import PLOT_TITLES, RESULT_PLOTS
from cli.app import app
from cli.runs import read_summary
from flows.study import three_phase_study
from tests.flows.test_study_flow import assert_same_tables, params, tables

#: the plots of a timing study's report drawn from its result tables alone
TIMING_RESULT_PLOTS = [name for name in RESULT_PLOTS if name in PLOT_TITLES]


def _task_names(flow_run_id: str, chunks: int = 3) -> list[str]:
    """The run's task run names, once the server has stored its chunk tasks (it stores them from events,
    asynchronously, so a busy server can lag behind the end of the run)."""
    deadline = time.monotonic() + 10
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), limit=200
            )
            names = sorted(r.name for r in runs)
            if sum(n.startswith("backtest-") for n in names) >= chunks or time.monotonic() > deadline:
                return names
            time.sleep(0.2)


def _rows(url: str, table: sa.Table, run_id: int) -> int:
    with open_db(url).connect() as conn:
        query = sa.select(sa.func.count()).select_from(table).where(table.c.run_id == run_id)
        return int(conn.execute(query).scalar() or 0)


def test_warm_run_loads_nothing_points_at_the_results_and_reuses_the_plots(store, tmp_path):
    url = f"sqlite:///{store.root / 'backtest.db'}"
    cold_out, warm_out = tmp_path / "cold", tmp_path / "warm"
    assert three_phase_study(params(store, cold_out), return_state=True).is_completed()
    assert three_phase_study(params(store, warm_out), return_state=True).is_completed()
    cold, warm = read_summary(cold_out), read_summary(warm_out)
    chunks = cold["counts"]["chunks"]
    assert warm["cache"]["hits"] == chunks and warm["collected_key"] == cold["collected_key"]

    # 1. the cold run fetched every chunk's prices from the store; the warm run read none, and both ran
    # one task per chunk (the server stores task runs from events, asynchronously: checked once they are there)
    assert (cold["cache"]["prices_fetched"], warm["cache"]["prices_fetched"]) == (chunks, 0)
    for run in (cold, warm):
        names = _task_names(run["flow_run_id"], chunks)
        assert sum(n.startswith("backtest-") for n in names) <= chunks, names
        assert not [n for n in names if n.startswith("load-")], names

    # 2. the warm run is in the database as a pointer to the cold run's rows, and reads back the same
    clear_result_cache()
    first, second = read_run(url, cold["flow_run_id"]), read_run(url, warm["flow_run_id"])
    assert first.results_of is None and second.results_of == first.id and second.state == "Completed"
    assert warm["db"]["persisted"]["results_of"] == first.id
    # no table changed, so no maintenance pass: the cold run's left the statistics and plans as they are
    assert cold["db"]["plans_ok"] and cold["db"]["optimized"]
    assert warm["db"]["plans_ok"] is None and warm["db"]["maintenance"].startswith("skipped")
    assert warm["db"]["persisted"]["selections"] == cold["db"]["persisted"]["selections"] > 0
    assert _rows(url, s.selections, second.id) == _rows(url, s.symbol_metrics, second.id) == 0
    assert _rows(url, s.chunks, second.id) == chunks  # its own chunk status, counts copied
    for read in (read_selections, read_metrics):
        a, b = read(url, first.id), read(url, second.id)
        assert len(a) > 0 and (b["run_id"] == second.id).all()
        pd.testing.assert_frame_equal(a.drop(columns="run_id"), b.drop(columns="run_id"))
    symbol = str(read_metrics(url, first.id)["symbol"].iloc[0])
    across = read_metrics(url, symbol=symbol)  # one symbol across runs: the pointing run included
    assert sorted(across["run_id"]) == [first.id, second.id]
    shown = CliRunner().invoke(app, ["results", "--db", url, "--run", warm["flow_run_id"], "--json"])
    assert shown.exit_code == 0, shown.output
    assert len(json.loads(shown.output)["metrics"]) == len(read_metrics(url, first.id))

    # 3. the plots drawn from the results alone are reused (hard links to one cached file, same bytes)
    for name in TIMING_RESULT_PLOTS:
        cold_png, warm_png = cold_out / "report" / f"{name}.png", warm_out / "report" / f"{name}.png"
        assert filecmp.cmp(cold_png, warm_png, shallow=False), name
        assert os.stat(warm_png).st_nlink >= 2, name  # linked from the results' cache entry
    for name in ("resources", "phases"):  # drawn again for this run
        warm_png = warm_out / "report" / f"{name}.png"
        assert not warm_png.exists() or os.stat(warm_png).st_nlink == 1
    assert "equity.png" in (warm_out / "report.html").read_text()

    # 4. a changed input (the fees) recomputes everything from the cached price files and writes its own rows
    changed_out = tmp_path / "changed"
    state = three_phase_study(params(store, changed_out, fees_bps=7), return_state=True)
    assert state.is_completed()
    changed = read_summary(changed_out)
    assert changed["cache"]["hits"] == 0 and changed["collected_key"] != cold["collected_key"]
    assert changed["cache"]["prices_fetched"] == 0 and changed["cache"]["misses"] == chunks
    third = read_run(url, changed["flow_run_id"])
    assert third.results_of is None and changed["db"]["persisted"]["results_of"] is None
    assert _rows(url, s.selections, third.id) == len(pd.read_parquet(changed_out / "selections.parquet"))
    for name in TIMING_RESULT_PLOTS:
        png = changed_out / "report" / f"{name}.png"
        assert not os.path.samefile(png, warm_out / "report" / f"{name}.png")


def test_a_chunk_whose_results_and_prices_are_gone_fetches_and_computes_only_itself(store, tmp_path):
    """One chunk's cache record, result and every price file deleted: the re-run computes that chunk alone,
    fetching its prices from the store again, and the results equal the first run's."""
    p = params(store, tmp_path / "cold", persist=False)
    assert three_phase_study(p, return_state=True).is_completed()
    cache = store.root / "cache"
    victim = sorted((cache / "records").iterdir())[0].name
    (cache / "records" / victim).unlink()
    (cache / "results" / victim).unlink()
    for path in (cache / "prices").iterdir():
        path.unlink()  # no prices file either: the chunk must read the store
    state = three_phase_study(p.model_copy(update={"out": str(tmp_path / "again")}), return_state=True)
    assert state.is_completed(), state.message
    again = read_summary(tmp_path / "again")
    assert again["cache"]["misses"] == 1 and again["cache"]["failed"] == 0
    assert again["cache"]["prices_fetched"] == 1
    assert (cache / "records" / victim).is_file() and len(list((cache / "prices").iterdir())) == 1
    assert_same_tables(tables(tmp_path / "cold"), tables(tmp_path / "again"))


@pytest.mark.parametrize("damage", ["gone", "cut short"])
def test_a_cached_chunk_whose_result_file_is_gone_or_cut_short_is_recomputed(store, tmp_path, damage):
    """A record whose result file was deleted, or is not a whole file, is a cache miss: the chunk is computed
    again (and its file written again), not failed, and not a hit that fails every later collect."""
    p = params(store, tmp_path / "cold", persist=False, fees_bps=3 if damage == "gone" else 4)
    assert three_phase_study(p, return_state=True).is_completed()
    cache = store.root / "cache"
    victim = sorted((cache / "results").iterdir(), key=lambda f: f.stat().st_mtime)[-1]
    if damage == "gone":
        victim.unlink()  # the record stays behind
    else:
        blob = victim.read_bytes()
        victim.write_bytes(blob[: len(blob) // 2])
    state = three_phase_study(p.model_copy(update={"out": str(tmp_path / "again")}), return_state=True)
    assert state.is_completed(), state.message
    again = read_summary(tmp_path / "again")
    assert again["cache"]["misses"] == 1 and again["cache"]["failed"] == 0
    assert victim.is_file()
    assert_same_tables(tables(tmp_path / "cold"), tables(tmp_path / "again"))
