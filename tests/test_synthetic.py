"""The synthetic universe: reproducible, in the exact sp500 file format, and statistically like a market."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from backtest.data.panel import PricePanel
from backtest.data.synthetic import (
    CSV_HEADER,
    MANIFEST_NAME,
    SECTORS,
    GenerateSummary,
    bars_for_years,
    generate_panel,
    generate_universe,
    symbol_name,
    symbol_profile,
    trading_calendar,
)
from backtest.data.synthetic_nb import max_row_bytes, write_csv_rows
from backtest.errors import ConfigError
from cli.app import app

SEED = 20240601
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _csvs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*_data.csv"))


def _manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST_NAME).read_text())


@pytest.fixture(scope="module")
def universe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 symbols x 6 years on disk, shared by the format and consistency tests."""
    out = tmp_path_factory.mktemp("universe")
    generate_universe(out, 40, 6, SEED, workers=1)
    return out


@pytest.fixture(scope="module")
def long_panel() -> PricePanel:
    """60 symbols x 20 years in memory: long enough for tail, clustering and correlation statistics."""
    return generate_panel(60, 20, SEED)


def _log_returns(panel: PricePanel) -> np.ndarray:
    return np.diff(np.log(panel.close), axis=1)


# --- calendar and names -------------------------------------------------------------------------------------


def test_calendar_has_252_bars_a_year_of_weekdays() -> None:
    assert bars_for_years(20) == 5040
    dates = trading_calendar("2005-01-03", 5040)
    assert len(dates) == 5040
    assert (np.diff(dates.astype(np.int64)) > 0).all()
    assert np.is_busday(dates).all()
    as_text = set(np.datetime_as_string(dates))
    assert "2005-07-04" not in as_text and "2006-12-25" not in as_text


def test_calendar_rolls_a_weekend_start_forward_and_rejects_bad_dates() -> None:
    assert str(trading_calendar("2005-01-01", 1)[0]) == "2005-01-03"
    with pytest.raises(ConfigError, match="start"):
        trading_calendar("2005-13-45", 10)


def test_tickers_are_unique_four_letters_and_depend_on_the_seed() -> None:
    names = [symbol_name(SEED, i) for i in range(20_000)]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[A-Z]{4}", n) for n in names)
    assert [symbol_name(SEED + 1, i) for i in range(10)] != names[:10]


# --- reproducibility ----------------------------------------------------------------------------------------


def _bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_same_seed_writes_identical_bytes(tmp_path: Path) -> None:
    generate_universe(tmp_path / "a", 5, 2, SEED, workers=1)
    generate_universe(tmp_path / "b", 5, 2, SEED, workers=1)
    assert _bytes(tmp_path / "a") == _bytes(tmp_path / "b")


def test_workers_change_nothing(tmp_path: Path) -> None:
    generate_universe(tmp_path / "one", 12, 2, SEED, workers=1)
    generate_universe(tmp_path / "two", 12, 2, SEED, workers=2)
    assert _bytes(tmp_path / "one") == _bytes(tmp_path / "two")


def test_symbol_i_does_not_depend_on_how_many_are_generated(tmp_path: Path) -> None:
    generate_universe(tmp_path / "small", 5, 3, SEED, workers=1)
    generate_universe(tmp_path / "large", 50, 3, SEED, workers=2)
    small = _bytes(tmp_path / "small")
    large = _bytes(tmp_path / "large")
    csvs = [name for name in small if name.endswith("_data.csv")]
    assert len(csvs) == 5
    assert all(small[name] == large[name] for name in csvs)
    assert _manifest(tmp_path / "small")["symbols"] == _manifest(tmp_path / "large")["symbols"][:5]


def test_different_seeds_differ(tmp_path: Path) -> None:
    generate_universe(tmp_path / "a", 3, 1, SEED, workers=1)
    generate_universe(tmp_path / "b", 3, 1, SEED + 1, workers=1)
    a = [p.read_bytes().split(b"\n", 2)[1] for p in _csvs(tmp_path / "a")]
    b = [p.read_bytes().split(b"\n", 2)[1] for p in _csvs(tmp_path / "b")]
    assert {p.name for p in _csvs(tmp_path / "a")} != {p.name for p in _csvs(tmp_path / "b")}
    assert [row.split(b",")[1:5] for row in a] != [row.split(b",")[1:5] for row in b]


# --- file format --------------------------------------------------------------------------------------------


def test_files_have_the_sp500_layout(universe: Path) -> None:
    manifest = _manifest(universe)
    files = _csvs(universe)
    assert len(files) == 40 == len(manifest["symbols"])
    for path in files:
        text = path.read_text()
        assert text.startswith(CSV_HEADER) and text.endswith("\n")
        symbol = path.name.removesuffix("_data.csv")
        for line in text.splitlines()[1:]:
            date, *prices, volume, name = line.split(",")
            assert DATE_RE.match(date) and name == symbol
            # Prices are written as Python writes a float rounded to cents (15.07, 15.1, 15.0), like sp500.
            assert all(str(float(p)) == p and re.fullmatch(r"\d+\.\d{1,2}", p) for p in prices)
            assert volume.isdigit()


