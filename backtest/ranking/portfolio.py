"""One cross-sectional portfolio over a market: the pandas-free layer over ``portfolio_nb``.

``Construction`` holds the portfolio options (each can also be a grid parameter), validated once here with
errors that say how to fix them; ``Market`` holds the prices of the whole universe on one calendar, and
``simulate`` runs one combination's scores through the kernel.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields

import numpy as np

from backtest.config import encode_choice
from backtest.defaults import CHOICES, SIDES, WEIGHTINGS
from backtest.errors import ConfigError
from backtest.ranking import portfolio_nb, scores_nb

__all__ = ["CHOICES", "SIDES", "WEIGHTINGS", "encode_choice"]

#: the construction options as grid parameters, in the order of the combination table's columns
CONSTRUCTION_PARAMS = ("top", "quantile", "side", "weighting", "max_weight", "rebalance")
DEFAULT_TOP = 50
DEFAULT_REBALANCE = 21


@dataclass(frozen=True)
class Construction:
    """How the scores become a portfolio: top N (or a quantile), side, weighting, cap, rebalance interval.

    ``top`` 0 means "use ``quantile``"; giving a quantile alone sets top to 0.
    """

    top: int = DEFAULT_TOP
    quantile: float = 0.0
    side: str = "long"
    weighting: str = "equal"
    max_weight: float = 1.0
    rebalance: int = DEFAULT_REBALANCE

    def __post_init__(self) -> None:
        if self.quantile and self.top == DEFAULT_TOP:
            object.__setattr__(self, "top", 0)
        if self.top and self.quantile:
            raise ConfigError(
                f"give --top or --quantile, not both (top {self.top}, quantile {self.quantile:g})"
            )
        if self.top != int(self.top) or self.top < 0:
            raise ConfigError(f"top must be a whole number of symbols >= 1, got {self.top:g}")
        if not self.top and not (0.0 < self.quantile <= 1.0):
            raise ConfigError(
                f"quantile must be in (0, 1], e.g. 0.1 for the best decile; got {self.quantile:g}"
            )
        if self.side not in SIDES:
            raise ConfigError(f"unknown side {self.side!r}: choose {' or '.join(SIDES)}")
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"unknown weighting {self.weighting!r}: choose one of {', '.join(WEIGHTINGS)}")
        if not (0.0 < self.max_weight <= 1.0):
            raise ConfigError(f"max_weight must be in (0, 1], e.g. 0.05; got {self.max_weight:g}")
        if self.rebalance != int(self.rebalance) or self.rebalance < 1:
            raise ConfigError(
                f"rebalance must be a whole number of trading days >= 1, got {self.rebalance:g}"
            )
        object.__setattr__(self, "top", int(self.top))
        object.__setattr__(self, "rebalance", int(self.rebalance))

    def row(self) -> tuple[float, ...]:
        """As the combination table's construction columns (names stored as their codes)."""
        return tuple(float(self.code(f.name)) for f in fields(self))

    def code(self, name: str) -> float:
        value = getattr(self, name)
        return float(CHOICES[name].index(value)) if name in CHOICES else float(value)

    @classmethod
    def from_row(cls, row: np.ndarray) -> Construction:
        values = dict(zip(CONSTRUCTION_PARAMS, (float(v) for v in row), strict=True))
        return cls(
            top=int(values["top"]),
            quantile=values["quantile"],
            side=SIDES[int(values["side"])],
            weighting=WEIGHTINGS[int(values["weighting"])],
            max_weight=values["max_weight"],
            rebalance=int(values["rebalance"]),
        )

    @property
    def need(self) -> int:
        """Eligible symbols the first rebalance waits for."""
        per_leg = self.top if self.top else 1
        return 2 * per_leg if self.side == "long_short" else per_leg


