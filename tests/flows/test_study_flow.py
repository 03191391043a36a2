import shutil
import sys
import textwrap

import pandas as pd

from backtest.data.ingest import ingest_folder
from backtest.engine.planning import resolve_universe
from backtest.engine.study import run_study
from cli.runs import read_summary
from flows.params import StudyParams
from flows.study import three_phase_study

GRID = {"fast": [5, 20], "slow": [60, 120]}
TABLES = ("selections", "oos_returns", "oos_metrics", "portfolio", "grid_scores", "trials", "cscv")


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
        "trials": r.trials.to_frame(),
        "cscv": r.overfitting.splits_frame(),
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


def test_statistics_of_luck_in_the_summary_and_another_s_reuses_every_chunk(store, tmp_path):
    """The flow reports the core's statistics of luck; a re-run with other PBO blocks recomputes only the merge."""
    import numpy as np

    from backtest.overfitting.cscv import cscv

    first = three_phase_study(params(store, tmp_path / "s16"), return_state=True)
    assert first.is_completed(), first.message
    luck = read_summary(tmp_path / "s16")["figures"]["overfitting"]
    assert luck["trials"] == 4 and luck["inputs"]["S"] == 16 and luck["inputs"]["splits"] == 12870
    trials = pd.read_parquet(tmp_path / "s16" / "trials.parquet")
    matrix = trials[[f"trial_{k}" for k in range(4)]].to_numpy()
    assert luck["pbo"] == cscv(matrix, 16).pbo
    assert np.isfinite(luck["dsr"]) and "PBO" in luck["verdict"]
    assert (tmp_path / "s16" / "report" / "luck.png").exists()

    eight = three_phase_study(params(store, tmp_path / "s8", pbo_blocks=8), return_state=True)
    assert eight.is_completed(), eight.message
    s8 = read_summary(tmp_path / "s8")
    assert s8["cache"]["misses"] == 0 and s8["cache"]["collect_reused"] is False
    assert s8["figures"]["overfitting"]["inputs"]["S"] == 8
    assert s8["figures"]["overfitting"]["pbo"] == cscv(matrix, 8).pbo
    assert len(pd.read_parquet(tmp_path / "s8" / "cscv.parquet")) == 70


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
from backtest.engine.strategies import sma_crossover

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


def test_the_processes_runner_gives_the_cores_results(store, tmp_path):
    """As the default (threads) runner does in the tests above: the same tables as the core alone. Dask's are
    checked on a cluster of its own in tests/faults (a worker killed mid-chunk) and on an existing one below."""
    p = params(store, tmp_path / "out", runner="processes")
    state = three_phase_study(p, return_state=True)
    assert state.is_completed(), state.message
    assert read_summary(tmp_path / "out")["cache"]["misses"] == 3
    assert_same_tables(tables(tmp_path / "out"), core_tables(store, p))


COUNTING = """
import fcntl
import os
from backtest.engine.strategies import sma_crossover

def counted(prices, fast=10, slow=50):
    with open({log!r}, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(prices.symbols[0] + "\\n")
    first = {flaky_dir!r} and not os.path.exists(os.path.join({flaky_dir!r}, prices.symbols[0]))
    if first:
        open(os.path.join({flaky_dir!r}, prices.symbols[0]), "w").close()
        raise OSError("disk busy (transient)")
    return sma_crossover(prices, fast=fast, slow=slow)
"""


def _counting_strategy(tmp_path, monkeypatch, name, flaky_dir=""):
    log = tmp_path / f"{name}.log"
    module = tmp_path / "mods" / f"{name}.py"
    module.parent.mkdir(exist_ok=True)
    module.write_text(textwrap.dedent(COUNTING.format(log=str(log), flaky_dir=flaky_dir)))
    monkeypatch.syspath_prepend(str(module.parent))
    return log, module


def _computed_chunks(log):
    """First symbols of the chunks whose strategy ran (each combination call logs one line)."""
    lines = log.read_text().split() if log.exists() else []
    return {s: lines.count(s) for s in set(lines)}


def test_two_concurrent_runs_never_compute_the_same_chunk_twice(store, tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    log, _ = _counting_strategy(tmp_path, monkeypatch, "counting_a")
    p1 = params(store, tmp_path / "one", strategy="counting_a:counted")
    p2 = params(store, tmp_path / "two", strategy="counting_a:counted")
    with ThreadPoolExecutor(2) as pool:
        states = list(pool.map(lambda p: three_phase_study(p, return_state=True), [p1, p2]))
    assert all(s.is_completed() for s in states), [s.message for s in states]
    counts = _computed_chunks(log)
    assert (
        len(counts) == 3
    )  # three chunks, each computed by one run only: 4 combinations x (phase 1 + phase 3)
    per_chunk = set(counts.values())
    assert len(per_chunk) == 1
    hits = [read_summary(tmp_path / d)["cache"]["hits"] for d in ("one", "two")]
    assert sum(hits) == 3  # whatever one run computed, the other took from the cache
    assert_same_tables(tables(tmp_path / "one"), tables(tmp_path / "two"))
    sys.modules.pop("counting_a", None)


def test_transient_errors_are_retried_and_code_changes_recompute_everything(store, tmp_path, monkeypatch):
    flaky = tmp_path / "flaky"
    flaky.mkdir()
    log, module = _counting_strategy(tmp_path, monkeypatch, "counting_b", flaky_dir=str(flaky))
    p = params(store, tmp_path / "out", strategy="counting_b:counted")
    state = three_phase_study(p, return_state=True)
    assert state.is_completed(), state.message  # every chunk failed once with OSError, then passed on retry
    assert len(list(flaky.iterdir())) == 3
    assert read_summary(tmp_path / "out")["cache"]["misses"] == 3
    calls = _computed_chunks(log)
    assert len(calls) == 3 and all(n > 1 for n in calls.values())  # the failed try, then the full retry
    retried = [a for a in read_summary(tmp_path / "out")["alerts"] if a["kind"] == "chunk-retried"]
    assert sorted(a["subject"] for a in retried) == ["chunk-0000", "chunk-0001", "chunk-0002"]  # once each

    state = three_phase_study(p, return_state=True)
    assert read_summary(tmp_path / "out")["cache"]["hits"] == 3
    # editing the strategy's code changes every chunk's key
    module.write_text(module.read_text() + "\n# a harmless edit\n")
    sys.modules.pop("counting_b", None)
    from backtest.engine import strategies

    strategies._REGISTRY.pop("counting_b:counted", None)
    state = three_phase_study(p, return_state=True)
    assert state.is_completed()
    assert read_summary(tmp_path / "out")["cache"]["misses"] == 3
    sys.modules.pop("counting_b", None)


def test_dask_runner_on_an_existing_cluster_by_address(store, tmp_path):
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        p = params(store, tmp_path / "dask", runner="dask", dask_address=cluster.scheduler_address)
        state = three_phase_study(p, return_state=True)
    assert state.is_completed(), state.message
    assert read_summary(tmp_path / "dask")["cache"]["misses"] == 3
    assert_same_tables(tables(tmp_path / "dask"), core_tables(store, p))
