import shutil
import sys
import textwrap

import pandas as pd
import pytest

from backtest.ingest import ingest_folder
from backtest.planning import resolve_universe
from backtest.study import run_study
from flows.params import StudyParams
from flows.runs import read_summary
from flows.study import three_phase_study

GRID = {"fast": [5, 20], "slow": [60, 120]}
TABLES = ("selections", "oos_returns", "oos_metrics", "portfolio", "grid_scores")


def params(store, out, **kw):
    base = dict(
        store=str(store.root),
        out=str(out),
        grid=GRID,
        train_years=3,
        validate_years=1,
        test_years=1,
        fees_bps=5,
        chunk_size=8,
        workers=2,
    )
    base.update(kw)
    return StudyParams(**base)


def tables(out):
    return {name: pd.read_parquet(out / f"{name}.parquet") for name in TABLES}


def assert_same_tables(a, b):
    for name in TABLES:
        pd.testing.assert_frame_equal(a[name], b[name], check_categorical=False)


def core_tables(store, p):
    """The same study computed by the core alone, no Prefect, no cache."""
    universe = resolve_universe(store.catalog())
    r = run_study(
        p.to_config(), universe.symbols, store.load, universe.first, universe.last, chunk_size=1000, workers=1
    )
    return {
        "selections": r.selections,
        "oos_returns": r.oos_returns,
        "oos_metrics": r.symbol_metrics,
        "portfolio": r.portfolio,
        "grid_scores": r.grid_scores,
    }


def test_cold_then_warm_run_is_served_from_cache(store, tmp_path):
    cold = three_phase_study(params(store, tmp_path / "cold"), return_state=True)
    assert cold.is_completed(), cold.message
    s1 = read_summary(tmp_path / "cold")
    assert s1["counts"] == {**s1["counts"], "symbols": 24, "chunks": 3, "combinations": 4}
    assert s1["cache"]["hits"] == 0 and s1["cache"]["misses"] == 3

    warm = three_phase_study(params(store, tmp_path / "warm"), return_state=True)
    assert warm.is_completed()
    s2 = read_summary(tmp_path / "warm")
    assert s2["cache"]["hits"] == 3 and s2["cache"]["misses"] == 0
    assert_same_tables(tables(tmp_path / "cold"), tables(tmp_path / "warm"))
    # and the flow computes what the core computes
    core = core_tables(store, params(store, tmp_path))
    flow = tables(tmp_path / "cold")
    for name in TABLES:
        pd.testing.assert_frame_equal(flow[name], core[name].reset_index(drop=True), check_categorical=False)


def test_one_changed_symbol_recomputes_only_its_chunk(store, synthetic_csv, tmp_path):
    three_phase_study(params(store, tmp_path / "a"), return_state=True)
    changed = tmp_path / "csv"
    shutil.copytree(synthetic_csv, changed)
    victim = sorted(changed.glob("*_data.csv"))[10]  # chunk 1 of 3 (8 symbols a chunk, sorted)
    lines = victim.read_text().splitlines()
    victim.write_text("\n".join(lines[:-5]) + "\n")  # five fewer days at the end
    ingest_folder(changed, store, workers=1, durable=False)

    state = three_phase_study(params(store, tmp_path / "b"), return_state=True)
    assert state.is_completed()
    summary = read_summary(tmp_path / "b")
    assert summary["cache"]["hits"] == 2 and summary["cache"]["misses"] == 1
    assert_same_tables(tables(tmp_path / "b"), core_tables(store, params(store, tmp_path)))


STRATEGY = """
import os
from backtest.strategies import sma_crossover

def flaky(prices, fast=10, slow=50):
    if os.path.exists({marker!r}) and {symbol!r} in prices.symbols:
        raise RuntimeError("marker present: this chunk fails")
    return sma_crossover(prices, fast=fast, slow=slow)
"""


def test_failed_chunk_fails_the_run_and_a_rerun_recomputes_only_it(store, tmp_path, monkeypatch):
    marker = tmp_path / "fail.marker"
    marker.write_text("x")
    symbol = store.symbols()[17]  # in chunk 2
    module = tmp_path / "mods" / "flaky_strategies.py"
    module.parent.mkdir()
    module.write_text(textwrap.dedent(STRATEGY.format(marker=str(marker), symbol=symbol)))
    monkeypatch.syspath_prepend(str(module.parent))
    p = params(store, tmp_path / "out", strategy="flaky_strategies:flaky")

    state = three_phase_study(p, return_state=True)
    assert state.is_failed()
    assert "chunk-0002" in state.message and "Re-run" in state.message
    summary = read_summary(tmp_path / "out")
    assert summary["state"] == "Failed"
    assert [c["chunk"] for c in summary["failed_chunks"]] == ["chunk-0002"]
    assert "marker present" in summary["failed_chunks"][0]["error"]
    assert summary["cache"]["misses"] == 2  # the other chunks finished and were persisted

    marker.unlink()
    state = three_phase_study(p, return_state=True)
    assert state.is_completed()
    summary = read_summary(tmp_path / "out")
    assert summary["cache"] == {**summary["cache"], "hits": 2, "misses": 1, "failed": 0}
    assert_same_tables(tables(tmp_path / "out"), core_tables(store, p))
    sys.modules.pop("flaky_strategies", None)


@pytest.mark.parametrize("runner", ["processes", "dask"])
def test_runners_give_identical_results(store, tmp_path, runner):
    three_phase_study(params(store, tmp_path / "threads", runner="threads"), return_state=True)
    shutil.rmtree(store.root / "cache")  # cold again, so the other runner computes everything itself
    state = three_phase_study(params(store, tmp_path / runner, runner=runner), return_state=True)
    assert state.is_completed(), state.message
    assert read_summary(tmp_path / runner)["cache"]["misses"] == 3
    assert_same_tables(tables(tmp_path / "threads"), tables(tmp_path / runner))
