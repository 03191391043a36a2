"""The merge of chunk results (combine, collect) and the cache of merged tables (collect_cached)."""

import os
import time

import numpy as np
import pandas as pd
import pytest
from pandas.api.types import union_categoricals

from backtest.engine.study import StudyPlan, chunked, combine, date_range, run_chunk, run_study
from backtest.results.outputs import (
    OUTPUT_TABLES,
    CollectAhead,
    collect,
    collect_cached,
    collected_key,
    prune_collected,
)
from tests.panels import CONFIG, random_panel


@pytest.fixture(scope="module")
def panel():
    return random_panel(n_symbols=9, n_bars=1300, seed=11)


@pytest.fixture(scope="module")
def plan(panel):
    first, last = date_range(panel)
    return StudyPlan.create(CONFIG, first, last)


@pytest.fixture(scope="module")
def chunks(panel, plan):
    return [run_chunk(panel.select(c), plan) for c in chunked(list(panel.symbols), 4)]


def named(chunks):
    return ((f"chunk-{i:04d}", c) for i, c in enumerate(chunks))


def test_combine_merges_oos_like_pandas_concat(chunks, plan) -> None:
    expected = pd.concat([c.oos_returns.drop(columns="symbol") for c in chunks], ignore_index=True)
    expected.insert(1, "symbol", union_categoricals([c.oos_returns["symbol"] for c in chunks]))
    merged = combine(plan, iter(chunks)).oos_returns
    pd.testing.assert_frame_equal(merged, expected, check_exact=True)
    assert list(merged["symbol"].cat.categories) == [s for c in chunks for s in c.symbols]


def test_run_study_streams_chunks_into_combine(panel, plan) -> None:
    first, last = date_range(panel)
    one = run_study(CONFIG, panel.symbols, panel.select, first, last, chunk_size=4, workers=1)
    two = run_study(CONFIG, panel.symbols, panel.select, first, last, chunk_size=3, workers=2)
    pd.testing.assert_frame_equal(one.oos_returns, two.oos_returns, check_exact=True)
    pd.testing.assert_frame_equal(one.selections, two.selections, check_exact=True)


def test_collect_cached_merges_once_then_links(tmp_path, chunks, plan) -> None:
    key = collected_key(["a", "b", "c"])
    cache = tmp_path / "cache"
    first = collect_cached(plan, named(chunks), tmp_path / "one", cache, key)
    assert not first.reused and [r["chunk"] for r in first.chunks] == [
        "chunk-0000",
        "chunk-0001",
        "chunk-0002",
    ]

    reference = tmp_path / "reference"
    collect(plan, iter(chunks), reference)

    def never():
        raise AssertionError("a cache hit must not read any chunk")
        yield

    second = collect_cached(plan, never(), tmp_path / "two", cache, key)
    assert second.reused and second.figures == first.figures and second.chunks == first.chunks
    assert second.timings == pytest.approx(first.timings)
    for stem in OUTPUT_TABLES:
        name = f"{stem}.parquet"
        got, want = pd.read_parquet(tmp_path / "two" / name), pd.read_parquet(reference / name)
        pd.testing.assert_frame_equal(got, want, check_exact=True)
        # the same bytes on disk, not a second copy
        assert os.path.samefile(tmp_path / "two" / name, cache / key / name)
        assert not os.access(cache / key / name, os.W_OK) or os.geteuid() == 0


def test_collect_cached_rebuilds_a_tampered_entry(tmp_path, chunks, plan) -> None:
    key = collected_key(["x"])
    cache = tmp_path / "cache"
    collect_cached(plan, named(chunks), tmp_path / "one", cache, key)
    target = tmp_path / "one" / "portfolio.parquet"
    os.chmod(target, 0o644)
    pd.DataFrame({"x": [1]}).to_parquet(target)  # rewritten in place through the output folder's link
    again = collect_cached(plan, named(chunks), tmp_path / "two", cache, key)
    assert not again.reused
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "two" / "portfolio.parquet"),
        combine(plan, iter(chunks)).portfolio,
        check_exact=True,
    )


