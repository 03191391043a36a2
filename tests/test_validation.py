"""Every kind of bad row is quarantined with its line and reason, in all three layouts; good rows go on."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backtest.data.validation import STORED_SCHEMA, validate_bytes, validate_file
from backtest.errors import DataError

Row = tuple[str, str, str, str, str, str]  # date, open, high, low, close, volume

# name, header, how one (date, open, high, low, close, volume) row is written in that layout
LAYOUTS: dict[str, tuple[str, str, Callable[[Row], str]]] = {
    "sp500_5yr": (
        "AAPL_data.csv",
        "date,open,high,low,close,volume,Name",
        lambda r: ",".join((*r, "AAPL")),
    ),
    "yahoo": (
        "AAPL.csv",
        "Date,Open,High,Low,Close,Adj Close,Volume",
        lambda r: ",".join((*r[:5], r[4], r[5])),
    ),
    "us_txt": (
        "aapl.us.txt",
        "Date,Open,High,Low,Close,Volume,OpenInt",
        lambda r: ",".join((*r, "0")),
    ),
}


def good(date: str) -> Row:
    return (date, "10", "11", "9", "10.5", "1000")


# (row, expected reason fragment or None for a good row); the file's line is the position + 2.
CASES: list[tuple[Row, str | None]] = [
    (good("2013-01-02"), None),
    (("2013-01-03", "", "11", "9", "10.5", "1000"), "missing field: open"),
    (("2013-01-03", "10", "", "", "10.5", "1000"), "missing fields: high, low"),
    (("2013-01-03", "10", "11", "9", "abc", "1000"), "non-numeric close: 'abc'"),
    (("2013-01-03", "10", "11", "-1", "10.5", "1000"), "non-positive low: -1"),
    (("2013-01-03", "10", "11", "9", "0", "1000"), "non-positive close: 0"),
    (("2013-01-03", "10", "11", "9", "10.5", "-5"), "negative volume: -5"),
    (("2013-01-03", "10", "8", "9", "10.5", "1000"), "high < low: 8 < 9"),
    (("2013-01-03", "10", "11", "9", "12", "1000"), "close outside [low, high]: 12 not in [9, 11]"),
    (("2013-01-03", "8.5", "11", "9", "10.5", "1000"), "open outside [low, high]: 8.5 not in [9, 11]"),
    (("2013-02-30", "10", "11", "9", "10.5", "1000"), "bad date: '2013-02-30'"),
    (("Jan 3 2013", "10", "11", "9", "10.5", "1000"), "bad date: 'Jan 3 2013'"),
    (("2013-01-03", "10", "11", "9", "10.5", ""), "missing field: volume"),
    (good("2013-01-04"), None),
    (good("2013-01-04"), "duplicate date 2013-01-04 (first at line 15)"),
    (good("2013-01-03"), "date out of order: 2013-01-03 is before 2013-01-04 of line 15"),
    (good("20130107"), None),
    (("2013-01-08", "10", "11", "9", "10.5", "0"), None),  # zero volume is a real, valid day
    (("", "10", "11", "9", "10.5", "1000"), "missing field: date"),
    (("2013-01-09", "nan", "inf", "9", "10.5", "1000"), "non-numeric open: 'nan'; non-numeric high: 'inf'"),
    ((" 2013-01-10 ", " 10 ", "11 ", " 9", "10.5", "1e3"), None),  # surrounding spaces are tolerated
]


def make_file(layout: str, rows: list[Row], *, crlf: bool = False) -> tuple[str, bytes]:
    name, header, write_row = LAYOUTS[layout]
    end = "\r\n" if crlf else "\n"
    return name, (end.join([header, *map(write_row, rows)]) + end).encode()


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_bad_row_is_rejected_with_reason_and_line(layout: str, crlf: bool) -> None:
    name, content = make_file(layout, [row for row, _ in CASES], crlf=crlf)
    checked = validate_bytes(Path(name), content)

    assert checked.symbol == "AAPL"
    assert checked.layout == layout
    expected_bad = {i + 2: reason for i, (_, reason) in enumerate(CASES) if reason is not None}
    rejects = checked.rejects_frame()
    assert rejects["line"].tolist() == sorted(expected_bad)
    for line, reason in zip(rejects["line"], rejects["reason"], strict=True):
        assert reason.startswith(expected_bad[line]), (line, reason)
    written = content.decode().splitlines()
    assert rejects["raw"].tolist() == [written[line - 1] for line in rejects["line"]]

    assert checked.table.schema == STORED_SCHEMA
    assert [d.isoformat() for d in checked.table["date"].to_pylist()] == [
        "2013-01-02",
        "2013-01-04",
        "2013-01-07",
        "2013-01-08",
        "2013-01-10",
    ]
    assert checked.table["close"].to_pylist() == [10.5] * 5
    assert checked.table["volume"].to_pylist() == [1000.0, 1000.0, 1000.0, 0.0, 1000.0]
    assert checked.rows + checked.rejected_rows == len(CASES) == checked.data_lines
    assert [(p.file, p.line) for p in checked.problems()] == [(name, line) for line in sorted(expected_bad)]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_strictly_descending_file_is_reversed_with_a_note(layout: str) -> None:
    dates = ["2013-01-10", "2013-01-09", "2013-01-08", "2013-01-04"]
    name, content = make_file(layout, [good(d) for d in dates])
    checked = validate_bytes(Path(name), content)
    assert checked.rejected_rows == 0
    assert [d.isoformat() for d in checked.table["date"].to_pylist()] == sorted(dates)
    assert any("descending" in note and "reversed" in note for note in checked.notes)


def test_descending_check_ignores_rows_rejected_for_other_reasons() -> None:
    rows = [
        good("2013-01-10"),
        ("2013-01-11", "", "11", "9", "10", "5"),
        good("2013-01-09"),
        good("2013-01-08"),
    ]
    name, content = make_file("yahoo", rows)
    checked = validate_bytes(Path(name), content)
    assert checked.rows == 3
    assert checked.rejects_frame()["line"].tolist() == [3]
    assert checked.notes


def test_unsorted_file_that_is_not_strictly_descending_rejects_rows() -> None:
    rows = [good(d) for d in ["2013-01-10", "2013-01-09", "2013-01-11", "2013-01-08"]]
    name, content = make_file("us_txt", rows)
    checked = validate_bytes(Path(name), content)
    assert not checked.notes
    assert [d.isoformat() for d in checked.table["date"].to_pylist()] == ["2013-01-10", "2013-01-11"]
    reasons = checked.rejects_frame().set_index("line")["reason"]
    assert reasons[3] == "date out of order: 2013-01-09 is before 2013-01-10 of line 2"
    assert reasons[5] == "date out of order: 2013-01-08 is before 2013-01-11 of line 4"


def test_sp500_symbol_from_name_column_and_mismatches_rejected() -> None:
    content = (
        b"date,open,high,low,close,volume,Name\n"
        b"2013-01-02,10,11,9,10,5,MSFT\n"
        b"2013-01-03,10,11,9,10,5,MSFT\n"
        b"2013-01-04,10,11,9,10,5,AAPL\n"
        b"2013-01-07,10,11,9,10,5,\n"
        b"2013-01-08,10,11,9,10,5, MSFT \n"
    )
    checked = validate_bytes(Path("AAPL_data.csv"), content)  # the name of the file does not matter
    assert checked.symbol == "MSFT"
    reasons = checked.rejects_frame().set_index("line")["reason"]
    assert reasons[4] == "name 'AAPL' differs from the file's symbol 'MSFT'"
    assert reasons[5] == "missing field: name"
    assert checked.rows == 3


def test_sp500_without_any_name_is_a_file_level_error() -> None:
    content = b"date,open,high,low,close,volume,Name\n2013-01-02,10,11,9,10,5,\n"
    with pytest.raises(DataError, match="no symbol"):
        validate_bytes(Path("X_data.csv"), content)


def test_symbol_needs_a_file_stem() -> None:
    content = b"Date,Open,High,Low,Close,Volume,OpenInt\n2013-01-02,10,11,9,10,5,0\n"
    with pytest.raises(DataError, match="cannot derive a symbol"):
        validate_bytes(Path(".us.txt"), content)


def test_yahoo_null_rows_are_missing_fields() -> None:
    content = (
        b"Date,Open,High,Low,Close,Adj Close,Volume\n"
        b"2020-01-02,10,11,9,10,10,5\n"
        b"2020-01-03,null,null,null,null,null,null\n"
    )
    checked = validate_bytes(Path("SPY.csv"), content)
    assert checked.rejects_frame()["reason"].tolist() == ["missing fields: open, high, low, close, volume"]


def test_wrong_field_count_and_blank_lines_are_accounted_for() -> None:
    content = (
        b"Date,Open,High,Low,Close,Volume,OpenInt\n"
        b"2013-01-02,10,11,9,10,5,0\n"
        b"\n"
        b"2013-01-03,10,11\n"
        b"2013-01-04,10,11,9,10,5,0\n"
    )
    checked = validate_bytes(Path("x.us.txt"), content)
    rejects = checked.rejects_frame()
    assert rejects[["line", "reason", "raw"]].values.tolist() == [
        [4, "expected 7 fields, found 3", "2013-01-03,10,11"]
    ]
    assert checked.blank_lines == 1
    assert checked.rows + checked.rejected_rows + checked.blank_lines == checked.data_lines == 4
    assert any("blank" in note for note in checked.notes)


def test_non_utf8_byte_costs_only_its_row() -> None:
    content = (
        b"Date,Open,High,Low,Close,Volume,OpenInt\n2013-01-02,10,11,9,10,5,0\n2013-01-03,1\xff,11,9,10,5,0\n"
    )
    checked = validate_bytes(Path("x.us.txt"), content)
    assert checked.rows == 1
    assert checked.rejects_frame()["reason"].iloc[0].startswith("non-numeric open")


def test_all_rows_rejected_leaves_an_empty_table() -> None:
    name, content = make_file("yahoo", [("2013-01-02", "x", "11", "9", "10", "5")])
    checked = validate_bytes(Path(name), content)
    assert checked.rows == 0
    assert checked.rejected_rows == 1
    assert checked.table.schema == STORED_SCHEMA


def test_validate_file_reads_from_disk(write_file) -> None:
    name, content = make_file("sp500_5yr", [good("2013-01-02"), good("2013-01-03")])
    checked = validate_file(write_file(name, content))
    assert checked.rows == 2
    assert checked.source_size == len(content)
    frame = checked.frame()
    assert frame["date"].dt.strftime("%Y-%m-%d").tolist() == ["2013-01-02", "2013-01-03"]


day_offsets = st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=60)


@settings(max_examples=60, deadline=None)
@given(offsets=day_offsets, broken=st.sets(st.integers(min_value=0, max_value=59), max_size=10))
def test_output_is_strictly_increasing_and_every_line_is_accounted_for(
    offsets: list[int], broken: set[int]
) -> None:
    start = dt.date(2013, 1, 1)
    rows = []
    for i, offset in enumerate(offsets):
        row = good((start + dt.timedelta(days=offset)).isoformat())
        rows.append((row[0], "10", "8", "9", "10", "5") if i in broken else row)  # high < low
    name, content = make_file("us_txt", rows)
    checked = validate_bytes(Path(name), content)
    days = np.array([d.toordinal() for d in checked.table["date"].to_pylist()])
    assert (np.diff(days) > 0).all()
    assert checked.rows + checked.rejected_rows == len(rows)
    kept = {d.isoformat() for d in checked.table["date"].to_pylist()}
    assert kept <= {r[0] for i, r in enumerate(rows) if i not in broken}
