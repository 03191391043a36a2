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


def test_prune_removes_the_temporaries_of_writers_that_are_gone(tmp_path):
    """A writer killed part-way leaves a hidden temporary: removed once its process is gone (after a short
    grace) or once it is stale, whoever wrote it; a live writer's temporary stays."""
    import subprocess
    import sys

    from backtest.cachedir import STALE_TEMP_SECONDS, TEMP_GRACE_SECONDS

    results, records, prices = tmp_path / "results", tmp_path / "records", tmp_path / "prices"
    for d in (results, records, prices):
        d.mkdir()
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead = int(gone.stdout)
    now = time.time()
    files = {
        "dead_idle": (prices / f".prices-a.arrow.{dead}.1.tmp", now - TEMP_GRACE_SECONDS - 5),
        "dead_fresh": (prices / f".prices-b.arrow.{dead}.1.tmp", now),
        "mine_idle": (results / f".key.{os.getpid()}.1.tmp", now - TEMP_GRACE_SECONDS - 5),
        "live_idle": (
            prices / ".prices-c.arrow.1.ab12.tmp",
            now - TEMP_GRACE_SECONDS - 5,
        ),  # pid 1 always runs
        "live_stale": (prices / ".prices-d.arrow.1.ab12.tmp", now - STALE_TEMP_SECONDS - 5),
        "foreign": (prices / ".notes.tmp", now - TEMP_GRACE_SECONDS - 5),
    }
    for path, mtime in files.values():
        path.write_bytes(b"")
        os.utime(path, (mtime, mtime))
    prune(results, records, max_bytes=10**9, max_age_seconds=10**6, extra=(prices,))
    left = {name for name, (path, _) in files.items() if path.exists()}
    assert left == {"dead_fresh", "mine_idle", "live_idle", "foreign"}