def test_collected_key_depends_on_every_chunk_and_its_order() -> None:
    keys = {collected_key(k) for k in (["a", "b"], ["b", "a"], ["a"], ["a", "c"])}
    assert len(keys) == 4 and collected_key(["a", "b"]) == collected_key(("a", "b"))


def test_prune_collected_keeps_the_current_entry(tmp_path, chunks, plan) -> None:
    cache = tmp_path / "cache"
    keys = [collected_key([str(i)]) for i in range(3)]
    for i, key in enumerate(keys):
        collect_cached(plan, named(chunks), tmp_path / f"out{i}", cache, key)
        old = time.time() - 1000 * (3 - i)
        os.utime(cache / key / "collected.json", (old, old))
    assert prune_collected(cache, keys[0], max_bytes=10**12, max_age_seconds=1500) == 1  # keys[1]: expired
    assert sorted(p.name for p in cache.iterdir()) == sorted([keys[0], keys[2]])
    assert prune_collected(cache, keys[0], max_bytes=0, max_age_seconds=1e9) == 1
    assert [p.name for p in cache.iterdir()] == [keys[0]]
    # the outputs linked from a pruned entry are still whole
    assert np.isfinite(pd.read_parquet(tmp_path / "out1" / "portfolio.parquet")["ret"]).all()
    # a staging folder left by a run killed part-way goes once its writer is gone; a live one's stays
    import subprocess
    import sys

    from backtest.atomic import temporary_for

    dead = int(
        subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
        ).stdout
    )
    live = temporary_for(cache / "live")
    killed = live.with_name(live.name.replace(f".{os.getpid()}.", f".{dead}."))
    live.mkdir()
    killed.mkdir()
    prune_collected(cache, keys[0], max_bytes=10**12, max_age_seconds=1e9)
    assert live.exists() and not killed.exists()


def test_free_heap_memory_goes_back_to_the_os() -> None:
    import platform

    from backtest.engine.heap import release_free_memory

    assert release_free_memory() is (platform.libc_ver()[0] == "glibc")


