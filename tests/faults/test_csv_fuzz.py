"""Property tests of the CSV reader: arbitrary bytes never crash it, valid rows round-trip exactly, and reading
block by block gives what reading the whole file at once gives."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backtest.data.csvformats import open_csv_source, source_fingerprint
from backtest.data.validation import STORED_SCHEMA, ValidatedCsv, validate_bytes, validate_source
from backtest.errors import DataError

HEADERS = {
    "sp500_5yr": "date,open,high,low,close,volume,Name",
    "yahoo": "Date,Open,High,Low,Close,Adj Close,Volume",
    "us_txt": "Date,Open,High,Low,Close,Volume,OpenInt",
}
NAMES = {"sp500_5yr": "FUZZ_data.csv", "yahoo": "FUZZ.csv", "us_txt": "fuzz.us.txt"}
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_accounting(checked: ValidatedCsv) -> None:
    assert checked.table.schema == STORED_SCHEMA
    assert checked.rows + checked.rejected_rows + checked.blank_lines == checked.data_lines
    days = checked.table["date"].cast("int32").to_numpy()
    assert (np.diff(days) > 0).all()
    for name in ("open", "high", "low", "close", "volume"):
        assert np.isfinite(checked.table[name].to_numpy()).all()
    lines = checked.rejects["line"].to_numpy()
    assert (np.diff(lines) > 0).all() and (lines >= 2).all()


def read(name: str, data: bytes) -> ValidatedCsv | None:
    try:
        checked = validate_bytes(Path(name), data)
    except DataError as exc:
        assert str(exc)  # a clean report, never an empty message
        return None
    check_accounting(checked)
    return checked


cells = st.sampled_from(
    [
        "",
        "1",
        "10.5",
        "-3",
        "0",
        "nan",
        "inf",
        "1e400",
        "x",
        '"',
        '""',
        "2020-01-02",
        "20200102",
        "\ufffd",
        " 7 ",
    ]
)


@SETTINGS
@given(layout=st.sampled_from(sorted(HEADERS)), body=st.binary(max_size=2000))
def test_arbitrary_bytes_after_a_header_never_crash(layout, body):
    read(NAMES[layout], HEADERS[layout].encode() + b"\n" + body)


@SETTINGS
@given(data=st.binary(max_size=600))
def test_arbitrary_bytes_never_crash(data):
    read("X.csv", data)


@SETTINGS
@given(
    layout=st.sampled_from(sorted(HEADERS)),
    rows=st.lists(st.lists(st.one_of(cells, st.text(max_size=6)), min_size=5, max_size=9), max_size=30),
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
)
def test_csv_shaped_junk_never_crashes(layout, rows, newline):
    text = newline.join([HEADERS[layout], *(",".join(r) for r in rows)])
    read(NAMES[layout], text.encode("utf-8", "surrogatepass"))


@st.composite
def valid_files(draw):
    n = draw(st.integers(min_value=1, max_value=60))
    gaps = draw(st.lists(st.integers(min_value=1, max_value=5), min_size=n, max_size=n))
    days = dt.date(1990, 1, 1).toordinal() + np.cumsum(gaps)
    price = st.integers(min_value=1, max_value=10**7).map(lambda c: c / 100)
    rows = []
    for day in days:
        lo, hi = sorted(draw(st.lists(price, min_size=2, max_size=2)))
        o = draw(st.floats(min_value=lo, max_value=hi))
        c = draw(st.floats(min_value=lo, max_value=hi))
        v = float(draw(st.integers(min_value=0, max_value=10**9)))
        rows.append((dt.date.fromordinal(int(day)), o, hi, lo, c, v))
    return rows


@SETTINGS
@given(
    layout=st.sampled_from(sorted(HEADERS)),
    rows=valid_files(),
    newline=st.sampled_from(["\n", "\r\n"]),
    bom=st.booleans(),
    descending=st.booleans(),
)
def test_valid_rows_round_trip_exactly(layout, rows, newline, bom, descending):
    def line(r):
        d, o, h, lo, c, v = (r[0].isoformat(), *map(repr, r[1:]))
        if layout == "sp500_5yr":
            return f"{d},{o},{h},{lo},{c},{v},FUZZ"
        if layout == "yahoo":
            return f"{d},{o},{h},{lo},{c},{c},{v}"
        return f"{d},{o},{h},{lo},{c},{v},0"

    ordered = rows[::-1] if descending else rows
    text = newline.join([HEADERS[layout], *map(line, ordered)]) + newline
    data = (b"\xef\xbb\xbf" if bom else b"") + text.encode()
    checked = validate_bytes(Path(NAMES[layout]), data)
    assert checked.rejected_rows == 0 and checked.symbol == "FUZZ"
    assert checked.table["date"].to_pylist() == [r[0] for r in rows]
    for k, name in enumerate(("open", "high", "low", "close", "volume"), start=1):
        assert checked.table[name].to_pylist() == [r[k] for r in rows]


@SETTINGS
@given(
    rows=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=40),
            st.sampled_from(["10", "x", "", "0", "12", "1e12", "nan"]),
            st.booleans(),
        ),
        max_size=80,
    ),
    block=st.sampled_from([1 << 7, 1 << 9, 1 << 12]),
    limit=st.sampled_from([3, 1000]),
)
def test_reading_block_by_block_equals_reading_at_once(rows, block, limit):
    lines = [HEADERS["us_txt"]]
    for offset, close, short in rows:
        day = (dt.date(2001, 1, 1) + dt.timedelta(days=offset)).isoformat()
        lines.append(f"{day},10,12,9" if short else f"{day},10,12,9,{close},5,0")
    data = ("\n".join(lines) + "\n").encode()
    try:
        whole = validate_source(
            open_csv_source("x.us.txt", data, block_size=1 << 20),
            size=len(data),
            fingerprint=source_fingerprint(data),
            max_listed_rejects=limit,
        )
    except DataError as exc:
        try:
            validate_source(open_csv_source("x.us.txt", data, block_size=block), size=0, fingerprint="")
        except DataError as again:
            assert str(again) == str(exc)
            return
        raise AssertionError("only the whole-file read failed") from None
    parts = validate_source(
        open_csv_source("x.us.txt", data, block_size=block),
        size=len(data),
        fingerprint=source_fingerprint(data),
        max_listed_rejects=limit,
    )
    check_accounting(parts)
    assert parts.table.equals(whole.table)
    assert parts.rejected_rows == whole.rejected_rows and parts.notes == whole.notes
    if whole.unlisted_rejects == 0:
        assert parts.rejects.equals(whole.rejects)
