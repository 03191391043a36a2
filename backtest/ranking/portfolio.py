"""One cross-sectional portfolio over a market: the pandas-free layer over ``portfolio_nb``.

``Construction`` holds the portfolio options (each can also be a grid parameter), validated once here with
errors that say how to fix them; ``Market`` holds the prices of the whole universe on one calendar, and
``simulate`` runs one combination's scores through the kernel.
"""

from __future__ import annotations

import functools
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

    @functools.cached_property
    def last_bar(self) -> np.ndarray:
        has = ~np.isnan(self.close)
        last = self.close.shape[1] - 1 - np.argmax(has[:, ::-1], axis=1)
        return np.where(has.any(axis=1), last, -1).astype(np.int64)

    @functools.cached_property
    def volatility(self) -> np.ndarray:
        """63-bar volatility of every symbol on its own bars, for ``weighting inverse_vol`` (made once)."""
        return scores_nb.own_volatility_nb(self.close, scores_nb.VOL_WINDOW)

    @functools.cached_property
    def bar_scores(self) -> np.ndarray:
        """0 wherever a symbol has a bar: the benchmark's scores (everyone eligible ties)."""
        return np.where(np.isnan(self.close), np.float32(np.nan), np.float32(0.0))

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


def first_rebalance(market: Market, scores: np.ndarray, construction: Construction) -> int:
    weighting = WEIGHTINGS.index(construction.weighting)
    vol = market.volatility if weighting == portfolio_nb.INVERSE_VOL else np.zeros((0, 0))
    return int(
        portfolio_nb.first_rebalance_nb(
            scores, market.close, market.member, market.last_bar, vol, construction.need, weighting
        )
    )


def simulate(
    market: Market,
    scores: np.ndarray,
    construction: Construction,
    cost: float,
    next_open: bool,
    snap_days: np.ndarray | None = None,
    log_mask: np.ndarray | None = None,
    first: int | None = None,
) -> Simulation:
    """Run one portfolio; ``first`` forces the first rebalance day (the benchmark follows the strategy's)."""
    weighting = WEIGHTINGS.index(construction.weighting)
    vol = market.volatility if weighting == portfolio_nb.INVERSE_VOL else np.zeros((0, 0))
    if first is None:
        first = first_rebalance(market, scores, construction)
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
        np.ascontiguousarray(scores, np.float32),
        market.member,
        market.last_bar,
        vol,
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


def _rebalances_in(mask: np.ndarray, first: int, every: int) -> int:
    if first < 0:
        return 0
    days = np.arange(first, len(mask), every)
    return int(mask[days].sum())