@dataclass(frozen=True, eq=False)
class Market:
    """The whole universe on one calendar: what portfolio formation needs beside the scores.

    ``member`` is a symbols x days mask of a point-in-time membership file, or an empty (0 x 0) array for
    everyone a member; ``last_bar`` the calendar index of each symbol's last bar (-1: none).
    """

    symbols: tuple[str, ...]
    dates: np.ndarray
    close: np.ndarray
    open: np.ndarray
    member: np.ndarray

    def __post_init__(self) -> None:
        # read-only views, as a PricePanel's: the kernels see one type of array however the market was made
        for name in ("close", "open", "member"):
            object.__setattr__(self, name, readonly(getattr(self, name)))

    @functools.cached_property
    def last_bar(self) -> np.ndarray:
        has = ~np.isnan(self.close)
        last = self.close.shape[1] - 1 - np.argmax(has[:, ::-1], axis=1)
        return np.where(has.any(axis=1), last, -1).astype(np.int64)

    @functools.cached_property
    def bar_count(self) -> np.ndarray:
        """Symbols with a bar, per day."""
        return np.count_nonzero(~np.isnan(self.close), axis=0).astype(np.int64)

    @functools.cached_property
    def volatility(self) -> np.ndarray:
        """63-bar volatility of every symbol on its own bars, for ``weighting inverse_vol`` (made once)."""
        return scores_nb.own_volatility_nb(self.close, scores_nb.VOL_WINDOW)

    @property
    def n_symbols(self) -> int:
        return len(self.symbols)

    @property
    def n_days(self) -> int:
        return len(self.dates)


@dataclass(frozen=True, eq=False)
class Simulation:
    """One portfolio's daily series, and what phase 3 and the holdings table need from it."""

    ret: np.ndarray
    turnover: np.ndarray
    n_holdings: np.ndarray
    first: int  # first rebalance day (-1: never)
    snaps: np.ndarray  # end-of-day weights of the snapshot days (days x symbols)
    log_days: np.ndarray  # rebalance days logged
    log_targets: np.ndarray  # their targets (days x symbols)


def readonly(arr: np.ndarray) -> np.ndarray:
    """``arr`` itself when read-only, else a read-only view of it (numba compiles each kernel once per type
    of its arguments, and a writable array is another type than a read-only one)."""
    if not arr.flags.writeable:
        return arr
    view = arr.view()
    view.flags.writeable = False
    return view


#: a score combination's scores as pieces of the market's rows: (first row, rows x days float32), in row order
Pieces = Callable[[], Iterable[tuple[int, np.ndarray]]]
#: rows of the benchmark's bar "scores" made at a time (bounded memory: 256 x days float32)
_BENCH_ROWS = 256


@dataclass(frozen=True, eq=False)
class ScoreDays:
    """A score combination's eligible scores on the days its portfolios may rebalance, day-major: row c
    holds day ``days[c]``'s score of every symbol, NaN where the symbol is not eligible that day."""

    days: np.ndarray  # calendar indices, ascending
    col_of: np.ndarray  # per calendar day: its row in ``values`` (-1: not kept)
    values: np.ndarray  # len(days) x symbols, float32
    vol: np.ndarray  # len(days) x symbols: the volatility on those days (inverse_vol), else 0 x 0


