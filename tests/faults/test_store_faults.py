"""The store under stress, for real: huge files, a read-only or full file system, a crashed or killed ingest.

Read-only and full file systems are real tmpfs mounts (the tests run as root in CI); where mounting is not
permitted the full-disk case falls back to RLIMIT_FSIZE in a subprocess and the read-only case skips.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from backtest.data.ingest import ingest_folder
from backtest.data.store import Store
from backtest.data.synthetic import generate_universe
from cli.app import app
from tests.faults.conftest import REPO, wait_for

# -- bounded memory ------------------------------------------------------------------------------------

PEAK_RSS = """
import resource, sys
from backtest.data.validation import validate_file
checked = validate_file(sys.argv[1])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(checked.rows, checked.rejected_rows, checked.rejects.num_rows, peak)
"""
#: Extra peak memory allowed for a file 8x larger: the reader holds one block and the kept rows, not the file.
MEMORY_GROWTH_BOUND = 48 * 2**20


def write_big_file(path: Path, megabytes: int) -> int:
    """One symbol's 20 years of bars, repeated: like a vendor dump gone wrong (mostly duplicate dates)."""
    import numpy as np

    days = np.arange(np.datetime64("2000-01-03"), np.datetime64("2020-01-01")).astype(str)
    block = "".join(f"{d},10.0,11.5,9.25,10.5,12345,BIG\n" for d in days).encode()
    with open(path, "wb") as out:
        out.write(b"date,open,high,low,close,volume,Name\n")
        for _ in range(max(1, megabytes * 2**20 // len(block))):
            out.write(block)
    return path.stat().st_size


def peak_rss(path: Path) -> tuple[int, int, int, int]:
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, str(path)], capture_output=True, text=True, check=True, timeout=120
    )
    rows, rejected, listed, peak = map(int, done.stdout.split())
    return rows, rejected, listed, peak


def test_huge_files_are_streamed_in_bounded_memory(tmp_path):
    small, big = tmp_path / "small_data.csv", tmp_path / "big_data.csv"
    small_size, big_size = write_big_file(small, 10), write_big_file(big, 80)
    assert big_size > 7 * small_size
    rows_s, _, _, peak_s = peak_rss(small)
    rows_b, rejected_b, listed_b, peak_b = peak_rss(big)
    assert rows_s == rows_b == 7303  # each calendar day once; all the rest is a duplicate date
    assert rejected_b > 8 * 10**5 and listed_b == 100_000  # every reject counted, the first 100,000 listed
    growth = peak_b - peak_s
    print(
        f"peak RSS {peak_s / 2**20:.0f} MB for {small_size / 1e6:.0f} MB, {peak_b / 2**20:.0f} MB for {big_size / 1e6:.0f} MB"
    )
    assert growth < MEMORY_GROWTH_BOUND, f"peak RSS grew by {growth / 2**20:.0f} MB"


# -- real small file systems ---------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}): needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


