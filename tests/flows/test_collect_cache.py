"""The flow's collect step is cached: a warm run links the merged tables instead of re-merging the chunks."""

import os

import pandas as pd
from prefect import flow

from backtest.engine.planning import make_plan, plan_chunks, resolve_universe
from backtest.engine.study import ChunkResult, run_chunk
from backtest.results import handoff
from backtest.results.chunkio import SMALL_TABLES, read_chunk
from cli.runs import read_summary
from flows.study import three_phase_study
from tasks.caching import StoredChunk
from tasks.chunks import ChunkJob, PriceSource, backtest_chunk
from tests.flows.test_study_flow import TABLES, params, tables


def test_warm_run_links_the_merged_tables_of_the_cold_run(store, tmp_path):
    cold = three_phase_study(params(store, tmp_path / "cold"), return_state=True)
    assert cold.is_completed(), cold.message
    assert read_summary(tmp_path / "cold")["cache"]["collect_reused"] is False

    warm = three_phase_study(params(store, tmp_path / "warm"), return_state=True)
    assert warm.is_completed(), warm.message
    s_cold, s_warm = read_summary(tmp_path / "cold"), read_summary(tmp_path / "warm")
    assert s_warm["cache"]["hits"] == 3 and s_warm["cache"]["collect_reused"] is True
    assert s_warm["figures"] == s_cold["figures"]
    for name in TABLES:
        assert os.path.samefile(tmp_path / "cold" / f"{name}.parquet", tmp_path / "warm" / f"{name}.parquet")

    # a recomputed chunk has the same key and the same numbers: the merged tables are still the cached ones
    results = store.root / "cache" / "results"
    chunk_file = sorted(p for p in results.iterdir() if p.name.startswith("chunk-"))[0]
    (store.root / "cache" / "records" / chunk_file.name).unlink()
    chunk_file.unlink()
    again = three_phase_study(params(store, tmp_path / "again"), return_state=True)
    assert again.is_completed(), again.message
    s_again = read_summary(tmp_path / "again")
    assert s_again["cache"]["misses"] == 1 and s_again["cache"]["collect_reused"] is True

    # a different study (other fees) is merged afresh, never served the first study's tables
    other = three_phase_study(params(store, tmp_path / "other", fees_bps=25), return_state=True)
    assert other.is_completed(), other.message
    assert read_summary(tmp_path / "other")["cache"]["collect_reused"] is False
    a, b = tables(tmp_path / "cold"), tables(tmp_path / "other")
    pd.testing.assert_frame_equal(a["selections"][["symbol", "fold"]], b["selections"][["symbol", "fold"]])
    assert not a["oos_returns"]["ret"].equals(b["oos_returns"]["ret"])


def test_chunk_task_returns_its_result_as_parquet_bytes(store, tmp_path):
    """Prefect keeps a task's return value in its state until the flow ends: it must be small bytes."""
    p = params(store, tmp_path)
    universe = resolve_universe(store.catalog())
    plan = make_plan(p.to_config(), universe)
    spec = plan_chunks(plan, universe, store.data_fingerprint, 8, 1)[0]
    panel = store.load(spec.symbols, end=plan.last_date)
    source = PriceSource(str(store.root), plan.last_date, str(tmp_path / "prices"))

    @flow
    def one_chunk():
        return backtest_chunk(ChunkJob(spec, plan, source))

    handoff.RESULTS.expect([spec.key])  # as the flow's ahead-collector does before the chunks run
    try:
        stored = one_chunk()
        handed = handoff.RESULTS.take(spec.key)  # the task, on this process's thread, handed its result over
    finally:
        handoff.RESULTS.forget([spec.key])
    assert isinstance(stored, StoredChunk) and isinstance(stored.blob, bytes)
    got, want = stored.load(), run_chunk(panel, plan)
    for name in ChunkResult.TABLES:
        pd.testing.assert_frame_equal(getattr(got, name), getattr(want, name), check_exact=True)
    from_file = read_chunk(stored.blob, oos_as_arrow=True)
    assert handed is not None and handed.oos_returns.equals(from_file.oos_returns)
    for name in SMALL_TABLES:
        pd.testing.assert_frame_equal(getattr(handed, name), getattr(want, name), check_exact=True)
    assert handed.symbols == from_file.symbols and handed.timings == from_file.timings
    assert len(handoff.RESULTS) == 0