def test_collect_leaves_nothing_behind_when_the_writer_fails(tmp_path, chunks, plan, monkeypatch) -> None:
    """The returns are written on a thread of their own: its error reaches the caller, and no file stays."""
    import pyarrow.parquet as pq

    real, calls = pq.ParquetWriter.write_table, []

    def failing(self, table, *args, **kwargs):
        calls.append(table.num_rows)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(self, table, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", failing)
    with pytest.raises(OSError, match="disk full"):
        collect(plan, iter(chunks), tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def _chunk_files(tmp_path, chunks):
    from backtest.results.chunkio import chunk_to_bytes

    folder = tmp_path / "results"
    folder.mkdir()
    paths = []
    for i, c in enumerate(chunks):
        paths.append(folder / f"key-{i}")
        paths[-1].write_bytes(chunk_to_bytes(c))
    return paths


def test_collect_ahead_builds_the_entry_as_chunks_finish_in_any_order(tmp_path, chunks, plan) -> None:
    paths = _chunk_files(tmp_path, chunks)
    names = [f"chunk-{i:04d}" for i in range(len(chunks))]
    cache, key = tmp_path / "cache", collected_key(["x", "y", "z"])
    ahead = CollectAhead(plan, names, paths, cache, key)
    for i in (2, 0, 1):  # finishing out of universe order: merged in universe order all the same
        assert not (cache / key).exists()
        ahead.ready(i)
    assert ahead.wait() and ahead.error is None

    def never():
        raise AssertionError("the entry is complete: nothing may be read again")
        yield

    linked = collect_cached(plan, never(), tmp_path / "out", cache, key)
    reference = tmp_path / "reference"
    collect(plan, iter(chunks), reference)
    assert [r["chunk"] for r in linked.chunks] == names
    for stem in OUTPUT_TABLES:
        got = pd.read_parquet(tmp_path / "out" / f"{stem}.parquet")
        pd.testing.assert_frame_equal(got, pd.read_parquet(reference / f"{stem}.parquet"), check_exact=True)
    # an entry already there: nothing is started, and waiting says this run did not build it
    assert not CollectAhead(plan, names, paths, cache, key).wait()


def handed(chunk):
    """A chunk result as its task hands it over: its rows as the Arrow table its file holds."""
    from dataclasses import replace

    from backtest.results.chunkio import oos_rows

    return replace(chunk, oos_returns=oos_rows(chunk))


def test_collect_ahead_from_handed_over_results_writes_the_files_a_merge_from_the_chunk_files_writes(
    tmp_path, chunks, plan
) -> None:
    from backtest.results.handoff import ResultHandoff

    paths = _chunk_files(tmp_path, chunks)
    names = [f"chunk-{i:04d}" for i in range(len(chunks))]
    handoff = ResultHandoff()
    ahead = CollectAhead(plan, names, paths, tmp_path / "handed", collected_key(["h"]), handoff=handoff)
    for i in (1, 0, 2):  # out of order: chunk 1 waits in the handoff until chunk 0 is merged
        assert handoff.offer(paths[i].name, handed(chunks[i]))
        ahead.ready(i)
    assert ahead.wait() and ahead.error is None
    # all taken, and none expected any more
    assert len(handoff) == 0 and not handoff.offer(paths[0].name, handed(chunks[0]))
    from_files = CollectAhead(plan, names, paths, tmp_path / "files", collected_key(["f"]))
    for i in range(len(chunks)):
        from_files.ready(i)
    assert from_files.wait()
    for stem in OUTPUT_TABLES:
        a = (tmp_path / "handed" / collected_key(["h"]) / f"{stem}.parquet").read_bytes()
        b = (tmp_path / "files" / collected_key(["f"]) / f"{stem}.parquet").read_bytes()
        assert a == b, stem


def test_handoff_keeps_only_expected_results_and_drops_what_is_forgotten(chunks) -> None:
    from backtest.results.handoff import ResultHandoff

    result = handed(chunks[0])
    rows = result.oos_returns.nbytes
    handoff = ResultHandoff()
    assert not handoff.offer("a", result) and handoff.take("a") is None  # nobody merges here: nothing kept
    handoff.expect(["a", "b"])
    handoff.expect(["b"])  # two consumers of b
    assert handoff.offer("a", result) and handoff.offer("b", result)
    assert handoff.take("a") is result and handoff.take("a") is None
    handoff.forget(["a", "b"])
    assert len(handoff) == 1  # b is still expected by the second consumer
    handoff.forget(["b"])
    assert len(handoff) == 0 and not handoff.offer("b", result)

    # bounded: rows waiting for a slow chunk ahead of them never exceed max_bytes; the rest is read from files
    small = ResultHandoff(max_bytes=2 * rows)
    small.expect(["x", "y", "z"])
    assert small.offer("x", result) and small.offer("y", result) and not small.offer("z", result)
    assert small.offer("x", result)  # a retried chunk's result replaces its own, it does not count twice
    assert small.take("z") is None and small.take("x") is result
    assert small.offer("z", result)  # room again once the merge took one

    # only what the file holds: rows as a DataFrame would merge differently from the file's Arrow rows
    with pytest.raises(TypeError, match="oos_rows"):
        handoff.offer("c", chunks[0])


def test_collect_ahead_publishes_nothing_when_a_chunk_fails_or_a_file_is_bad(tmp_path, chunks, plan) -> None:
    paths = _chunk_files(tmp_path, chunks)
    names = [f"chunk-{i:04d}" for i in range(len(chunks))]
    cache = tmp_path / "cache"
    failed = CollectAhead(plan, names, paths, cache, collected_key(["failed"]))
    failed.ready(0)
    failed.abandon()  # chunk 1 failed
    assert not failed.wait() and failed.error is None
    paths[1].write_bytes(b"not a chunk result")
    broken = CollectAhead(plan, names, paths, cache, collected_key(["broken"]))
    for i in range(len(chunks)):
        broken.ready(i)
    assert not broken.wait() and broken.error is not None  # the collect step meets it again and reports it
    assert not any(cache.iterdir())  # no entry, no staging folder left behind
