"""A slow, obviously-correct reference of one cross-sectional portfolio, written from docs/cross_sectional.md.

Nothing here calls or copies ``backtest.ranking``: every step is a direct transcription of the sections
"Portfolio construction" and "Accounting" of docs/cross_sectional.md, with explicit Python loops over the
calendar's rows and the universe's symbols, ``math.fsum`` for sums and explicit windows for the volatility.
It is meant to be read next to the doc; speed is no concern beyond keeping one run over the S&P 500 sample
(505 symbols x 1259 days) to a few seconds.

Conventions (the doc's, made exact):

* **Units**: the portfolio starts with a value of 1 in cash; a position is held as its value, and each day a
  position with a bar is multiplied by ``close_t / last_close`` (its most recent earlier close, possibly before
  a gap). Cash earns nothing and can go (slightly) negative when costs are paid after a full rebalance.
* **Volatility** (``inverse_vol``): the standard deviation (ddof 1) of the last 63 close-to-close returns of
  the symbol's own bars, defined from its 64th bar on.
* **Eligible** on row t: a finite close on t, a finite score on t, a member on t, t not the symbol's last bar
  when that bar is before the calendar's last row, and for ``inverse_vol`` a finite, positive volatility.
* **Schedule**: the first rebalance is the first row with at least ``need`` eligible symbols (``top``, twice
  that for long_short; 1, or 2 for long_short, with a quantile), then every ``rebalance`` rows.
* **Selection**: the eligible symbols sorted by (-score, column position). ``long`` holds the first m;
  ``long_short`` the first m long and the last m short, m capped at n // 2.
* **Trades** (execution ``close``): at the rebalance row's close, V the value before the trades, each symbol
  with a bar is traded to ``target x scale x V``, ``scale = max(0, 1 - sum |stuck| / V)`` where the stuck
  positions are held symbols without a bar that day (they keep their value and cannot trade). Costs are
  ``cost x traded notional``, paid from cash; the day's turnover is the traded notional over V.
* **next_open**: the targets decided on row t are traded on row t + 1: the held positions with a bar move to
  the open (a missing open is the close), the trade happens at the open (V, stuck and scale taken there; a
  symbol without a bar on t + 1 is not bought), then the positions with a bar move from the open to the close.
  The turnover of that day is its traded notional (the trade plus any delisting sale at the close) over the
  value at the open before the trade.
* **Delisting**: a held symbol whose last bar is row t < the calendar's last row is sold at t's close (its
  notional counts as traded and pays costs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

VOL_WINDOW = 63
SIDES = ("long", "long_short")
WEIGHTINGS = ("equal", "score", "inverse_vol")
EXECUTIONS = ("close", "next_open")


@dataclass
class ReferenceResult:
    """One simulation.

    ``daily``: index the calendar, columns ``ret`` (the day's portfolio return), ``turnover`` (traded
    notional / value before the trades), ``n_holdings`` (nonzero positions at the end of the day) and
    ``value`` (the portfolio's value at the end of the day, starting from 1).
    ``targets``: for every rebalance (decision) day, the nonzero target weights decided that day (before the
    scaling for stuck positions), indexed by symbol.
    ``weights``: the end-of-day positions as fractions of the end-of-day value (after that day's trades).
    ``rebalance_days``: the decision days, in order.
    """

    daily: pd.DataFrame
    targets: dict[pd.Timestamp, pd.Series]
    weights: pd.DataFrame
    rebalance_days: list[pd.Timestamp]


# --- construction -------------------------------------------------------------------------------------------


def own_volatility(closes: list[float]) -> float:
    """Standard deviation (ddof 1) of the close-to-close returns of ``closes`` (consecutive own bars)."""
    returns = [closes[k] / closes[k - 1] - 1.0 for k in range(1, len(closes))]
    n = len(returns)
    if n < 2:
        return math.nan
    mean = math.fsum(returns) / n
    return math.sqrt(math.fsum((r - mean) ** 2 for r in returns) / (n - 1))


def cap_weights(weights: list[float], budget: float, cap: float) -> list[float]:
    """Cap each (positive) weight at ``cap``: the excess over the cap is spread over the uncapped weights in
    proportion to their weights, repeated until none exceeds the cap; when ``m x cap`` is below the budget
    every weight is at the cap (the rest stays in cash)."""
    m = len(weights)
    if m == 0:
        return []
    if m * cap < budget:
        return [cap] * m
    w = list(weights)
    capped = [False] * m
    while True:
        over = [k for k in range(m) if not capped[k] and w[k] > cap]
        if not over:
            return w
        excess = math.fsum(w[k] - cap for k in over)
        for k in over:
            w[k] = cap
            capped[k] = True
        free = [k for k in range(m) if not capped[k]]
        if not free:
            return w
        free_sum = math.fsum(w[k] for k in free)
        for k in free:
            w[k] = w[k] + excess * w[k] / free_sum


def leg_weights(
    leg: list[int], budget: float, weighting: str, vol: dict[int, float], cap: float
) -> list[float]:
    """Positive weights of one leg summing to ``budget`` (before the cap). ``leg`` is in rank order: the best
    long first, or the worst short first; with ``score`` weighting the first gets m, the next m - 1, ..., 1."""
    m = len(leg)
    if weighting == "equal":
        raw = [1.0] * m
    elif weighting == "score":
        raw = [float(m - k) for k in range(m)]
    else:  # inverse_vol
        raw = [1.0 / vol[i] for i in leg]
    total = math.fsum(raw)
    return cap_weights([budget * r / total for r in raw], budget, cap)


def select_targets(
    eligible: list[int],
    score_row: list[float],
    *,
    top: int,
    quantile: float,
    side: str,
    weighting: str,
    max_weight: float,
    vol: dict[int, float],
) -> dict[int, float]:
    """The target weights (symbol position -> weight, shorts negative, zeros left out) of one rebalance."""
    order = sorted(eligible, key=lambda i: (-score_row[i], i))
    n = len(order)
    m = min(top, n) if top > 0 else min(n, max(1, math.floor(quantile * n + 1e-9)))
    if side == "long_short":
        m = min(m, n // 2)
    if m == 0:
        return {}
    targets: dict[int, float] = {}
    if side == "long":
        longs = order[:m]
        for i, w in zip(longs, leg_weights(longs, 1.0, weighting, vol, max_weight), strict=True):
            targets[i] = w
    else:
        longs = order[:m]
        shorts = order[::-1][:m]  # the worst first
        for i, w in zip(longs, leg_weights(longs, 0.5, weighting, vol, max_weight), strict=True):
            targets[i] = w
        for i, w in zip(shorts, leg_weights(shorts, 0.5, weighting, vol, max_weight), strict=True):
            targets[i] = -w
    return {i: w for i, w in targets.items() if w != 0.0}


# --- the simulation -----------------------------------------------------------------------------------------


def _check_frame(name: str, frame: pd.DataFrame, close: pd.DataFrame) -> None:
    if not frame.index.equals(close.index) or list(frame.columns) != list(close.columns):
        raise ValueError(f"{name} must have the same index and columns as close")


def reference_portfolio(
    close: pd.DataFrame,
    open_: pd.DataFrame | None,
    scores: pd.DataFrame,
    member: pd.DataFrame | None = None,
    *,
    top: int = 0,
    quantile: float = 0.0,
    side: str = "long",
    weighting: str = "equal",
    max_weight: float = 1.0,
    rebalance: int = 21,
    cost: float = 0.0,
    execution: str = "close",
) -> ReferenceResult:
    """Simulate one cross-sectional portfolio over ``close``'s calendar (see the module docstring).

    ``close``, ``open_``, ``scores`` and ``member`` are indexed by date with one column per symbol (universe
    order); NaN close = no bar, NaN score = undefined, ``member`` a bool frame (None: everyone is a member),
    ``open_`` None: every open is the close. ``cost`` is a fraction of the traded notional (0.001 = 10 bps).
    """
    if side not in SIDES or weighting not in WEIGHTINGS or execution not in EXECUTIONS:
        raise ValueError(f"unknown side/weighting/execution: {side!r}, {weighting!r}, {execution!r}")
    if top <= 0 and not 0.0 < quantile <= 1.0:
        raise ValueError("give top > 0 or a quantile in (0, 1]")
    if rebalance < 1:
        raise ValueError("rebalance must be >= 1")
    _check_frame("scores", scores, close)
    if open_ is not None:
        _check_frame("open_", open_, close)
    if member is not None:
        _check_frame("member", member, close)

    dates = list(close.index)
    symbols = list(close.columns)
    n_rows, n_syms = len(dates), len(symbols)
    last_row = n_rows - 1
    c = close.to_numpy(dtype=float).tolist()
    o = open_.to_numpy(dtype=float).tolist() if open_ is not None else c
    s = scores.to_numpy(dtype=float).tolist()
    mem = member.to_numpy(dtype=bool).tolist() if member is not None else None

    bar = [[math.isfinite(x) for x in row] for row in c]  # bar[t][i]: the symbol has a bar on row t

    def has_bar(t: int, i: int) -> bool:
        return bar[t][i]

    # each symbol's own bars (rows with a close), the position of each row among them, and its last bar
    bars: list[list[int]] = [[t for t in range(n_rows) if has_bar(t, i)] for i in range(n_syms)]
    bar_number: list[dict[int, int]] = [{t: j for j, t in enumerate(rows)} for rows in bars]
    last_bar: list[int] = [rows[-1] if rows else -1 for rows in bars]

    vol_cache: dict[tuple[int, int], float] = {}

    def volatility(t: int, i: int) -> float:
        """The symbol's volatility on row t (it has a bar on t): its last 63 own returns, ending at t."""
        if (t, i) not in vol_cache:
            j = bar_number[i][t]
            if j < VOL_WINDOW:
                vol_cache[t, i] = math.nan
            else:
                window = [c[bars[i][k]][i] for k in range(j - VOL_WINDOW, j + 1)]
                vol_cache[t, i] = own_volatility(window)
        return vol_cache[t, i]

    def eligible(t: int, i: int) -> bool:
        if not has_bar(t, i) or not math.isfinite(s[t][i]):
            return False
        if mem is not None and not mem[t][i]:
            return False
        if t == last_bar[i] and last_bar[i] < last_row:
            return False
        if weighting == "inverse_vol":
            v = volatility(t, i)
            if not (math.isfinite(v) and v > 0.0):
                return False
        return True

    def eligible_on(t: int) -> list[int]:
        return [i for i in range(n_syms) if eligible(t, i)]

    # the schedule
    if top > 0:
        need = 2 * top if side == "long_short" else top
    else:
        need = 2 if side == "long_short" else 1
    first = next((t for t in range(n_rows) if len(eligible_on(t)) >= need), None)
    rebalance_rows = set(range(first, n_rows, rebalance)) if first is not None else set()

    def decide(t: int) -> dict[int, float]:
        names = eligible_on(t)
        vol = {i: volatility(t, i) for i in names} if weighting == "inverse_vol" else {}
        return select_targets(
            names,
            s[t],
            top=top,
            quantile=quantile,
            side=side,
            weighting=weighting,
            max_weight=max_weight,
            vol=vol,
        )

    pos = [0.0] * n_syms  # position values
    cash = 1.0
    last_close = [math.nan] * n_syms
    prev_value = 1.0
    stopped = False
    pending: dict[int, float] | None = None  # next_open: the targets decided yesterday, traded today

    rets: list[float] = []
    turnovers: list[float] = []
    holdings: list[float] = []
    values: list[float] = []
    weight_rows: list[list[float]] = []
    targets_out: dict[pd.Timestamp, pd.Series] = {}

    def trade(t: int, targets: dict[int, float], value: float) -> float:
        """Trade every symbol with a bar on t to its target of the tradable value; returns the notional."""
        nonlocal cash
        stuck = math.fsum(abs(pos[i]) for i in range(n_syms) if pos[i] != 0.0 and not has_bar(t, i))
        scale = max(0.0, 1.0 - stuck / value)
        notional = 0.0
        for i in range(n_syms):
            if not has_bar(t, i):
                continue
            new = targets.get(i, 0.0) * scale * value
            delta = new - pos[i]
            notional += abs(delta)
            cash -= delta
            pos[i] = new
        return notional

    for t in range(n_rows):
        if stopped:
            rets.append(math.nan)
            turnovers.append(math.nan)
            holdings.append(math.nan)
            values.append(math.nan)
            weight_rows.append([math.nan] * n_syms)
            continue

        traded = 0.0
        if pending is not None:
            # next_open: old holdings to the open, the trade at the open, then the new holdings to the close
            opens = [o[t][i] if math.isfinite(o[t][i]) else c[t][i] for i in range(n_syms)]
            for i in range(n_syms):
                if pos[i] != 0.0 and has_bar(t, i):
                    pos[i] *= opens[i] / last_close[i]
            value_before = cash + math.fsum(pos)
            if value_before <= 0.0:
                stopped = True
            else:
                traded += trade(t, pending, value_before)
                for i in range(n_syms):
                    if pos[i] != 0.0 and has_bar(t, i):
                        pos[i] *= c[t][i] / opens[i]
            pending = None
        else:
            # 1. every held symbol with a bar moves close to close (across a gap, from its last close)
            for i in range(n_syms):
                if pos[i] != 0.0 and has_bar(t, i):
                    pos[i] *= c[t][i] / last_close[i]
            value_before = cash + math.fsum(pos)
            if value_before <= 0.0:
                stopped = True
        for i in range(n_syms):
            if has_bar(t, i):
                last_close[i] = c[t][i]

        if not stopped:
            # 2. a held symbol whose history ends today (before the calendar's last day) is sold at the close
            for i in range(n_syms):
                if pos[i] != 0.0 and t == last_bar[i] and t < last_row:
                    traded += abs(pos[i])
                    cash += pos[i]
                    pos[i] = 0.0
            # 3. a rebalance: decided at today's close, traded now (close) or at the next open (next_open)
            if t in rebalance_rows:
                targets = decide(t)
                targets_out[dates[t]] = pd.Series(
                    {symbols[i]: w for i, w in sorted(targets.items())}, dtype=float
                )
                if execution == "close":
                    traded += trade(t, targets, value_before)
                elif t < last_row:
                    pending = targets
            # 4. costs on the traded notional, paid from cash
            cash -= cost * traded

        value = cash + math.fsum(pos)
        if stopped or value <= 0.0:
            stopped = True
            rets.append(math.nan)
            turnovers.append(math.nan)
            holdings.append(math.nan)
            values.append(math.nan)
            weight_rows.append([math.nan] * n_syms)
            continue
        rets.append(value / prev_value - 1.0)
        turnovers.append(traded / value_before)
        holdings.append(float(sum(1 for p in pos if p != 0.0)))
        values.append(value)
        weight_rows.append([p / value for p in pos])
        prev_value = value

    daily = pd.DataFrame(
        {"ret": rets, "turnover": turnovers, "n_holdings": holdings, "value": values}, index=close.index
    )
    weights = pd.DataFrame(np.array(weight_rows, dtype=float), index=close.index, columns=close.columns)
    return ReferenceResult(
        daily=daily,
        targets=targets_out,
        weights=weights,
        rebalance_days=[dates[t] for t in sorted(rebalance_rows)],
    )
