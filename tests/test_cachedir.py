import os
import time

from backtest.cachedir import prune


def _entry(folder, records, name, size, age):
    (folder / name).write_bytes(b"x" * size)
    (records / name).write_text("{}")
    t = time.time() - age
    os.utime(folder / name, (t, t))


def test_prune_enforces_expiry_then_size_oldest_first_and_keeps_current(tmp_path):
    results, records, prices = tmp_path / "r", tmp_path / "k", tmp_path / "p"
    for d in (results, records, prices):
        d.mkdir()
    _entry(results, records, "old", 100, age=40 * 86400)
    _entry(results, records, "a", 100, age=300)
    _entry(results, records, "b", 100, age=200)
    _entry(results, records, "current", 100, age=10_000)
    (records / "orphan").write_text("{}")  # a record whose result file is gone
    report = prune(results, records, max_bytes=250, max_age_seconds=30 * 86400, keep=frozenset({"current"}))
    assert sorted(p.name for p in results.iterdir()) == ["b", "current"]
    assert sorted(p.name for p in records.iterdir()) == ["b", "current"]
    assert report.removed == 2 and report.bytes_after == 200 and report.bytes_before == 400
