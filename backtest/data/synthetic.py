"""A synthetic stock market with the statistical warts that make backtests honest, written as CSV files.

Real data cannot be shared at the scale the project targets (4,000 symbols x 20 years), so benchmarks and
end-to-end tests run on a simulated market instead. It has to be realistic where strategies and the data layer
are sensitive: fat tails and volatility clustering (a GARCH(1,1) with Student-t innovations), common market and
sector factors (so an equal-weight portfolio is not a diversified free lunch), late listings and early
delistings (so code must cope with ragged histories), occasional missing days, and consistent OHLC rows.

The files mimic ``shared/data/sp500_5yr`` byte for byte in layout (``<SYMBOL>_data.csv`` with header
``date,open,high,low,close,volume,Name`` and prices written as Python writes a float rounded to cents:
``15.07``, ``15.1``, ``15.0``), so every loader that reads the real set reads this one.

Reproducibility: every random stream is a child of ``numpy.random.SeedSequence(seed)`` with a fixed spawn key:
one for the market factor, one per sector factor, one for the ticker permutation and one per symbol index.
Symbol ``i`` is therefore the same whether 10 or 4,000 symbols are generated, in one process or in many.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from backtest.atomic import write_text
from backtest.data.panel import PricePanel
from backtest.data.synthetic_nb import garch_returns, max_row_bytes, simulate_bars, write_csv_rows
from backtest.errors import ConfigError, DataError

TRADING_DAYS_PER_YEAR = 252
CSV_HEADER = "date,open,high,low,close,volume,Name\n"
FILE_SUFFIX = "_data.csv"
MANIFEST_NAME = "universe.json"
MANIFEST_FORMAT = 1

SECTORS: tuple[str, ...] = (
    "Communication Services",
    "Consumer Discretionary",
    "Consumer Staples",
    "Energy",
    "Financials",
    "Health Care",
    "Industrials",
    "Information Technology",
    "Materials",
    "Real Estate",
    "Utilities",
)

# Spawn-key branches of SeedSequence(seed): fixed forever, or old seeds would silently produce new data.
_MARKET_BRANCH = 0
_SECTOR_BRANCH = 1
_SYMBOL_BRANCH = 2
_NAME_BRANCH = 3

# Market factor: about 16 % annual volatility and 6 % annual log drift, strongly clustered.
MARKET_VOL = 0.16
MARKET_DRIFT = 0.06
MARKET_GARCH = (0.08, 0.90)
MARKET_DOF = 5.0
# Sector factors: about 10 % annual volatility, no drift of their own.
SECTOR_VOL = 0.10
SECTOR_GARCH = (0.06, 0.92)
SECTOR_DOF = 6.0

LATE_LISTING_SHARE = 0.25
EARLY_DELISTING_SHARE = 0.12
MIN_LIFE_BARS = TRADING_DAYS_PER_YEAR
MISSING_DAY_RATE = 0.001

_TICKER_LETTERS = 4
_TICKER_SPACE = 26**_TICKER_LETTERS
MAX_SYMBOLS = _TICKER_SPACE


@dataclass(frozen=True)
class GenerateSummary:
    """What ``generate_universe`` wrote, for the CLI line and for flows that log or persist it."""

    out: Path
    symbols: int
    bars: int
    rows: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the path as a string)."""
        return {
            "out": str(self.out),
            "symbols": self.symbols,
            "bars": self.bars,
            "rows": self.rows,
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class SymbolProfile:
    """The per-symbol draws that shape a series; recorded in ``universe.json`` so tests can check them.

    ``first_bar`` and ``last_bar`` are calendar indices (inclusive) of the listed life; vols and drift are
    annualised.
    """

    index: int
    symbol: str
    sector: int
    beta: float
    sector_beta: float
    idio_vol: float
    drift: float
    garch_alpha: float
    garch_beta: float
    dof: float
    start_price: float
    base_volume: float
    first_bar: int
    last_bar: int


@dataclass(frozen=True, eq=False)
class SymbolBars:
    """One symbol's rows as written: calendar indices, integer cents and integer volume.

    Integers are the exact content of the file, so the writer and the in-memory panel cannot disagree.
    """

    profile: SymbolProfile
    bars: np.ndarray
    open_cents: np.ndarray
    high_cents: np.ndarray
    low_cents: np.ndarray
    close_cents: np.ndarray
    volume: np.ndarray


def bars_for_years(years: float) -> int:
    """Calendar length: 252 bars a year (20 years -> 5,040 bars), at least one."""
    return max(1, round(years * TRADING_DAYS_PER_YEAR))


def trading_calendar(start: str, n_bars: int) -> np.ndarray:
    """``n_bars`` weekdays from ``start`` (rolled forward), skipping New Year, 4 July and Christmas.

    A few fixed holidays make the calendar look like an exchange's without pretending to be one.
    """
    try:
        first = np.datetime64(start, "D")
    except ValueError as exc:
        raise ConfigError(f"start must be a date like 2005-01-03, got {start!r}") from exc
    first_year = int(str(first)[:4])
    last_year = first_year + n_bars // 240 + 2
    holidays = [
        np.datetime64(f"{year:04d}-{month_day}", "D")
        for year in range(first_year, last_year + 1)
        for month_day in ("01-01", "07-04", "12-25")
    ]
    offsets = np.arange(n_bars, dtype=np.int64)
    anchor = np.busday_offset(first, 0, roll="forward", holidays=holidays)
    return np.busday_offset(anchor, offsets, roll="forward", holidays=holidays).astype("datetime64[D]")


def symbol_name(seed: int, index: int) -> str:
    """A 4-letter ticker: an affine permutation of the 26**4 codes, keyed by the seed.

    A bijection cannot clash, needs no registry of names already used, and gives symbol ``i`` the same ticker
    however many symbols are generated; the seed only changes which permutation.
    """
    if not 0 <= index < _TICKER_SPACE:
        raise ConfigError(f"symbol index must be in [0, {_TICKER_SPACE}), got {index}")
    a, b = _ticker_permutation(seed)
    code = (a * index + b) % _TICKER_SPACE
    letters = []
    for _ in range(_TICKER_LETTERS):
        code, digit = divmod(code, 26)
        letters.append(chr(ord("A") + digit))
    return "".join(reversed(letters))


@lru_cache(maxsize=16)
def _ticker_permutation(seed: int) -> tuple[int, int]:
    state = np.random.SeedSequence(seed, spawn_key=(_NAME_BRANCH,)).generate_state(2, dtype=np.uint64)
    a = int(state[0]) % _TICKER_SPACE | 1
    while a % 13 == 0:  # coprime with 26**4 = 2**4 * 13**4, so the map is a permutation
        a += 2
    return a % _TICKER_SPACE, int(state[1]) % _TICKER_SPACE


def _symbol_generator(seed: int, index: int) -> np.random.Generator:
    return np.random.Generator(
        np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(_SYMBOL_BRANCH, index)))
    )