def test_files_parse_as_numbers(universe: Path) -> None:
    for path in _csvs(universe)[:10]:
        frame = pd.read_csv(path)
        assert list(frame.columns) == ["date", "open", "high", "low", "close", "volume", "Name"]
        assert all(pd.api.types.is_float_dtype(frame[c]) for c in ("open", "high", "low", "close"))
        assert pd.api.types.is_integer_dtype(frame["volume"])
        assert not frame.isna().any().any()
        assert pd.to_datetime(frame["date"], format="%Y-%m-%d").notna().all()


def test_ohlc_is_consistent_and_positive_on_every_row(universe: Path) -> None:
    frame = pd.concat([pd.read_csv(p) for p in _csvs(universe)], ignore_index=True)
    o, h, lo, c = (frame[k].to_numpy() for k in ("open", "high", "low", "close"))
    assert (h >= np.maximum(o, c)).all()
    assert (lo <= np.minimum(o, c)).all()
    assert (lo >= 0.01).all()
    assert (frame["volume"] > 0).all()


def test_dates_ascend_are_unique_and_on_the_calendar(universe: Path) -> None:
    calendar = set(np.datetime_as_string(trading_calendar("2005-01-03", bars_for_years(6))))
    for path in _csvs(universe):
        dates = pd.read_csv(path, usecols=["date"])["date"]
        assert dates.is_monotonic_increasing and dates.is_unique
        assert set(dates) <= calendar


def test_manifest_describes_the_files(universe: Path) -> None:
    manifest = _manifest(universe)
    assert manifest["seed"] == SEED and manifest["parameters"]["bars"] == bars_for_years(6)
    for entry in manifest["symbols"]:
        frame = pd.read_csv(universe / entry["file"], usecols=["date"])
        assert entry["sector"] in SECTORS
        assert entry["rows"] == len(frame)
        assert entry["listing_date"] == frame["date"].iloc[0]
        assert entry["delisting_date"] in (None, frame["date"].iloc[-1])
        assert isinstance(entry["beta"], float)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=10**12), min_size=4, max_size=4), st.integers(0, 10**15))
def test_writer_formats_cents_as_python_floats(cents: list[int], volume: int) -> None:
    buf = np.empty(max_row_bytes(4), np.uint8)
    end = write_csv_rows(
        buf,
        0,
        np.frombuffer(b"2005-01-03", np.uint8).reshape(1, 10),
        np.zeros(1, np.int64),
        *(np.array([c], np.int64) for c in cents),
        np.array([volume], np.int64),
        np.frombuffer(b"ABCD", np.uint8),
    )
    expected = ",".join(["2005-01-03", *(repr(c / 100) for c in cents), str(volume), "ABCD"]) + "\n"
    assert buf[:end].tobytes().decode() == expected


# --- listings, gaps and the panel ---------------------------------------------------------------------------


def test_listing_and_delisting_dates_vary(universe: Path) -> None:
    entries = _manifest(universe)["symbols"]
    first = _manifest(universe)["parameters"]["first_date"]
    late = [e for e in entries if e["listing_date"] > first]
    delisted = [e for e in entries if e["delisting_date"] is not None]
    assert 3 <= len(late) < len(entries) and len({e["listing_date"] for e in late}) == len(late)
    assert 1 <= len(delisted) < len(entries)


def test_missing_days_are_rare_but_present(long_panel: PricePanel) -> None:
    n_bars = bars_for_years(20)
    listed = missing = 0
    for i in range(long_panel.n_symbols):
        p = symbol_profile(SEED, i, n_bars)
        life = p.last_bar - p.first_bar + 1
        listed += life
        missing += life - int((~np.isnan(long_panel.close[i])).sum())
    assert 0.0002 < missing / listed < 0.003


def test_panel_equals_the_files(tmp_path: Path) -> None:
    generate_universe(tmp_path, 6, 3, SEED, workers=1)
    frames = {p.name.removesuffix("_data.csv"): pd.read_csv(p) for p in _csvs(tmp_path)}
    from_files = PricePanel.from_frames(frames)
    panel = generate_panel(6, 3, SEED)
    order = [panel.symbols.index(s) for s in from_files.symbols]
    np.testing.assert_array_equal(panel.dates, from_files.dates)
    for field in ("open", "high", "low", "close", "volume"):
        np.testing.assert_array_equal(getattr(panel, field)[order], getattr(from_files, field))


# --- statistics ---------------------------------------------------------------------------------------------


