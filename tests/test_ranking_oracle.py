"""The cross-sectional reference (tests/ranking_reference.py) against vectorbt's ``Portfolio.from_orders``.

The oracle: vectorbt is given the reference's decisions only (the target weights of every rebalance, as
``size_type="targetpercent"`` orders on a cash-shared group) and does its own accounting; on the real S&P 500
sample the two portfolios' daily returns must agree to 1e-9 on every day. What vectorbt does with the
market's irregularities, read from its source (vectorbt 1.2.0, ``portfolio/nb.py``, ``portfolio/base.py``):

* **NaN close** (no bar): the order price is the close, so an order on a NaN close is *ignored* (status
  ``PriceNaN``): a held symbol without a bar cannot trade, as in the reference. Its valuation price is
  forward-filled (``ffill_val_price``) for the group value the target percentages are taken of, and
  ``Portfolio.value`` values positions at the forward-filled close (``fillna_close``): a held symbol keeps its
  value over a gap and then moves from its last close, as in the reference. The one difference: vectorbt
  takes the targets of the whole value, the stuck position included, where the reference scales them by
  ``1 - stuck / V`` (docs/cross_sectional.md, Accounting 3). The orders below carry ``target x scale``
  (the stuck share read from the reference's end-of-day weights; without costs a trade at the close leaves the
  value unchanged), which is what the reference does, decided by the reference.
* **Late listings**: before its first bar a symbol has a NaN price and no position; its orders are ignored
  and it adds nothing to the value. Nothing to adapt (and they are held in these runs: checked).
* **History ending early** (delisting): vectorbt has no notion of it; a position would be frozen at its last
  close forever. The reference sells it at its last close (Accounting 2), so the orders carry a target of 0
  on that bar. The sample has no such symbol; the test of irregular events below truncates some.
* **Units**: vectorbt skips adjustments whose size in shares is within 1e-12 of 0 (``is_close_nb``'s
  absolute tolerance); with a starting cash of 1 the positions are ~1e-4 shares and real adjustments get
  dropped (differences of ~4e-8 a day). Returns are scale-free, so vectorbt starts with 1e9.
* **Call order**: ``call_seq="auto"`` sorts each row's orders by value, sells first, so the buys are paid
  by the sells; NaN sizes (no order) sort last.
* **Fees**: see ``test_costs_differ_from_vectorbt_by_a_bounded_amount``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.ranking_reference import (
    ReferenceResult,
    cap_weights,
    own_volatility,
    reference_portfolio,
    select_targets,
)

vbt = pytest.importorskip("vectorbt")

TOL = 1e-9
VBT_CASH = 1e9
LOOKBACK = 63


@dataclass(frozen=True)
class Market:
    close: pd.DataFrame
    open_: pd.DataFrame
    scores: pd.DataFrame


def load_sp500(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Closes and opens (dates x symbols, symbols sorted) of every ``<SYM>_data.csv`` in ``folder``."""
    closes, opens = {}, {}
    for path in sorted(folder.glob("*_data.csv")):
        frame = pd.read_csv(path, usecols=["date", "open", "close"], parse_dates=["date"]).set_index("date")
        symbol = path.name.removesuffix("_data.csv")
        closes[symbol], opens[symbol] = frame["close"], frame["open"]
    close = pd.DataFrame(closes).sort_index().sort_index(axis=1).astype(float)
    return close, pd.DataFrame(opens).reindex_like(close).astype(float)


def momentum(close: pd.DataFrame, lookback: int = LOOKBACK) -> pd.DataFrame:
    """``c[j] / c[j - lookback] - 1`` on each symbol's own bars (a day without a bar is skipped)."""
    out = {}
    for symbol in close.columns:
        own = close[symbol].dropna()
        out[symbol] = (own / own.shift(lookback) - 1.0).reindex(close.index)
    return pd.DataFrame(out, index=close.index)


@pytest.fixture(scope="module")
def market(sp500_dir: Path) -> Market:
    close, open_ = load_sp500(sp500_dir)
    return Market(close, open_, momentum(close))