def _draw_profile(rng: np.random.Generator, seed: int, index: int, n_bars: int) -> SymbolProfile:
    # A fixed number of draws in a fixed order: the profile never shifts the stream of the bars after it.
    sector = int(rng.integers(len(SECTORS)))
    beta = float(np.clip(rng.normal(1.0, 0.3), 0.2, 2.2))
    sector_beta = float(rng.uniform(0.5, 1.5))
    idio_vol = float(np.clip(np.exp(rng.normal(np.log(0.22), 0.35)), 0.10, 0.80))
    drift = float(rng.normal(0.01, 0.03))
    garch_alpha = float(rng.uniform(0.04, 0.10))
    persistence = float(rng.uniform(0.94, 0.985))
    dof = float(rng.uniform(4.0, 8.0))
    start_price = float(np.exp(rng.uniform(np.log(10.0), np.log(80.0))))
    base_volume = float(np.exp(rng.uniform(np.log(2e5), np.log(2e7))))
    late, late_at, early, early_at = rng.random(4)

    min_life = min(MIN_LIFE_BARS, n_bars)
    first_bar = 0
    if late < LATE_LISTING_SHARE and n_bars - min_life >= 1:
        first_bar = 1 + int(late_at * (n_bars - min_life))
    last_bar = n_bars - 1
    room = n_bars - first_bar - min_life
    if early < EARLY_DELISTING_SHARE and room >= 1:
        last_bar = first_bar + min_life - 1 + int(early_at * room)
    return SymbolProfile(
        index=index,
        symbol=symbol_name(seed, index),
        sector=sector,
        beta=beta,
        sector_beta=sector_beta,
        idio_vol=idio_vol,
        drift=drift,
        garch_alpha=garch_alpha,
        garch_beta=persistence - garch_alpha,
        dof=dof,
        start_price=start_price,
        base_volume=base_volume,
        first_bar=first_bar,
        last_bar=last_bar,
    )