def _rows(
    market: Market, r0: int, n: int, vol: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The market's ``close``, ``member``, ``last_bar`` and volatility of rows ``r0 ... r0 + n``."""
    rows = slice(r0, r0 + n)
    member = market.member[rows] if market.member.shape[0] else market.member
    return market.close[rows], member, market.last_bar[rows], market.volatility[rows] if vol else _EMPTY2


_EMPTY2 = np.zeros((0, 0))


def schedule(first: int, rebalance: int, n_days: int) -> np.ndarray:
    return np.arange(first, n_days, rebalance, dtype=np.int64) if first >= 0 else np.zeros(0, np.int64)


def score_days(
    market: Market, pieces: Pieces, constructions: Sequence[Construction]
) -> tuple[ScoreDays, list[int]]:
    """The scores every construction of one score combination needs, and each one's first rebalance (the
    first day with enough eligible symbols). Two passes over the pieces: the eligible counts per day, then
    the scores of the rebalance days; no symbols x days array of the whole market is made."""
    n_days, n_sym = market.n_days, market.n_symbols
    vol = any(c.weighting == "inverse_vol" for c in constructions)
    counts = np.zeros((2, n_days), np.int64)
    for r0, rows in pieces():
        close, member, last_bar, vol_rows = _rows(market, r0, rows.shape[0], vol)
        portfolio_nb.eligible_counts_nb(rows, close, member, last_bar, vol_rows, counts)
    firsts = [
        int(portfolio_nb.first_day_nb(counts[1 if c.weighting == "inverse_vol" else 0], c.need))
        for c in constructions
    ]
    days = np.unique(
        np.concatenate([schedule(f, c.rebalance, n_days) for f, c in zip(firsts, constructions, strict=True)])
    )
    values = np.empty((len(days), n_sym), np.float32)
    for r0, rows in pieces():
        close, member, last_bar, _ = _rows(market, r0, rows.shape[0], False)
        portfolio_nb.gather_days_nb(rows, close, member, last_bar, days, values, r0)
    return _score_days(market, days, values, vol), firsts


def bench_days(market: Market, first: int, rebalance: int) -> ScoreDays:
    """The equal-weight benchmark's "scores" on its rebalance days: 0 for every eligible symbol (a bar, a
    member, a history not ending that day), built a few hundred rows at a time."""
    days = schedule(first, rebalance, market.n_days)
    values = np.empty((len(days), market.n_symbols), np.float32)
    for r0 in range(0, market.n_symbols, _BENCH_ROWS):
        close, member, last_bar, _ = _rows(market, r0, min(_BENCH_ROWS, market.n_symbols - r0), False)
        bars = readonly(np.where(np.isnan(close), np.float32(np.nan), np.float32(0.0)))
        portfolio_nb.gather_days_nb(bars, close, member, last_bar, days, values, r0)
    return _score_days(market, days, values, False)


def _score_days(market: Market, days: np.ndarray, values: np.ndarray, vol: bool) -> ScoreDays:
    col_of = np.full(market.n_days, -1, np.int64)
    col_of[days] = np.arange(len(days))
    vol_days = np.ascontiguousarray(market.volatility[:, days].T) if vol else _EMPTY2
    return ScoreDays(days, col_of, values, vol_days)


def simulate(
    market: Market,
    scores: np.ndarray | ScoreDays,
    construction: Construction,
    cost: float,
    next_open: bool,
    snap_days: np.ndarray | None = None,
    log_mask: np.ndarray | None = None,
    first: int | None = None,
) -> Simulation:
    """Run one portfolio. ``scores`` is the whole market's (symbols x days) or a combination's ``ScoreDays``
    (then ``first`` is its first rebalance, from ``score_days``); ``first`` forces the first rebalance day
    (the benchmark follows the strategy's)."""
    if isinstance(scores, np.ndarray):
        whole = readonly(np.ascontiguousarray(scores, np.float32))
        days, firsts = score_days(market, lambda: [(0, whole)], [construction])
        if first is None:
            first = firsts[0]
        elif first >= 0:  # forced: its own schedule
            days = _forced(market, whole, first, construction)
    else:
        days = scores
        if first is None:
            raise ValueError("give the first rebalance day of these ScoreDays (score_days returns it)")
    weighting = WEIGHTINGS.index(construction.weighting)
    n_sym, n_days = market.n_symbols, market.n_days
    snap_days = np.zeros(0, np.int64) if snap_days is None else np.ascontiguousarray(snap_days, np.int64)
    log_mask = np.zeros(n_days, np.bool_) if log_mask is None else np.ascontiguousarray(log_mask, np.bool_)
    capacity = _rebalances_in(log_mask, first, construction.rebalance)
    ret, turnover, n_holdings = np.empty(n_days), np.empty(n_days), np.empty(n_days, np.int64)
    snaps = np.zeros((len(snap_days), n_sym))
    log_targets = np.zeros((capacity, n_sym))
    log_days = np.zeros(capacity, np.int64)
    n_log = portfolio_nb.simulate_nb(
        market.close,
        market.open,
        days.values,
        days.col_of,
        days.vol,
        market.last_bar,
        construction.top,
        construction.quantile,
        construction.side == "long_short",
        weighting,
        construction.max_weight,
        construction.rebalance,
        first,
        cost,
        next_open,
        snap_days,
        log_mask,
        ret,
        turnover,
        n_holdings,
        snaps,
        log_targets,
        log_days,
    )
    return Simulation(ret, turnover, n_holdings, first, snaps, log_days[:n_log], log_targets[:n_log])


def _forced(market: Market, scores: np.ndarray, first: int, construction: Construction) -> ScoreDays:
    days = schedule(first, construction.rebalance, market.n_days)
    values = np.empty((len(days), market.n_symbols), np.float32)
    close, member, last_bar, _ = _rows(market, 0, market.n_symbols, False)
    portfolio_nb.gather_days_nb(scores, close, member, last_bar, days, values, 0)
    return _score_days(market, days, values, construction.weighting == "inverse_vol")


def _rebalances_in(mask: np.ndarray, first: int, every: int) -> int:
    if first < 0:
        return 0
    days = np.arange(first, len(mask), every)
    return int(mask[days].sum())