@pytest.fixture(scope="module")
def market(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("market")
    generate_universe(folder, 12, 7, seed=5, workers=1)
    return folder


def fingerprints(store: Store) -> dict[str, str]:
    return {s: store.data_fingerprint([s]) for s in store.symbols()}


def assert_consistent(store: Store) -> None:
    """Every catalog row names a readable file; nothing but the catalog, the lock and named files is left."""
    catalog = store.catalog()
    named = {Path(f).name for f in catalog["file"]}
    assert {p.name for p in store.prices_dir.iterdir()} == named
    assert not [p for p in store.root.rglob(".*.tmp")]
    if len(catalog):
        assert store.load(list(catalog["symbol"])).n_symbols == len(catalog)


def test_read_only_store_fails_cleanly_and_stays_readable(market, tmp_path):
    with tmpfs(tmp_path / "ro", "20m") as root:
        store = Store(root / "store")
        ingest_folder(market, store, workers=1, durable=False)
        before = fingerprints(store)
        remount(root, "ro")
        try:
            result = CliRunner().invoke(app, ["ingest", str(market), "--store", str(store.root)])
            assert result.exit_code == 1
            assert "error: " in result.output and "Read-only file system" in result.output
            assert "Traceback" not in result.output
            assert fingerprints(Store(store.root)) == before  # and it can still be read
            assert_consistent(Store(store.root))
        finally:
            remount(root, "rw")


def test_full_disk_during_ingest_fails_cleanly_and_a_rerun_completes(market, tmp_path):
    with tmpfs(tmp_path / "full", "256k") as root:
        store = Store(root / "store")
        result = CliRunner().invoke(app, ["ingest", str(market), "--store", str(store.root), "--json"])
        assert "Traceback" not in result.output
        if result.exit_code == 0:
            # the price files that did not fit are reported; what is in the catalog is whole
            files = json.loads(result.output)["files"]
            failed = [f for f in files if f["outcome"] == "failed"]
            assert failed and all("No space left on device" in f["problems"][0]["reason"] for f in failed)
            assert sorted(store.symbols()) == sorted(f["symbol"] for f in files if f["outcome"] == "added")
        else:
            # the catalog itself did not fit: one clear line, and the previous (empty) catalog stands
            assert result.exit_code == 1 and "No space left on device" in result.output, result.output
            assert store.symbols() == []
        assert not list(store.root.rglob(".*.tmp"))
        assert Store(store.root).load(store.symbols()).n_symbols == len(store.symbols())

        remount(root, "size=20m")
        again = ingest_folder(market, store, workers=1, durable=False)
        assert again.count("failed") == 0
        clean = Store(tmp_path / "clean")
        ingest_folder(market, clean, workers=1, durable=False)
        assert fingerprints(store) == fingerprints(clean)
        assert_consistent(store)


def test_half_written_store_is_cleaned_by_the_next_ingest(market, tmp_path):
    store = Store(tmp_path / "store")
    ingest_folder(market, store, workers=1, durable=False)
    before = fingerprints(store)
    # what a crash mid-write leaves: temporary files and a price file no catalog row names yet
    (store.root / ".catalog.parquet.123.abcd.tmp").write_bytes(b"PAR1 half a catalog")
    (store.prices_dir / ".ZZZ.0123.parquet.99.ff.tmp").write_bytes(b"PAR1 half")
    orphan = store.prices_dir / "ZZZ.0123456789abcdef.parquet"
    orphan.write_bytes(b"PAR1 a price file whose catalog commit never happened")
    assert fingerprints(Store(store.root)) == before  # readers never look at them
    ingest_folder(market, store, workers=1, durable=False)
    assert not orphan.exists()
    assert fingerprints(store) == before
    assert_consistent(store)


def test_corrupt_catalog_is_a_clear_error(market, tmp_path):
    store = Store(tmp_path / "store")
    ingest_folder(market, store, workers=1, durable=False)
    data = store.catalog_path.read_bytes()
    store.catalog_path.write_bytes(data[: len(data) // 2])
    result = CliRunner().invoke(app, ["catalog", "--store", str(store.root)])
    assert result.exit_code == 1 and "catalog" in result.output and "unreadable" in result.output
    assert "Traceback" not in result.output


INGEST = """
import sys
from cli.app import app
sys.argv = ["backtest", "ingest", sys.argv[1], "--store", sys.argv[2], "--workers", "1"]
app()
"""


def test_ingest_killed_half_way_then_rerun_gives_a_consistent_store(tmp_path):
    source = tmp_path / "market"
    generate_universe(source, 48, 7, seed=9, workers=1)
    store = Store(tmp_path / "store")
    proc = subprocess.Popen(
        [sys.executable, "-c", INGEST, str(source), str(store.root)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: store.prices_dir.is_dir() and len(list(store.prices_dir.iterdir())) >= 5,
            60,
            "some price files",
            proc,
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    written = len(list(store.prices_dir.iterdir()))
    assert 5 <= written < 48 * 2  # killed half way (price files and their temporaries)
    # a reader sees the last committed catalog (here: none yet), never a half-written one
    assert Store(store.root).symbols() == [] or Store(store.root).load(Store(store.root).symbols())

    result = CliRunner().invoke(
        app, ["ingest", str(source), "--store", str(store.root), "--workers", "1", "--json"]
    )
    assert result.exit_code == 0, result.output
    totals = json.loads(result.output)["totals"]
    assert totals["failed"] == 0 and totals["files"] == 48
    clean = Store(tmp_path / "clean")
    ingest_folder(source, clean, workers=1, durable=False)
    assert fingerprints(store) == fingerprints(clean)
    assert_consistent(store)
    shutil.rmtree(source)


def test_full_disk_by_file_size_limit(tmp_path, market):
    """The same check without mount rights: RLIMIT_FSIZE makes every write past the limit fail with EFBIG."""
    script = textwrap.dedent(
        """
        import resource, signal, sys, json
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
        from backtest.data.ingest import ingest_folder
        from backtest.data.store import Store
        report = ingest_folder(sys.argv[1], Store(sys.argv[2]), workers=1, durable=False)
        print(json.dumps([[f.symbol, f.outcome, f.problems[0].reason if f.problems else ""] for f in report.files]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(market), str(tmp_path / "store")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    outcomes = json.loads(done.stdout)
    too_large = [o for o in outcomes if o[1] == "failed"]
    assert too_large and all("File too large" in reason for _, _, reason in too_large), outcomes
    assert all(outcome in ("added", "failed") for _, outcome, _ in outcomes)
    store = Store(tmp_path / "store")
    assert sorted(store.symbols()) == sorted(s for s, outcome, _ in outcomes if outcome == "added")
    assert_consistent(store)
    again = ingest_folder(market, store, workers=1, durable=False)
    assert again.count("failed") == 0 and len(store.symbols()) == len(outcomes)
    assert_consistent(store)
