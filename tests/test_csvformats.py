"""Layout detection from the header, symbols from names, line numbering and file-level errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from backtest.data.csvformats import (
    LAYOUTS,
    SP500_5YR,
    US_TXT,
    YAHOO,
    detect_layout,
    parse_csv_bytes,
    read_csv_file,
)
from backtest.errors import DataError

SP500_HEADER = "date,open,high,low,close,volume,Name"
YAHOO_HEADER = "Date,Open,High,Low,Close,Adj Close,Volume"
US_HEADER = "Date,Open,High,Low,Close,Volume,OpenInt"


@pytest.mark.parametrize(
    ("header", "layout"),
    [
        (SP500_HEADER, SP500_5YR),
        (SP500_HEADER.upper(), SP500_5YR),
        ("\ufeff" + SP500_HEADER + "\r\n", SP500_5YR),
        (" date , open ,high, low,close ,volume, name ", SP500_5YR),
        (YAHOO_HEADER, YAHOO),
        ("date,open,high,low,close,adj_close,volume", YAHOO),
        ('"Date","Open","High","Low","Close","Adj Close","Volume"', YAHOO),
        ("\ufeffDATE,OPEN,HIGH,LOW,CLOSE,ADJ CLOSE,VOLUME\r\n", YAHOO),
        (US_HEADER, US_TXT),
        ("date,open,high,low,close,volume,openint\r", US_TXT),
        # Column order does not matter, the names do.
        ("Date,Close,Open,High,Low,Volume,OpenInt", US_TXT),
    ],
)
def test_detect_layout_from_header(header: str, layout: object) -> None:
    assert detect_layout(header) is layout


@pytest.mark.parametrize(
    "header",
    [
        "date,open,high,low,close",
        "Date,Open,High,Low,Close,Volume",
        "date,open,high,low,close,volume,Name,extra",
        "date,date,high,low,close,volume,Name",
        "",
        "ticker,per,date,time,open,high,low,close,vol",
    ],
)
def test_unknown_layout_lists_the_known_ones(header: str) -> None:
    with pytest.raises(DataError) as info:
        detect_layout(header)
    message = str(info.value)
    assert "unknown column layout" in message
    for layout in LAYOUTS:
        assert layout.name in message
        assert layout.example_header in message


@pytest.mark.parametrize(
    ("name", "content", "layout", "stem_symbol"),
    [
        ("AAPL_data.csv", f"{SP500_HEADER}\n2013-02-08,1,2,0.5,1.5,10,AAPL\n", SP500_5YR, None),
        ("AAPL.csv", f"{YAHOO_HEADER}\n2013-02-08,1,2,0.5,1.5,1.4,10\n", YAHOO, "AAPL"),
        ("aapl.us.txt", f"{US_HEADER}\n2013-02-08,1,2,0.5,1.5,10,0\n", US_TXT, "AAPL"),
        ("brk-b.US.txt", f"{US_HEADER}\n2013-02-08,1,2,0.5,1.5,10,0\n", US_TXT, "BRK-B"),
        # The header decides, not the name: a Yahoo file saved as .us.txt is still Yahoo.
        ("msft.us.txt", f"{YAHOO_HEADER}\n2013-02-08,1,2,0.5,1.5,1.4,10\n", YAHOO, "msft.us"),
    ],
)
def test_layout_and_symbol_of_real_format_files(
    write_file, name: str, content: str, layout: object, stem_symbol: str | None
) -> None:
    raw = read_csv_file(write_file(name, content))
    assert raw.layout is layout
    assert raw.stem_symbol == stem_symbol
    assert raw.table.num_rows == 1
    assert raw.lines.tolist() == [2]


def test_bom_and_crlf_are_tolerated(write_file) -> None:
    content = (
        "\ufeff" + YAHOO_HEADER + "\r\n2013-02-08,1,2,0.5,1.5,1.4,10\r\n2013-02-11,1,2,0.5,1.5,1.4,11\r\n"
    )
    raw = read_csv_file(write_file("X.csv", content))
    assert raw.layout is YAHOO
    assert raw.table["date"].to_pylist() == ["2013-02-08", "2013-02-11"]
    assert raw.table["volume"].to_pylist() == ["10", "11"]
    assert raw.lines.tolist() == [2, 3]


def test_line_numbers_are_physical_lines(write_file) -> None:
    content = (
        f"{US_HEADER}\n"
        "2013-02-08,1,2,0.5,1.5,10,0\n"  # line 2
        "\n"  # line 3: blank, skipped
        "2013-02-11,1,2\n"  # line 4: too few fields
        "2013-02-12,1,2,0.5,1.5,10,0,9\n"  # line 5: too many fields
        "2013-02-13,1,2,0.5,1.5,10,0\n"  # line 6
    )
    raw = read_csv_file(write_file("x.us.txt", content))
    assert raw.lines.tolist() == [2, 6]
    assert [(b.line, b.reason) for b in raw.bad_rows] == [
        (4, "expected 7 fields, found 3"),
        (5, "expected 7 fields, found 8"),
    ]
    assert raw.bad_rows[0].text == "2013-02-11,1,2"
    assert raw.blank_lines == 1
    assert raw.data_lines == 5


def test_fingerprint_and_size_are_of_the_source_bytes(write_file) -> None:
    content = f"{YAHOO_HEADER}\n2013-02-08,1,2,0.5,1.5,1.4,10\n".encode()
    first = read_csv_file(write_file("A.csv", content))
    same = read_csv_file(write_file("B.csv", content))
    other = read_csv_file(write_file("C.csv", content.replace(b"10", b"11")))
    assert first.size == len(content)
    assert first.fingerprint == same.fingerprint != other.fingerprint


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"\n\r\n  \n", "empty file"),
        (b"\xef\xbb\xbf", "empty file"),
        (f"{SP500_HEADER}\n".encode(), "header only"),
        (f"{SP500_HEADER}\r\n\r\n\r\n".encode(), "header only"),
        (f"{YAHOO_HEADER}".encode(), "header only"),
        (b"symbol;date;price\nAAPL;2013-02-08;1.5\n", "unknown column layout"),
        (b"PK\x03\x04\x14\x00\x00\x00\x08\x00binary zip content", "unreadable bytes"),
        ("Date,Open,High,Low,Close,Adj Close,Volume\n".encode("utf-16"), "UTF-16"),
        (b"Da\xfft\xfe,Open\n1,2\n", "not UTF-8"),
    ],
)
def test_file_level_errors(write_file, content: bytes, reason: str) -> None:
    with pytest.raises(DataError, match=reason):
        read_csv_file(write_file("bad.csv", content))


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read file"):
        read_csv_file(tmp_path / "absent.csv")


def test_non_utf8_bytes_in_a_row_keep_the_file(tmp_path: Path) -> None:
    content = f"{US_HEADER}\n2013-02-08,1,2,0.5,1.5,10,0\n".encode() + b"2013-02-11,1\xff,2,0.5,1.5,10,0\n"
    raw = parse_csv_bytes(tmp_path / "x.us.txt", content)
    assert raw.table.num_rows == 2
    assert raw.table["open"].to_pylist()[1] == "1\ufffd"