def symbol_profile(seed: int, index: int, n_bars: int) -> SymbolProfile:
    """The profile of symbol ``index`` (sector, betas, listed life...) without simulating its bars."""
    return _draw_profile(_symbol_generator(seed, index), seed, index, n_bars)


def _student_t(rng: np.random.Generator, dof: float, size: int) -> np.ndarray:
    """Unit-variance Student-t draws, so the GARCH variance is the return variance whatever the tails."""
    return rng.standard_t(dof, size) * math.sqrt((dof - 2.0) / dof)


def _daily_garch(vol: float, garch: tuple[float, float]) -> tuple[float, float, float]:
    alpha, beta = garch
    return (vol * vol / TRADING_DAYS_PER_YEAR) * (1.0 - alpha - beta), alpha, beta


@lru_cache(maxsize=4)
def factor_returns(seed: int, n_bars: int) -> tuple[np.ndarray, np.ndarray]:
    """Market (``n_bars``) and sector (``11 x n_bars``) daily log returns, each from its own fixed stream.

    The market's mean is exactly ``MARKET_DRIFT`` a year; sector factors keep their random realised drifts,
    which is what makes some sectors win a decade and others lose it.

    Cached because every symbol of a process needs the same factors; arrays are read-only so the cache
    cannot be corrupted by a caller.
    """
    market_rng = np.random.Generator(
        np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(_MARKET_BRANCH,)))
    )
    market = garch_returns(
        _student_t(market_rng, MARKET_DOF, n_bars), 0.0, *_daily_garch(MARKET_VOL, MARKET_GARCH)
    )
    # Pin the realised drift: over 20 years its sampling error (about 3.5 % a year) would otherwise make some
    # seeds' markets fall, and every universe is meant to have the same small positive drift.
    market += MARKET_DRIFT / TRADING_DAYS_PER_YEAR - market.mean()
    sectors = np.empty((len(SECTORS), n_bars))
    for k in range(len(SECTORS)):
        rng = np.random.Generator(
            np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(_SECTOR_BRANCH, k)))
        )
        sectors[k] = garch_returns(
            _student_t(rng, SECTOR_DOF, n_bars), 0.0, *_daily_garch(SECTOR_VOL, SECTOR_GARCH)
        )
    market.flags.writeable = False
    sectors.flags.writeable = False
    return market, sectors


