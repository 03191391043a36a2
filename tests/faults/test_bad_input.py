"""Bad input files, hostile symbols and bad parameters: each gives a clear error or a quarantined row with its
reason, and nothing else is lost (a good file ingested beside the bad one always arrives whole)."""

from __future__ import annotations

import datetime as dt
import os
import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from backtest.config import FoldSpec, ParamGrid, StudyConfig
from backtest.data.ingest import IngestReport, ingest_folder
from backtest.data.store import Store
from backtest.engine.study import run_study
from backtest.errors import StrategyError
from cli.app import app

SP500 = "date,open,high,low,close,volume,Name\n"
TOMORROW_PLUS = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=30)).isoformat()


def rows(symbol: str, n: int = 30, start: str = "2020-01-01") -> str:
    days = np.busday_offset(np.datetime64(start), np.arange(n), roll="forward").astype(str)
    return "".join(
        f"{d},{10 + i % 7},{12 + i % 7},{9 + i % 7},{11 + i % 7},{100 + i},{symbol}\n"
        for i, d in enumerate(days)
    )


GOOD = SP500 + rows("GOOD")


def ingest(tmp_path: Path, files: dict[str, bytes]) -> tuple[IngestReport, Store]:
    src = tmp_path / "src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "GOOD_data.csv").write_text(GOOD)
    for name, content in files.items():
        (src / name).write_bytes(content)
    store = Store(tmp_path / "store")
    report = ingest_folder(src, store, workers=1, durable=False)
    good = next(f for f in report.files if f.file == "GOOD_data.csv")
    assert (good.outcome, good.rows, good.rejected_rows) == ("added", 30, 0)  # nothing else lost
    assert len(store.load(["GOOD"]).dates) == 30
    return report, store


def report_of(report: IngestReport, name: str):
    return next(f for f in report.files if f.file == name)


FILE_ERRORS = {
    "empty": (b"", "empty file"),
    "header_only": (SP500.encode(), "header only"),
    "header_only_crlf": (SP500.replace("\n", "\r\n").encode() + b"\r\n\r\n", "header only"),
    "unknown_layout": (b"ticker,when,price\nAAA,2020-01-02,1.5\n", "unknown column layout"),
    "semicolons": (
        (SP500 + rows("X")).replace(",", ";").encode(),
        "wrong delimiter: the columns are separated by semicolons",
    ),
    "tabs": (
        (SP500 + rows("X")).replace(",", "\t").encode(),
        "wrong delimiter: the columns are separated by tabs",
    ),
    "utf16": ((SP500 + rows("X")).encode("utf-16"), "UTF-16"),
    "binary": (b"PK\x03\x04" + bytes(range(256)) * 8, "binary content"),
    "latin1_header": (
        "dâte,open,high,low,close,volume,Name\n".encode("latin-1") + rows("X").encode(),
        "not UTF-8",
    ),
    "nul_in_symbol": ((SP500 + rows("A\x00B")).encode(), "control characters"),
    "all_rows_bad": ((SP500 + "2020-01-02,x,y,z,w,1,X\n").encode(), "no valid rows"),
}


@pytest.mark.parametrize("case", sorted(FILE_ERRORS))
def test_unusable_files_fail_with_a_reason_and_the_rest_goes_in(tmp_path, case):
    content, reason = FILE_ERRORS[case]
    report, store = ingest(tmp_path, {f"{case}.csv": content})
    bad = report_of(report, f"{case}.csv")
    assert bad.outcome == "failed"
    assert bad.problems[0].file == f"{case}.csv" and bad.problems[0].line is None
    assert reason in bad.problems[0].reason, bad.problems[0].reason
    assert store.symbols() == ["GOOD"]


def bad_row(line: str) -> bytes:
    """A file of 10 good rows of X, the bad line as line 12 (after the header and the 10 rows), one more good."""
    head = rows("X", 10, "2015-01-01")
    tail = rows("X", 1, "2019-01-01")
    return (SP500 + head + line + "\n" + tail).encode()


