"""Folder ingest: outcomes, idempotence, replacement, conflicts, file-level errors, real data, and the CLI."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from backtest.data.csvformats import LAYOUTS
from backtest.data.ingest import IngestReport, ingest_folder
from backtest.data.store import Store
from backtest.errors import ConfigError, DataError
from cli.app import app

WriteFile = Callable[[str, str | bytes], Path]

SP500 = "date,open,high,low,close,volume,Name\n"
YAHOO = "Date,Open,High,Low,Close,Adj Close,Volume\n"
US = "Date,Open,High,Low,Close,Volume,OpenInt\n"


def sp500_rows(symbol: str, n: int, base: float = 10.0) -> str:
    return "".join(
        f"2020-01-{d:02d},{base + d},{base + d + 1},{base + d - 1},{base + d},100,{symbol}\n"
        for d in range(1, n + 1)
    )


def yahoo_rows(n: int, base: float = 10.0) -> str:
    return "".join(
        f"2020-01-{d:02d},{base + d},{base + d + 1},{base + d - 1},{base + d},{base + d},100\n"
        for d in range(1, n + 1)
    )


def us_rows(n: int, base: float = 10.0) -> str:
    return "".join(
        f"2020-01-{d:02d},{base + d},{base + d + 1},{base + d - 1},{base + d},100,0\n"
        for d in range(1, n + 1)
    )


@pytest.fixture
def mixed_folder(write_file: WriteFile) -> Path:
    """Three good files in three layouts (one with a bad row), plus files ingest must ignore."""
    write_file("AAA_data.csv", SP500 + sp500_rows("AAA", 5))
    write_file("BBB.csv", YAHOO + yahoo_rows(4) + "2020-01-05,1,3,1,x,1,5\n")
    path = write_file("ccc.us.txt", US + us_rows(6))
    write_file("README.md", "not data")
    write_file("universe.json", "{}")
    write_file(".~lock.AAA_data.csv#", "editor lock file")
    (path.parent / "nested").mkdir()
    (path.parent / "nested" / "DDD.csv").write_text(YAHOO + yahoo_rows(3))
    return path.parent


def by_file(report: IngestReport) -> dict[str, tuple[str | None, str, int, int]]:
    return {f.file: (f.symbol, f.outcome, f.rows, f.rejected_rows) for f in report.files}


def store_mtimes(store: Store) -> dict[str, int]:
    return {
        str(p.relative_to(store.root)): p.stat().st_mtime_ns for p in store.root.rglob("*") if p.is_file()
    }


def test_ingest_mixed_layouts(tmp_path: Path, mixed_folder: Path) -> None:
    store = Store(tmp_path / "store")
    report = ingest_folder(mixed_folder, store, workers=1, durable=False)

    assert by_file(report) == {
        "AAA_data.csv": ("AAA", "added", 5, 0),
        "BBB.csv": ("BBB", "added", 4, 1),
        "ccc.us.txt": ("CCC", "added", 6, 0),
    }
    assert [(p.file, p.line) for p in report.problems] == [("BBB.csv", 6)]
    assert report.problems[0].reason.startswith("non-numeric close: 'x'")
    assert store.symbols() == ["AAA", "BBB", "CCC"]
    catalog = store.catalog().set_index("symbol")
    assert catalog.loc["BBB", "rejected_rows"] == 1
    assert catalog.loc["CCC", "source_file"] == str((mixed_folder / "ccc.us.txt").resolve())
    rejects = store.rejects("BBB")
    assert rejects[["line", "raw"]].values.tolist() == [[6, "2020-01-05,1,3,1,x,1,5"]]
    assert rejects["source_file"].tolist() == [str((mixed_folder / "BBB.csv").resolve())]
    assert store.load(["CCC"]).close[0].tolist() == [11.0, 12.0, 13.0, 14.0, 15.0, 16.0]
    assert report.ok and report.totals()["added"] == 3 and report.rows == 15
    json.dumps(report.to_dict())  # JSON-ready as it is


def test_reingest_changes_nothing(tmp_path: Path, mixed_folder: Path) -> None:
    store = Store(tmp_path / "store")
    ingest_folder(mixed_folder, store, workers=1, durable=False)
    before, catalog = store_mtimes(store), store.catalog()
    report = ingest_folder(mixed_folder, store, workers=1, durable=False)
    assert {f.outcome for f in report.files} == {"unchanged"}
    assert by_file(report)["BBB.csv"] == ("BBB", "unchanged", 4, 1)
    assert store_mtimes(store) == before
    assert store.catalog().equals(catalog)


def test_touched_but_identical_file_is_unchanged(tmp_path: Path, mixed_folder: Path) -> None:
    store = Store(tmp_path / "store")
    ingest_folder(mixed_folder, store, workers=1, durable=False)
    prices_before = {p.name: p.stat().st_mtime_ns for p in store.prices_dir.iterdir()}
    path = mixed_folder / "AAA_data.csv"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    report = ingest_folder(mixed_folder, store, workers=1, durable=False)
    assert by_file(report)["AAA_data.csv"][1] == "unchanged"
    assert {p.name: p.stat().st_mtime_ns for p in store.prices_dir.iterdir()} == prices_before
    assert store.entries()["AAA"].source_mtime_ns == path.stat().st_mtime_ns  # remembered for the next skip


def test_changed_file_replaces_only_its_symbol(
    tmp_path: Path, mixed_folder: Path, write_file: WriteFile
) -> None:
    store = Store(tmp_path / "store")
    ingest_folder(mixed_folder, store, workers=1, durable=False)
    old = store.entries()
    others_before = {s: (store.root / old[s].file).stat().st_mtime_ns for s in ("AAA", "BBB")}

    write_file("ccc.us.txt", US + us_rows(7, base=20.0))
    report = ingest_folder(mixed_folder, store, workers=1, durable=False)

    assert by_file(report)["ccc.us.txt"] == ("CCC", "replaced", 7, 0)
    assert {f.outcome for f in report.files if f.symbol != "CCC"} == {"unchanged"}
    new = store.entries()
    assert new["CCC"].data_fingerprint != old["CCC"].data_fingerprint
    assert new["CCC"].source_fingerprint != old["CCC"].source_fingerprint
    assert not (store.root / old["CCC"].file).exists()
    assert {s: (store.root / new[s].file).stat().st_mtime_ns for s in ("AAA", "BBB")} == others_before
    assert {s: new[s] for s in ("AAA", "BBB")} == {s: old[s] for s in ("AAA", "BBB")}
    assert store.load(["CCC"]).close[0, 0] == 21.0


def test_second_file_with_same_symbol_fails(tmp_path: Path, write_file: WriteFile) -> None:
    write_file("AAA_data.csv", SP500 + sp500_rows("AAA", 3))
    write_file("AAA.csv", YAHOO + yahoo_rows(5, base=50.0))  # sorts first: "AAA.csv" < "AAA_data.csv"
    store = Store(tmp_path / "store")
    report = ingest_folder(tmp_path / "src", store, workers=1, durable=False)
    assert by_file(report) == {"AAA.csv": ("AAA", "added", 5, 0), "AAA_data.csv": ("AAA", "failed", 0, 0)}
    (problem,) = report.files[1].problems
    assert problem.line is None and "already ingested from AAA.csv" in problem.reason
    assert store.load(["AAA"]).close[0, 0] == 51.0
    assert len(list(store.prices_dir.iterdir())) == 1  # the loser's file was not kept


def test_file_level_errors_are_reported_and_the_rest_goes_in(tmp_path: Path, write_file: WriteFile) -> None:
    write_file("GOOD.csv", YAHOO + yahoo_rows(3))
    write_file("EMPTY.csv", "")
    write_file("HEADER.csv", YAHOO)
    write_file("ODD.csv", "ticker;date;price\nX;2020-01-01;1\n")
    write_file("BINARY.txt", b"\x00\x01\x02\x03PK")
    write_file("ALLBAD.csv", YAHOO + "2020-01-01,x,1,1,1,1,1\n2020-01-02,1,1,1,,1,1\n")
    store = Store(tmp_path / "store")
    report = ingest_folder(tmp_path / "src", store, workers=1, durable=False)

    outcomes = by_file(report)
    assert outcomes["GOOD.csv"] == ("GOOD", "added", 3, 0)
    failed = {f.file: f for f in report.files if f.outcome == "failed"}
    assert set(failed) == {"EMPTY.csv", "HEADER.csv", "ODD.csv", "BINARY.txt", "ALLBAD.csv"}
    reason = {name: f.problems[0].reason for name, f in failed.items()}
    assert all(f.problems[0].line is None for f in failed.values())
    assert reason["EMPTY.csv"] == "empty file"
    assert reason["HEADER.csv"].startswith("header only")
    assert "unknown column layout" in reason["ODD.csv"]
    assert all(layout.example_header in reason["ODD.csv"] for layout in LAYOUTS)
    assert reason["BINARY.txt"].startswith("unreadable bytes")
    assert reason["ALLBAD.csv"] == "no valid rows: all 2 data rows were rejected"
    assert [p.line for p in failed["ALLBAD.csv"].problems[1:]] == [2, 3]
    assert failed["ALLBAD.csv"].rejected_rows == 2
    assert store.symbols() == ["GOOD"]
    assert report.ok


def test_process_pool_gives_the_same_result(tmp_path: Path, mixed_folder: Path) -> None:
    serial, pooled = Store(tmp_path / "serial"), Store(tmp_path / "pooled")
    one = ingest_folder(mixed_folder, serial, workers=1, durable=False)
    two = ingest_folder(mixed_folder, pooled, workers=2)
    assert two.workers == 2
    assert [f.to_dict() for f in one.files] == [f.to_dict() for f in two.files]
    cols = ["symbol", "file", "rows", "rejected_rows", "source_fingerprint", "data_fingerprint"]
    assert serial.catalog()[cols].equals(pooled.catalog()[cols])


def test_bad_arguments(tmp_path: Path, write_file: WriteFile) -> None:
    store = Store(tmp_path / "store")
    with pytest.raises(DataError, match="does not exist"):
        ingest_folder(tmp_path / "missing", store)
    path = write_file("A.csv", YAHOO + yahoo_rows(2))
    with pytest.raises(DataError, match="not a folder"):
        ingest_folder(path, store)
    with pytest.raises(ConfigError, match="workers"):
        ingest_folder(path.parent, store, workers=0)
    (tmp_path / "empty").mkdir()
    empty = ingest_folder(tmp_path / "empty", store, workers=1)
    assert empty.files == () and not empty.ok


# -- real data ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sp500_store(sp500_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, IngestReport]:
    store = Store(tmp_path_factory.mktemp("sp500") / "store")
    return store, ingest_folder(sp500_dir, store, durable=False)


def test_real_data_ingest(sp500_dir: Path, sp500_store: tuple[Store, IngestReport]) -> None:
    store, report = sp500_store
    assert len(report.files) == 505 and report.count("added") == 505
    assert len(store.symbols()) == 505
    assert {"AAPL", "BRK.B", "BF.B"} <= set(store.symbols())

    missing = [p for p in report.problems if p.reason.startswith("missing")]
    assert len(missing) == 11
    for problem in missing:
        assert problem.reason in ("missing field: open", "missing fields: open, high, low"), problem
    # Every other rejection is a real OHLC inconsistency of the source data, never a parsing failure.
    others = [p.reason for p in report.problems if not p.reason.startswith("missing")]
    assert all(r.startswith(("high < low", "close outside", "open outside")) for r in others), others

    catalog = store.catalog()
    assert catalog["rows"].sum() + catalog["rejected_rows"].sum() == 619_040
    for row in catalog.itertuples():
        with open(row.source_file, "rb") as f:
            data_lines = sum(1 for _ in f) - 1
        assert row.rows + row.rejected_rows == data_lines, row.symbol
    aapl = store.entries()["AAPL"]
    assert (str(aapl.first_date), str(aapl.last_date), aapl.rows) == ("2013-02-08", "2018-02-07", 1259)


def test_real_data_reingest_and_load(sp500_dir: Path, sp500_store: tuple[Store, IngestReport]) -> None:
    store, _ = sp500_store
    before = store_mtimes(store)
    again = ingest_folder(sp500_dir, store, durable=False)
    assert again.count("unchanged") == 505
    assert store_mtimes(store) == before
    panel = store.load(["AAPL", "FTV"], start="2016-01-01", end="2016-12-31")
    assert str(panel.dates[0]) == "2016-01-04" and str(panel.dates[-1]) == "2016-12-30"
    ftv = panel.frame("FTV")
    assert str(ftv.index[0].date()) == "2016-07-05"  # listed 2016-07-01, whose row has no open/high/low


# -- CLI ------------------------------------------------------------------------------------------------

runner = CliRunner()


def test_cli_ingest_and_catalog_text(tmp_path: Path, mixed_folder: Path) -> None:
    store = tmp_path / "store"
    result = runner.invoke(app, ["ingest", str(mixed_folder), "--store", str(store), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "added" in result.output
    assert "BBB.csv" in result.output and "non-numeric close" in result.output
    assert "3 files: 3 added" in result.output

    result = runner.invoke(app, ["catalog", "--store", str(store)])
    assert result.exit_code == 0, result.output
    for symbol in ("AAA", "BBB", "CCC"):
        assert symbol in result.output
    assert "2020-01-01" in result.output and "3 symbols, 15 rows, 1 rejected" in result.output


def test_cli_json(tmp_path: Path, mixed_folder: Path) -> None:
    store = tmp_path / "store"
    result = runner.invoke(
        app, ["ingest", str(mixed_folder), "--store", str(store), "--json", "--workers", "1"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["totals"]["added"] == 3
    assert report["files"][1]["problems"] == [
        {"file": "BBB.csv", "line": 6, "reason": "non-numeric close: 'x'"}
    ]

    result = runner.invoke(app, ["catalog", "--store", str(store), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [
        {
            "symbol": "AAA",
            "first_date": "2020-01-01",
            "last_date": "2020-01-05",
            "rows": 5,
            "rejected_rows": 0,
        },
        {
            "symbol": "BBB",
            "first_date": "2020-01-01",
            "last_date": "2020-01-04",
            "rows": 4,
            "rejected_rows": 1,
        },
        {
            "symbol": "CCC",
            "first_date": "2020-01-01",
            "last_date": "2020-01-06",
            "rows": 6,
            "rejected_rows": 0,
        },
    ]


def test_cli_errors(tmp_path: Path, write_file: WriteFile) -> None:
    result = runner.invoke(app, ["ingest", str(tmp_path / "nowhere"), "--store", str(tmp_path / "store")])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: source folder {tmp_path / 'nowhere'} does not exist"
    assert "Traceback" not in result.output

    write_file("EMPTY.csv", "")
    result = runner.invoke(app, ["ingest", str(tmp_path / "src"), "--store", str(tmp_path / "store")])
    assert result.exit_code == 1
    assert "error: no file could be ingested" in result.stderr
    assert "empty file" in result.stdout  # the reason is still shown

    result = runner.invoke(app, ["catalog", "--store", str(tmp_path / "absent")])
    assert result.exit_code == 1 and "no store at" in result.stderr

    result = runner.invoke(app, ["catalog", "--store", str(tmp_path / "store"), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout) == []