def simulate_symbol(seed: int, index: int, n_bars: int) -> SymbolBars:
    """Simulate symbol ``index`` of the universe ``seed`` on a calendar of ``n_bars`` bars."""
    rng = _symbol_generator(seed, index)
    p = _draw_profile(rng, seed, index, n_bars)
    n = p.last_bar - p.first_bar + 1
    z = _student_t(rng, p.dof, n)
    normals = rng.standard_normal((2, n))
    exponentials = rng.standard_exponential((2, n))
    inner = max(n - 2, 0)  # the first and last listed days are never missing, so the listed life is exact
    n_missing = int(rng.binomial(inner, MISSING_DAY_RATE)) if inner else 0
    missing = rng.choice(inner, n_missing, replace=False) + 1 if n_missing else np.empty(0, np.int64)

    market, sectors = factor_returns(seed, n_bars)
    market_var = MARKET_VOL**2 / TRADING_DAYS_PER_YEAR
    sector_var = SECTOR_VOL**2 / TRADING_DAYS_PER_YEAR
    idio_var = p.idio_vol**2 / TRADING_DAYS_PER_YEAR
    persistence = p.garch_alpha + p.garch_beta
    life = slice(p.first_bar, p.last_bar + 1)
    ohlcv = np.empty((5, n), dtype=np.int64)
    simulate_bars(
        market[life],
        sectors[p.sector, life],
        p.drift / TRADING_DAYS_PER_YEAR,
        p.beta,
        p.sector_beta,
        idio_var * (1.0 - persistence),
        p.garch_alpha,
        p.garch_beta,
        p.beta**2 * market_var + p.sector_beta**2 * sector_var,
        p.start_price,
        math.log(p.base_volume),
        z,
        normals[0],
        exponentials[0],
        exponentials[1],
        normals[1],
        ohlcv[0],
        ohlcv[1],
        ohlcv[2],
        ohlcv[3],
        ohlcv[4],
    )
    keep = np.ones(n, dtype=bool)
    keep[missing] = False
    ohlcv = ohlcv[:, keep]
    return SymbolBars(
        profile=p,
        bars=np.arange(p.first_bar, p.last_bar + 1, dtype=np.int64)[keep],
        open_cents=ohlcv[0],
        high_cents=ohlcv[1],
        low_cents=ohlcv[2],
        close_cents=ohlcv[3],
        volume=ohlcv[4],
    )


def _validate(n_symbols: int, years: float, seed: int, workers: int | None) -> None:
    if n_symbols < 1:
        raise ConfigError(f"the number of symbols must be at least 1, got {n_symbols}")
    if n_symbols > MAX_SYMBOLS:
        raise ConfigError(f"at most {MAX_SYMBOLS} symbols have distinct 4-letter tickers, got {n_symbols}")
    if not (math.isfinite(years) and years > 0):
        raise ConfigError(f"years must be a positive number, got {years}")
    if seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed}")
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")


def generate_panel(n_symbols: int, years: float, seed: int, start: str = "2005-01-03") -> PricePanel:
    """The universe in memory, exactly as ``generate_universe`` writes it (prices are cents / 100).

    For tests and benchmarks that want the data without a round trip through files. Days on which no symbol
    trades are dropped, as ``PricePanel.from_frames`` does for the files.
    """
    _validate(n_symbols, years, seed, None)
    n_bars = bars_for_years(years)
    dates = trading_calendar(start, n_bars)
    fields = np.full((5, n_symbols, n_bars), np.nan)
    symbols = []
    for i in range(n_symbols):
        s = simulate_symbol(seed, i, n_bars)
        symbols.append(s.profile.symbol)
        for f, values in enumerate((s.open_cents, s.high_cents, s.low_cents, s.close_cents)):
            fields[f, i, s.bars] = values / 100.0
        fields[4, i, s.bars] = s.volume
    traded = ~np.isnan(fields[3]).all(axis=0)
    return PricePanel(
        symbols=tuple(symbols),
        dates=dates[traded],
        open=np.ascontiguousarray(fields[0][:, traded]),
        high=np.ascontiguousarray(fields[1][:, traded]),
        low=np.ascontiguousarray(fields[2][:, traded]),
        close=np.ascontiguousarray(fields[3][:, traded]),
        volume=np.ascontiguousarray(fields[4][:, traded]),
    )