def vectorbt_orders(
    ref: ReferenceResult, close: pd.DataFrame, open_: pd.DataFrame, execution: str = "close"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The reference's decisions as vectorbt orders: ``(size, price)`` frames for ``from_orders``.

    On each trade row (the rebalance row, or the next one with ``next_open``) the size is the target times
    the reference's scale for stuck positions, 0 for a held symbol that is not targeted, NaN elsewhere; the
    price is the close (inf), or the open (the close when the open is missing) on ``next_open`` trade rows.
    A held symbol whose history ends before the calendar's last row gets a 0 order on its last bar.
    """
    size = pd.DataFrame(np.nan, index=close.index, columns=close.columns)
    price = pd.DataFrame(np.inf, index=close.index, columns=close.columns)
    end_weights = ref.weights.fillna(0.0)
    last_close = close.ffill()
    n_rows = len(close)
    for day in ref.rebalance_days:
        t = close.index.get_loc(day)
        if execution == "close":
            row = t
            held = end_weights.iloc[t - 1] if t > 0 else end_weights.iloc[t] * 0.0
            stuck = (held != 0.0) & close.iloc[row].isna()
            # a trade at the close (no costs) leaves the value as it was: the stuck share of V is the stuck
            # positions' end-of-day weight
            scale = 1.0 - end_weights.iloc[row][stuck].abs().sum()
        else:
            row = t + 1
            if row >= n_rows:
                continue
            held = end_weights.iloc[t]
            bar = close.iloc[row].notna()
            opens = open_.iloc[row].fillna(close.iloc[row])
            # the value at the open relative to yesterday's end: cash plus each position moved to its open
            moved = (opens / last_close.iloc[t]).where(bar, 1.0).fillna(1.0)
            value_at_open = (1.0 - held.sum()) + (held * moved).sum()
            stuck = (held != 0.0) & ~bar
            scale = 1.0 - held[stuck].abs().sum() / value_at_open
            price.iloc[row] = opens.where(bar, np.nan)
        orders = pd.Series(np.nan, index=close.columns)
        orders[held != 0.0] = 0.0
        targets = ref.targets[day]
        orders[targets.index] = targets * scale
        size.iloc[row] = orders
    # delistings: a held symbol is sold at its last close when that is before the calendar's last row
    last_bar = close.apply(lambda s: s.last_valid_index())
    for symbol, last in last_bar.items():
        row = close.index.get_loc(last)
        if row < n_rows - 1 and row > 0 and end_weights[symbol].iloc[row - 1] != 0.0:
            size.loc[last, symbol] = 0.0
    return size, price


def vectorbt_portfolio(close: pd.DataFrame, size: pd.DataFrame, price: pd.DataFrame, fees: float = 0.0):
    return vbt.Portfolio.from_orders(
        close=close,
        size=size,
        price=price,
        size_type="targetpercent",
        group_by=True,
        cash_sharing=True,
        call_seq="auto",
        init_cash=VBT_CASH,
        fees=fees,
    )


def assert_same_returns(ref: ReferenceResult, pf) -> None:
    ours = ref.daily["ret"]
    theirs = pf.returns()
    assert ours.notna().all()
    worst = (theirs - ours).abs()
    assert worst.max() < TOL, f"daily returns differ by {worst.max():.3g} on {worst.idxmax().date()}"
    assert pf.value().iloc[-1] / VBT_CASH == pytest.approx(ref.daily["value"].iloc[-1], rel=1e-9)


# --- the reference's construction, by hand ------------------------------------------------------------------


def test_cap_weights_by_hand() -> None:
    # one round: 0.1 over the cap goes to 0.3 and 0.2 in proportion (0.06, 0.04)
    assert cap_weights([0.5, 0.3, 0.2], 1.0, 0.4) == pytest.approx([0.4, 0.36, 0.24])
    # two rounds: 0.6 -> 0.35 pushes 0.3 to 0.4875 > 0.35, whose excess then goes to the last one
    assert cap_weights([0.6, 0.3, 0.1], 1.0, 0.35) == pytest.approx([0.35, 0.35, 0.3])
    # m x cap below the budget: everything at the cap, the rest in cash
    assert cap_weights([0.5, 0.5], 1.0, 0.3) == [0.3, 0.3]
    assert cap_weights([0.25, 0.25], 0.5, 1.0) == [0.25, 0.25]


def test_selection_by_hand() -> None:
    scores = [1.0, 3.0, 3.0, 2.0, math.nan]
    kw = dict(quantile=0.0, weighting="equal", max_weight=1.0, vol={})
    # ties by column position: 1 before 2
    assert select_targets([0, 1, 2, 3], scores, top=2, side="long", **kw) == {1: 0.5, 2: 0.5}
    # long_short with m capped at n // 2 = 2 of 4 (top 3): the last two short
    got = select_targets([0, 1, 2, 3], scores, top=3, side="long_short", **kw)
    assert got == {1: 0.25, 2: 0.25, 3: -0.25, 0: -0.25}
    # score weighting: the best long, and the worst short, weigh m
    got = select_targets([0, 1, 2, 3], scores, top=2, side="long_short", **{**kw, "weighting": "score"})
    assert got == pytest.approx({1: 1 / 3, 2: 1 / 6, 0: -1 / 3, 3: -1 / 6})
    # quantile: floor(0.29 x 100) is 29 although 0.29 * 100 == 28.999999999999996 in floats
    many = [float(k) for k in range(100)]
    got = select_targets(list(range(100)), many, top=0, side="long", **{**kw, "quantile": 0.29})
    assert len(got) == 29 and min(got) == 71
    got = select_targets([0], [1.0], top=0, side="long_short", **{**kw, "quantile": 1.0})
    assert got == {}
    # inverse volatility: proportional to 1 / vol
    got = select_targets(
        [0, 1],
        [2.0, 1.0],
        top=2,
        side="long",
        **{**kw, "weighting": "inverse_vol", "vol": {0: 0.01, 1: 0.03}},
    )
    assert got == pytest.approx({0: 0.75, 1: 0.25})


def test_own_volatility_is_the_sample_std_of_returns() -> None:
    closes = [10.0, 10.5, 10.2, 11.0, 10.9]
    returns = np.diff(closes) / closes[:-1]
    assert own_volatility(closes) == pytest.approx(np.std(returns, ddof=1), rel=1e-14)


def test_tiny_market_by_hand() -> None:
    """Three symbols, six days, top 2 rebalanced every 2 rows: a gap on a rebalance day (B stuck), a
    history ending before the calendar (C, sold at its last close), every number worked out by hand."""
    dates = pd.date_range("2020-01-01", periods=6, freq="D")
    nan = math.nan
    close = pd.DataFrame(
        {
            "A": [10, 11, 12, 12, 13, 14],
            "B": [10, 10, nan, 12, 12, 12],
            "C": [10, 10, 10, 10, nan, nan],
        },
        index=dates,
        dtype=float,
    )
    scores = pd.DataFrame(
        {"A": [1, 1, 1, 1, 1, 1], "B": [2, 2, 2, 2, 2, 2], "C": [0, 0, 3, 3, 3, 3]}, index=dates, dtype=float
    )
    ref = reference_portfolio(close, None, scores, top=2, rebalance=2)
    assert ref.rebalance_days == [dates[0], dates[2], dates[4]]
    assert ref.targets[dates[2]].to_dict() == {"A": 0.5, "C": 0.5}  # B has no bar on row 2
    a5 = 0.6125 * 14 / 13
    values = [1.0, 1.05, 1.1, 1.2, 1.225, a5 + 0.6125]
    # row 2: B (0.5) stuck, scale 1 - 0.5 / 1.1; A 0.6 -> 0.3, C 0 -> 0.3; row 3: C sold (0.3) at its last bar
    turnovers = [1.0, 0.0, 0.6 / 1.1, 0.3 / 1.2, 0.3 / 1.225, 0.0]
    assert ref.daily["value"].tolist() == pytest.approx(values, rel=1e-14)
    assert ref.daily["turnover"].tolist() == pytest.approx(turnovers, rel=1e-14)
    assert ref.daily["n_holdings"].tolist() == [2, 2, 3, 2, 2, 2]
    assert ref.weights.loc[dates[3]].to_dict() == pytest.approx({"A": 0.25, "B": 0.5, "C": 0.0})
    rets = [values[0] - 1.0] + [values[k] / values[k - 1] - 1.0 for k in range(1, 6)]
    assert ref.daily["ret"].tolist() == pytest.approx(rets, rel=1e-12, abs=1e-15)
    # costs are paid from cash on the traded notional
    costly = reference_portfolio(close, None, scores, top=2, rebalance=2, cost=0.01)
    assert costly.daily["value"].iloc[0] == pytest.approx(0.99, rel=1e-14)
    assert costly.weights.iloc[0].sum() == pytest.approx(1 / 0.99, rel=1e-14)  # cash is -0.01


# --- the oracle on the real sample --------------------------------------------------------------------------


@pytest.mark.parametrize("top", [20, 50])
@pytest.mark.parametrize("weighting", ["equal", "inverse_vol"])
def test_reference_matches_vectorbt_without_costs(market: Market, top: int, weighting: str) -> None:
    ref = reference_portfolio(market.close, market.open_, market.scores, top=top, weighting=weighting)
    # the momentum and the volatility are both defined from each symbol's 64th bar
    assert ref.rebalance_days[0] == market.close.index[LOOKBACK]
    assert len(ref.rebalance_days) == len(range(LOOKBACK, len(market.close), 21))
    assert all(len(ref.targets[day]) == top for day in ref.rebalance_days)
    # late listings are held (their NaN closes before the first bar are part of the comparison)
    late = market.close.columns[market.close.iloc[0].isna()]
    assert (ref.weights[late].fillna(0.0) != 0.0).any().any()
    size, price = vectorbt_orders(ref, market.close, market.open_)
    assert_same_returns(ref, vectorbt_portfolio(market.close, size, price))


def test_long_short_and_capped_weights_match_vectorbt(market: Market) -> None:
    """Shorts, score weights and the cap; O's gaps make it a stuck position on a rebalance day here."""
    ref = reference_portfolio(
        market.close,
        market.open_,
        market.scores,
        top=20,
        side="long_short",
        weighting="score",
        max_weight=0.03,
    )
    held_before = ref.weights.shift(1).fillna(0.0) != 0.0
    stuck = (held_before & market.close.isna()).loc[ref.rebalance_days]
    assert stuck.any().any(), "expected a held symbol without a bar on a rebalance day"
    assert (ref.weights < 0.0).any().any()
    assert max(ref.targets[day].abs().max() for day in ref.rebalance_days) <= 0.03 + 1e-15
    size, price = vectorbt_orders(ref, market.close, market.open_)
    assert_same_returns(ref, vectorbt_portfolio(market.close, size, price))


def test_next_open_matches_vectorbt(market: Market) -> None:
    """Targets decided at a rebalance day's close, traded at the next day's open; with a few missing opens
    (traded at the close) and a held symbol without a bar on a trade day injected into the real data."""
    close, open_ = market.close.copy(), market.open_.copy()
    base = reference_portfolio(close, open_, market.scores, top=20, execution="next_open")
    days = base.rebalance_days
    for k in (3, 9, 17):  # the next day's open missing for two symbols held at the decision
        t = close.index.get_loc(days[k])
        held = base.weights.iloc[t][base.weights.iloc[t] != 0.0].index
        open_.iloc[t + 1, open_.columns.get_indexer(held[:2])] = np.nan
    t = close.index.get_loc(days[12])
    held = base.weights.iloc[t][base.weights.iloc[t] != 0.0].index
    gap = held[-1]
    close.iloc[t + 1, close.columns.get_loc(gap)] = np.nan  # a gap on the trade day: stuck at the open
    ref = reference_portfolio(close, open_, momentum(close), top=20, execution="next_open")
    assert ref.weights[gap].iloc[t + 1] != 0.0 and math.isnan(close[gap].iloc[t + 1])
    size, price = vectorbt_orders(ref, close, open_, "next_open")
    assert_same_returns(ref, vectorbt_portfolio(close, size, price))


def test_gaps_stuck_positions_and_delistings_match_vectorbt(market: Market) -> None:
    """Irregular events injected into the real data around the holdings of a first run: two held symbols
    lose the bars of a rebalance day and the day before (a gap, then stuck at the rebalance), two held
    symbols' histories end between rebalances, one's ends on a rebalance day."""
    close = market.close.copy()
    base = reference_portfolio(close, market.open_, market.scores, top=20)
    held = base.weights.fillna(0.0) != 0.0
    days = [close.index.get_loc(d) for d in base.rebalance_days]
    used: set[str] = set()

    def held_on(row: int, count: int) -> list[str]:
        names = [s for s in close.columns[held.iloc[row]] if s not in used][:count]
        used.update(names)
        return names

    gap_row = days[5]
    gapped = held_on(gap_row - 2, 2)
    close.iloc[gap_row - 1 : gap_row + 1, close.columns.get_indexer(gapped)] = np.nan
    end_row = days[15] + 4
    ended = held_on(end_row - 1, 2)
    close.iloc[end_row + 1 :, close.columns.get_indexer(ended)] = np.nan
    end_on_rebalance = held_on(days[30] - 1, 1)
    close.iloc[days[30] + 1 :, close.columns.get_indexer(end_on_rebalance)] = np.nan

    ref = reference_portfolio(close, market.open_, momentum(close), top=20)
    w = ref.weights
    assert (w[gapped].iloc[gap_row] != 0.0).all(), "the gapped symbols are stuck on the rebalance day"
    assert ref.daily["n_holdings"].iloc[gap_row] == 20 + len(gapped)
    assert (w[ended].iloc[end_row - 1] != 0.0).all() and (w[ended].iloc[end_row] == 0.0).all()
    assert ref.daily["turnover"].iloc[end_row] > 0.0  # sold between rebalances
    assert (w[end_on_rebalance].iloc[days[30] - 1] != 0.0).all()
    assert (w[end_on_rebalance].iloc[days[30]] == 0.0).all()
    size, price = vectorbt_orders(ref, close, market.open_)
    assert_same_returns(ref, vectorbt_portfolio(close, size, price))


# --- with costs ---------------------------------------------------------------------------------------------

COST = 0.001  # 10 bps
# Measured on the S&P 500 sample (top 20 / 50, equal / inverse_vol, rebalance 21, 2013-2018): the largest
# daily difference 2.94e-4 (top 50 equal), the largest final-value relative difference 1.32e-3 (top 50
# equal; vectorbt below in all four, 2.9e-4 to 1.3e-3); total fees within 0.25% of the reference's costs.
MAX_DAILY_DIFF = 5e-4
MAX_FINAL_REL_DIFF = 2.5e-3
MAX_FEES_REL_DIFF = 5e-3


@pytest.mark.parametrize("top", [20, 50])
@pytest.mark.parametrize("weighting", ["equal", "inverse_vol"])
def test_costs_differ_from_vectorbt_by_a_bounded_amount(market: Market, top: int, weighting: str) -> None:
    """With costs the two differ, by a small amount bounded by the costs themselves.

    The reference trades every symbol to exactly ``target x V`` and pays ``cost x traded notional`` from
    cash, which goes negative by that amount: the positions are worth V, the portfolio V - cost x traded, so
    it carries an exposure of ``1 / (1 - cost x turnover)``, about 1.0017 after a full rebalance. vectorbt
    sizes each order before its fee (``fees`` is charged on the order's value) and cannot borrow cash: the
    sells come first, and the last buys, which find the cash short by the fees paid so far, are filled
    partially; its cash ends at 0 and one or two names are underweight by the fees (up to 0.17% of V). The
    two portfolios then drift apart until the next rebalance by ``sum_i dw_i r_i`` a day, dw of the order of
    the fees: at most ~2 x 0.0017 x a day's largest return of a held name (10-15%), so a few 1e-4, and over
    the five years by about the extra exposure times the market's cumulative move (~1e-3 of the value). The
    bounds assert these orders of magnitude with a margin of about 2x over the measured values.
    """
    close = market.close
    ref = reference_portfolio(close, market.open_, market.scores, top=top, weighting=weighting, cost=COST)
    size, price = vectorbt_orders(ref, close, market.open_)
    pf = vectorbt_portfolio(close, size, price, fees=COST)

    # no stuck position on a rebalance day in these runs, so the orders' scale is exactly 1 (it is read from
    # weights that assume a value unchanged by the trade, which costs break)
    held_before = ref.weights.shift(1).fillna(0.0) != 0.0
    assert not (held_before & close.isna()).loc[ref.rebalance_days].any().any()

    # the cause: the reference's cash is minus the day's costs after each rebalance, vectorbt's is 0
    days = ref.rebalance_days
    ref_cash = 1.0 - ref.weights.loc[days].sum(axis=1)
    value_before = ref.daily["value"] / (1.0 - COST * ref.daily["turnover"])
    costs = COST * ref.daily["turnover"] * value_before
    assert np.allclose(ref_cash, -(costs / ref.daily["value"]).loc[days], rtol=1e-9, atol=1e-15)
    vbt_cash = pf.cash().loc[days] / pf.value().loc[days]
    assert vbt_cash.abs().max() < 1e-12
    fees = pf.order_records["fees"].sum() / VBT_CASH
    assert fees == pytest.approx(costs.sum(), rel=MAX_FEES_REL_DIFF)

    # the bounded difference
    daily = (pf.returns() - ref.daily["ret"]).abs()
    final = pf.value().iloc[-1] / VBT_CASH / ref.daily["value"].iloc[-1] - 1.0
    assert daily.max() < MAX_DAILY_DIFF, f"{daily.max():.3g} on {daily.idxmax().date()}"
    assert abs(final) < MAX_FINAL_REL_DIFF, f"final values differ by {final:.3g} (relative)"
    # and it is a real difference, not 0: costs do separate the two
    assert daily.max() > 1e-6