ROW_ERRORS = {
    "non_numeric": ("2018-01-02,abc,12,9,11,100,X", "non-numeric open: 'abc'"),
    "nan": ("2018-01-02,10,12,9,NaN,100,X", "non-numeric close: 'NaN'"),
    "inf": ("2018-01-02,10,inf,9,11,100,X", "non-numeric high: 'inf'"),
    "missing": ("2018-01-02,10,12,,11,100,X", "missing field: low"),
    "zero": ("2018-01-02,0,12,9,11,100,X", "non-positive open: 0"),
    "negative": ("2018-01-02,10,12,-9,11,100,X", "non-positive low: -9"),
    "absurd": ("2018-01-02,10,5e12,9,11,100,X", "absurd high: 5e+12 is above 1e+09"),
    "high_below_low": ("2018-01-02,10,8,9,8.5,100,X", "high < low: 8 < 9"),
    "duplicate_date": ("2015-01-02,10,12,9,11,100,X", "duplicate date 2015-01-02 (first at line 3)"),
    "unsorted_date": ("2014-06-02,10,12,9,11,100,X", "date out of order: 2014-06-02 is before 2015-01-14"),
    "future_date": (f"{TOMORROW_PLUS},10,12,9,11,100,X", f"date in the future: {TOMORROW_PLUS}"),
    "bad_date": ("2018-02-30,10,12,9,11,100,X", "bad date: '2018-02-30'"),
    "field_count": ("2018-01-02,10,12,9", "expected 7 fields, found 4"),
    "other_symbol": (
        "2018-01-02,10,12,9,11,100,'; DROP TABLE prices;--",
        "differs from the file's symbol 'X'",
    ),
}


@pytest.mark.parametrize("case", sorted(ROW_ERRORS))
def test_bad_rows_are_quarantined_with_line_and_reason(tmp_path, case):
    line, reason = ROW_ERRORS[case]
    report, store = ingest(tmp_path, {"X_data.csv": bad_row(line)})
    x = report_of(report, "X_data.csv")
    assert (x.outcome, x.rows, x.rejected_rows) == ("added", 11, 1)
    assert [(p.file, p.line) for p in x.problems] == [("X_data.csv", 12)]
    assert reason in x.problems[0].reason, x.problems[0].reason
    quarantined = store.rejects("X")
    assert quarantined["line"].tolist() == [12] and reason in quarantined["reason"].iloc[0]
    assert quarantined["raw"].iloc[0] == line
    assert len(store.load(["X"]).dates) == 11


def test_a_stray_non_utf8_byte_costs_only_its_row(tmp_path):
    content = bad_row("2018-01-02,10,12,9,11,100,X").replace(b"2018-01-02,10,12", b"2018-01-02,1\xe90,12")
    report, _ = ingest(tmp_path, {"X_data.csv": content})
    x = report_of(report, "X_data.csv")
    assert (x.rows, x.rejected_rows, x.problems[0].line) == (11, 1, 12)
    assert "not UTF-8" in x.problems[0].reason


def test_bom_and_crlf_give_the_same_store_as_plain_text(tmp_path):
    plain = (SP500 + rows("X")).encode()
    _, store = ingest(tmp_path / "a", {"X_data.csv": plain})
    other, other_store = ingest(
        tmp_path / "b", {"X_data.csv": b"\xef\xbb\xbf" + plain.replace(b"\n", b"\r\n")}
    )
    assert report_of(other, "X_data.csv").rows == 30
    assert store.data_fingerprint(["X"]) == other_store.data_fingerprint(["X"])


def test_newest_first_file_is_reversed_not_rejected(tmp_path):
    lines = rows("X").splitlines(keepends=True)
    report, _ = ingest(tmp_path, {"X_data.csv": (SP500 + "".join(reversed(lines))).encode()})
    x = report_of(report, "X_data.csv")
    assert (x.rows, x.rejected_rows) == (30, 0) and "reversed" in x.notes[0]


HOSTILE = [
    "../x",
    "../../etc/passwd",
    "/etc/passwd",
    "A/B",
    "A\\B",
    "..",
    "x'); DROP TABLE catalog;--",
    "CON",
    "a" * 300,
]


def test_hostile_symbols_stay_inside_the_store(tmp_path):
    files = {f"h{i}_data.csv": (SP500 + rows(sym.replace(",", ""))).encode() for i, sym in enumerate(HOSTILE)}
    _, store = ingest(tmp_path, files)
    assert sorted(store.symbols()) == sorted(["GOOD", *HOSTILE])
    outside = tmp_path / "etc"
    assert not outside.exists() and not (tmp_path / "x").exists()
    root = store.root.resolve()
    for path in store.root.rglob("*"):
        assert path.resolve().is_relative_to(root)
        assert path.parent.name in {"store", "prices", "rejects"}, path
    panel = store.load(HOSTILE)
    assert panel.symbols == tuple(HOSTILE) and len(panel.dates) == 30