@dataclass(frozen=True)
class _Batch:
    out: str
    seed: int
    n_bars: int
    date_text: np.ndarray
    indices: tuple[int, ...]


@dataclass(frozen=True)
class _Written:
    profile: SymbolProfile
    rows: int
    first_bar: int
    last_bar: int


def _write_batch(batch: _Batch) -> list[_Written]:
    """Simulate and write one batch of symbols; runs in a worker process, returns only small records."""
    header = np.frombuffer(CSV_HEADER.encode("ascii"), dtype=np.uint8)
    buf = np.empty(0, dtype=np.uint8)
    written = []
    for index in batch.indices:
        s = simulate_symbol(batch.seed, index, batch.n_bars)
        name = np.frombuffer(s.profile.symbol.encode("ascii"), dtype=np.uint8)
        size = header.size + s.bars.size * max_row_bytes(name.size)
        if buf.size < size:
            buf = np.empty(size, dtype=np.uint8)
        buf[: header.size] = header
        end = write_csv_rows(
            buf,
            header.size,
            batch.date_text,
            s.bars,
            s.open_cents,
            s.high_cents,
            s.low_cents,
            s.close_cents,
            s.volume,
            name,
        )
        with open(os.path.join(batch.out, s.profile.symbol + FILE_SUFFIX), "wb") as fh:
            fh.write(memoryview(buf)[:end])
        written.append(_Written(s.profile, int(s.bars.size), int(s.bars[0]), int(s.bars[-1])))
    return written


def _clear_previous(out: Path, keep: set[str]) -> None:
    """Remove files of a previous universe in ``out`` that the new one would not overwrite.

    Stale CSVs would silently join the new universe when the folder is loaded. Only files the old
    ``universe.json`` lists are removed; any other ``*_data.csv`` means the folder is not ours to clean.
    """
    existing = {p.name for p in out.glob("*" + FILE_SUFFIX)}
    stale = existing - keep
    manifest = out / MANIFEST_NAME
    if stale:
        ours: set[str] = set()
        if manifest.is_file():
            try:
                old = json.loads(manifest.read_text())
                ours = {entry["symbol"] + FILE_SUFFIX for entry in old["symbols"]}
            except (ValueError, KeyError, TypeError) as exc:
                raise DataError(
                    f"{manifest} is not a universe manifest ({exc}); use an empty folder"
                ) from exc
        foreign = sorted(stale - ours)
        if foreign:
            raise ConfigError(
                f"{out} already holds {len(foreign)} other CSV file(s) "
                f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}) that would mix with the "
                f"synthetic universe; choose an empty folder or remove them"
            )
        for name in stale:
            (out / name).unlink()
    # Written last on success, so its absence marks a generation that did not finish.
    manifest.unlink(missing_ok=True)


def _batches(indices: Sequence[int], workers: int) -> list[tuple[int, ...]]:
    # Several batches per worker balance the load (late listings make symbols unequal in length) while
    # keeping per-task overhead negligible.
    size = max(1, min(64, math.ceil(len(indices) / (workers * 8))))
    return [tuple(indices[k : k + size]) for k in range(0, len(indices), size)]


def _warm_kernels() -> None:
    """Compile (or load from cache) the kernels once before forking, so workers do not each do it."""
    simulate_symbol(0, 0, 2)
    write_csv_rows(
        np.empty(256, np.uint8),
        0,
        np.zeros((1, 10), np.uint8),
        np.zeros(1, np.int64),
        *(np.ones(1, np.int64) for _ in range(5)),
        np.zeros(1, np.uint8),
    )