def test_returns_have_fat_tails_and_volatility_clustering(long_panel: PricePanel) -> None:
    returns = _log_returns(long_panel)
    kurtosis, clustering = [], []
    for r in returns:
        r = r[~np.isnan(r)]
        if r.size < 2000:
            continue
        z = (r - r.mean()) / r.std()
        kurtosis.append(float((z**4).mean() - 3.0))
        a = np.abs(r - r.mean())
        clustering.append(float(np.corrcoef(a[:-1], a[1:])[0, 1]))
    assert len(kurtosis) >= 20
    assert np.median(kurtosis) > 1.0 and min(kurtosis) > 0.0
    assert np.median(clustering) > 0.05 and min(clustering) > 0.0


def test_stocks_correlate_more_within_a_sector(long_panel: PricePanel) -> None:
    corr = pd.DataFrame(_log_returns(long_panel).T).corr(min_periods=250).to_numpy()
    sectors = np.array(
        [symbol_profile(SEED, i, bars_for_years(20)).sector for i in range(long_panel.n_symbols)]
    )
    same = sectors[:, None] == sectors[None, :]
    off_diagonal = ~np.eye(len(sectors), dtype=bool)
    within = np.nanmean(corr[same & off_diagonal])
    across = np.nanmean(corr[~same])
    assert np.nanmean(corr[off_diagonal]) > 0.1
    assert within > across + 0.03


def test_drift_is_small_and_positive_and_prices_stay_realistic(long_panel: PricePanel) -> None:
    annual = np.nanmean(_log_returns(long_panel)) * 252
    assert 0.0 < annual < 0.15
    closes = long_panel.close[~np.isnan(long_panel.close)]
    assert np.mean((closes < 5) | (closes > 500)) < 0.01


def test_volume_is_higher_on_big_moves(long_panel: PricePanel) -> None:
    returns = _log_returns(long_panel)
    log_volume = np.log(long_panel.volume[:, 1:])
    big = np.abs(returns) > 2 * np.nanstd(returns, axis=1, keepdims=True)
    normal = ~big & ~np.isnan(returns)
    demeaned = log_volume - np.nanmean(log_volume, axis=1, keepdims=True)
    assert np.nanmean(demeaned[big]) > np.nanmean(demeaned[normal]) + 0.3


# --- arguments, folders and the summary ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_symbols": 0}, "symbols"),
        ({"years": 0.0}, "years"),
        ({"years": -1.0}, "years"),
        ({"years": float("nan")}, "years"),
        ({"seed": -1}, "seed"),
        ({"workers": 0}, "workers"),
        ({"start": "not a date"}, "start"),
    ],
)
def test_bad_arguments_raise_config_errors(tmp_path: Path, kwargs: dict, match: str) -> None:
    args = {"out": tmp_path, "n_symbols": 2, "years": 1.0, "seed": 1, **kwargs}
    with pytest.raises(ConfigError, match=match):
        generate_universe(**args)
    assert not _csvs(tmp_path)


def test_regenerating_removes_the_previous_universe_only(tmp_path: Path) -> None:
    generate_universe(tmp_path, 10, 1, SEED, workers=1)
    summary = generate_universe(tmp_path, 4, 1, SEED, workers=1)
    assert len(_csvs(tmp_path)) == 4 == len(_manifest(tmp_path)["symbols"])
    assert summary.rows == sum(e["rows"] for e in _manifest(tmp_path)["symbols"])
    (tmp_path / "REAL1_data.csv").write_text(CSV_HEADER)
    with pytest.raises(ConfigError, match=r"REAL1_data\.csv"):
        generate_universe(tmp_path, 2, 1, SEED, workers=1)
    assert (tmp_path / "REAL1_data.csv").exists()


def test_summary_counts_what_was_written(universe: Path, tmp_path: Path) -> None:
    summary = generate_universe(tmp_path, 3, 1, SEED, workers=1)
    assert isinstance(summary, GenerateSummary)
    total = sum(len(pd.read_csv(p)) for p in _csvs(tmp_path))
    assert (summary.symbols, summary.bars, summary.rows) == (3, 252, total)
    assert summary.to_dict() == {
        "out": str(tmp_path),
        "symbols": 3,
        "bars": 252,
        "rows": total,
        "seconds": summary.seconds,
    }
    json.dumps(summary.to_dict())


# --- CLI ----------------------------------------------------------------------------------------------------


def test_cli_generate_writes_and_summarises(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["generate", str(tmp_path), "--symbols", "3", "--years", "1", "--seed", "5", "--workers", "1"]
    )
    assert result.exit_code == 0, result.output
    assert len(_csvs(tmp_path)) == 3
    line = result.output.strip()
    assert "\n" not in line and "3 symbols" in line and "252 bars" in line and " s " in line
    rows = sum(e["rows"] for e in _manifest(tmp_path)["symbols"])
    assert f"{rows:,} rows" in line


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--symbols", "0"], "symbols"), (["--years", "0"], "years"), (["--years", "-2"], "years")],
)
def test_cli_generate_rejects_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["generate", str(tmp_path), "--symbols", "2", "--years", "1", *args])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert "error:" in result.output and message in result.output
    assert "Traceback" not in result.output