# -- parameters ----------------------------------------------------------------------------------------


def one_line_error(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert message in result.output, result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 3  # one message (rich may wrap it)


@pytest.fixture
def small_store(tmp_path) -> Store:
    src = tmp_path / "src"
    src.mkdir()
    (src / "X_data.csv").write_text(SP500 + rows("X", 300))
    store = Store(tmp_path / "store")
    ingest_folder(src, store, workers=1, durable=False)
    return store


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--train-years", "0"], "train_years: Input should be greater than 0"),
        (["--test-years", "0.01"], "test_years must be at least one month"),
        (["--param", "fast="], "bad --param 'fast='"),
        (["--param", "fast=1:1000:1", "--param", "slow=1:1000:1"], "the grid has 1,000,000 combinations"),
        (["--param", "fast=1:2000000:1"], "expands to 2,000,000 values"),
        (["--param", "fast=nan"], "non-finite value"),
        (["--strategy", "no_such_strategy"], "unknown strategy 'no_such_strategy'"),
        (["--strategy", "no_such_module:f"], "cannot import 'no_such_module'"),
        (["--param", "fast=50", "--param", "slow=10"], "fast"),
    ],
)
def test_bad_parameters_are_refused_before_any_work(small_store, tmp_path, args, message):
    one_line_error(["run", "--store", str(small_store.root), "--out", str(tmp_path / "out"), *args], message)
    assert not (tmp_path / "out").exists()


BAD_STRATEGIES = """
import numpy as np

def wrong_shape(prices, n=1):
    return np.zeros((prices.n_symbols, prices.n_bars - 1))

def not_an_array(prices, n=1):
    return "all in"

def nan_weight(prices, n=1):
    w = np.zeros(prices.close.shape)
    w[0, 100] = np.nan
    return w

def inf_weight(prices, n=1):
    w = np.zeros(prices.close.shape)
    w[0, 100] = np.inf
    return w

def too_big(prices, n=1):
    w = np.zeros(prices.close.shape)
    w[0, 100] = 1.5
    return w

def too_small(prices, n=1):
    return np.full(prices.close.shape, -2.0)
"""


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("wrong_shape", "returned shape (1, 299), expected (1, 300)"),
        ("not_an_array", "returned a str, not an array of weights"),
        ("nan_weight", "returned nan for X on"),
        ("inf_weight", "returned inf for X on"),
        ("too_big", "returned weight 1.5 for X on"),
        ("too_small", "returned weight -2.0 for X on"),
    ],
)
def test_bad_user_strategies_stop_with_the_symbol_and_date(small_store, tmp_path, monkeypatch, name, message):
    module = tmp_path / "mods" / "bad_user_strategies.py"
    module.parent.mkdir()
    module.write_text(textwrap.dedent(BAD_STRATEGIES))
    monkeypatch.syspath_prepend(str(module.parent))
    config = StudyConfig(
        strategy=f"bad_user_strategies:{name}",
        grid=ParamGrid.from_mapping({"n": [1]}),
        folds=FoldSpec(2 / 12, 1 / 12, 1 / 12),
    )
    first, last = small_store.catalog()[["first_date", "last_date"]].iloc[0]
    with pytest.raises(StrategyError, match=re.escape(message)):
        run_study(config, ["X"], small_store.load, first, last, chunk_size=10, workers=1)
    sys.modules.pop("bad_user_strategies", None)
    from backtest.engine import strategies

    strategies._REGISTRY.pop(f"bad_user_strategies:{name}", None)


def test_windows_of_zero_or_longer_than_the_data(small_store):
    from backtest.engine.planning import make_plan, resolve_universe
    from backtest.errors import ConfigError

    with pytest.raises(ConfigError, match="train_years must be at least one month"):
        FoldSpec(0, 1, 1)
    universe = resolve_universe(small_store.catalog())
    with pytest.raises(ConfigError, match=r"is too short for one fold of 5\+1\+1 years"):
        make_plan(StudyConfig(), universe)
    assert os.path.isdir(small_store.root)