def _pool_context() -> multiprocessing.context.BaseContext:
    """``fork`` where it is safe, as it is fastest: workers inherit the imported modules and warm kernels.

    Forking a process that runs other threads (a Prefect worker, a server) can leave the child waiting on a
    lock some other thread held at the fork, so then a fork server starts the workers from a clean process.
    """
    methods = multiprocessing.get_all_start_methods()
    if sys.platform.startswith("linux") and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _manifest(
    seed: int, n_symbols: int, years: float, start: str, dates: np.ndarray, written: list[_Written]
) -> dict[str, Any]:
    n_bars = len(dates)
    symbols = []
    for w in written:
        p = w.profile
        symbols.append(
            {
                "symbol": p.symbol,
                "index": p.index,
                "sector": SECTORS[p.sector],
                "beta": round(p.beta, 6),
                "sector_beta": round(p.sector_beta, 6),
                "idio_vol": round(p.idio_vol, 6),
                "drift": round(p.drift, 6),
                "listing_date": str(dates[w.first_bar]),
                "delisting_date": str(dates[w.last_bar]) if w.last_bar < n_bars - 1 else None,
                "listed_late": w.first_bar > 0,
                "rows": w.rows,
                "file": p.symbol + FILE_SUFFIX,
            }
        )
    return {
        "format": MANIFEST_FORMAT,
        "generator": "backtest.synthetic",
        "seed": int(seed),
        "parameters": {
            "n_symbols": int(n_symbols),
            "years": float(years),
            "start": start,
            "bars": n_bars,
            "first_date": str(dates[0]),
            "last_date": str(dates[-1]),
        },
        "model": {
            "market": {
                "vol": MARKET_VOL,
                "drift": MARKET_DRIFT,
                "garch": list(MARKET_GARCH),
                "dof": MARKET_DOF,
            },
            "sector": {"vol": SECTOR_VOL, "garch": list(SECTOR_GARCH), "dof": SECTOR_DOF},
            "late_listing_share": LATE_LISTING_SHARE,
            "early_delisting_share": EARLY_DELISTING_SHARE,
            "min_life_bars": MIN_LIFE_BARS,
            "missing_day_rate": MISSING_DAY_RATE,
        },
        "sectors": list(SECTORS),
        "symbols": symbols,
    }


def generate_universe(
    out: Path,
    n_symbols: int,
    years: float,
    seed: int,
    start: str = "2005-01-03",
    workers: int | None = None,
) -> GenerateSummary:
    """Write ``n_symbols`` synthetic ``<SYMBOL>_data.csv`` files and ``universe.json`` into ``out``.

    The output depends only on ``(n_symbols, years, seed, start)``: ``workers`` (default: all CPUs) changes
    the speed, never a byte. With more than one worker, batches of symbols run in a process pool; when the
    caller runs other threads the pool starts from a fork server, which re-imports the caller's ``__main__``,
    so a script calling this needs the usual ``if __name__ == "__main__":`` guard.
    """
    t0 = time.perf_counter()
    _validate(n_symbols, years, seed, workers)
    n_bars = bars_for_years(years)
    dates = trading_calendar(start, n_bars)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _clear_previous(out, {symbol_name(seed, i) + FILE_SUFFIX for i in range(n_symbols)})

    date_text = np.frombuffer("".join(np.datetime_as_string(dates)).encode("ascii"), dtype=np.uint8)
    date_text = date_text.reshape(n_bars, 10)
    n_workers = workers or os.cpu_count() or 1
    batches = [_Batch(str(out), seed, n_bars, date_text, ix) for ix in _batches(range(n_symbols), n_workers)]
    n_workers = min(n_workers, len(batches))
    if n_workers > 1:
        _warm_kernels()
        with ProcessPoolExecutor(max_workers=n_workers, mp_context=_pool_context()) as pool:
            results = list(pool.map(_write_batch, batches))
    else:
        results = [_write_batch(b) for b in batches]
    written = [w for batch in results for w in batch]

    manifest = _manifest(seed, n_symbols, years, start, dates, written)
    write_text(out / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")
    return GenerateSummary(
        out=out,
        symbols=n_symbols,
        bars=n_bars,
        rows=sum(w.rows for w in written),
        seconds=time.perf_counter() - t0,
    )
