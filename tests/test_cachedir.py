import os
import time

from backtest.results.cache import prune


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


def test_prune_removes_the_temporaries_of_writers_that_are_gone(tmp_path):
    """A writer killed part-way leaves a hidden temporary: removed once its process (on this machine) is gone,
    or once it is stale, whoever wrote it; a live writer's temporary, or another machine's, stays."""
    import subprocess
    import sys

    from backtest.atomic import STALE_TEMP_SECONDS, temporary_for

    results, records, prices = tmp_path / "results", tmp_path / "records", tmp_path / "prices"
    for d in (results, records, prices):
        d.mkdir()
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead, host = int(gone.stdout), temporary_for(prices / "x").name.split(".")[-4]
    now = time.time()
    files = {
        "dead": (prices / f".prices-a.arrow.{host}.{dead}.1.tmp", now),
        "mine": (temporary_for(results / "key"), now),
        "live": (prices / f".prices-c.arrow.{host}.1.1.tmp", now),  # pid 1 always runs
        "live_stale": (prices / f".prices-d.arrow.{host}.1.1.tmp", now - STALE_TEMP_SECONDS - 5),
        "elsewhere": (prices / f".prices-e.arrow.0123abcd.{dead}.1.tmp", now),
        "elsewhere_stale": (prices / f".prices-f.arrow.0123abcd.{dead}.1.tmp", now - STALE_TEMP_SECONDS - 5),
        "foreign": (prices / ".notes.tmp", now),
    }
    for path, mtime in files.values():
        path.write_bytes(b"")
        os.utime(path, (mtime, mtime))
    prune(results, records, max_bytes=10**9, max_age_seconds=10**6, extra=(prices,))
    left = {name for name, (path, _) in files.items() if path.exists()}
    assert left == {"mine", "live", "elsewhere", "foreign"}
