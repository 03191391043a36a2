"""Numba kernel of one cross-sectional portfolio: select, weight, trade on rebalance days, drift between.

The rules are docs/cross_sectional.md's ("Portfolio construction", "Accounting"), in value units from 1 in
cash. Only held symbols are touched between rebalances (a list of them is kept), so a day costs the size of
the portfolio, not of the market; a rebalance day looks at every symbol once, in a day-major row of the
scores of the days that can be rebalance days (``gather_days_nb``), eligibility already folded in: a whole
market's prices are symbol-major, and reading one day across them is a cache miss per symbol.
"""

from __future__ import annotations

import numpy as np
from numba import njit

EQUAL, SCORE, INVERSE_VOL = 0, 1, 2


@njit(nogil=True, cache=True)
def cap_weights_nb(w: np.ndarray, budget: float, cap: float) -> None:
    """Cap each (positive) weight at ``cap``, spreading the excess over the others in proportion, in place."""
    m = w.shape[0]
    if cap >= budget or m == 0:
        return
    if m * cap <= budget:
        w[:] = cap
        return
    capped = np.zeros(m, dtype=np.bool_)
    for _ in range(m):
        free = 0.0
        fixed = 0.0
        for j in range(m):
            if capped[j]:
                fixed += cap
            else:
                free += w[j]
        scale = (budget - fixed) / free
        over = False
        for j in range(m):
            if not capped[j]:
                w[j] *= scale
                if w[j] > cap * (1.0 + 1e-12):
                    over = True
        if not over:
            break
        for j in range(m):
            if not capped[j] and w[j] > cap * (1.0 + 1e-12):
                capped[j] = True
                w[j] = cap


@njit(nogil=True, cache=True)
def leg_weights_nb(
    members: np.ndarray,
    ranks_from_best: bool,
    weighting: int,
    budget: float,
    cap: float,
    vol_today: np.ndarray,
) -> np.ndarray:
    """Weights (positive, summing to ``budget``) of a leg's symbols, given best first (or worst first)."""
    m = members.shape[0]
    w = np.empty(m)
    for j in range(m):
        if weighting == SCORE:
            w[j] = m - j  # the leg's best (for shorts: its worst score) weighs m, down to 1
        elif weighting == INVERSE_VOL:
            w[j] = 1.0 / vol_today[members[j]]
        else:
            w[j] = 1.0
    total = w.sum()
    for j in range(m):
        w[j] = w[j] / total * budget
    cap_weights_nb(w, budget, cap)
    return w


@njit(nogil=True, cache=True)
def ends_nb(idx: np.ndarray, key: np.ndarray, m: int, last: bool) -> np.ndarray:
    """The first ``m`` (or, ``last``, the last ``m``, from the end) of ``idx`` ordered by ``key`` ascending,
    ties in ``idx`` order, as a full stable sort would give them.

    Only the candidates up to the m-th key are sorted: a rebalance looks at the whole market, but holds
    a few hundred symbols of thousands, and a full sort each rebalance was most of a portfolio's time.
    """
    n = key.shape[0]
    if m * 4 >= n:
        order = idx[np.argsort(key, kind="mergesort")]
        return order[:m].copy() if not last else order[n - m :][::-1].copy()
    if not last:
        thr = np.partition(key, m - 1)[m - 1]
        pick = np.flatnonzero(key <= thr)
        order = pick[np.argsort(key[pick], kind="mergesort")]
        return idx[order[:m]]
    thr = np.partition(key, n - m)[n - m]
    pick = np.flatnonzero(key >= thr)
    order = pick[np.argsort(key[pick], kind="mergesort")]
    k = order.shape[0]
    return idx[order[k - m :][::-1]]


@njit(nogil=True, cache=True)
def eligible_nb(score: float, close: float, member: bool, last_bar: int, t: int, n_bars: int) -> bool:
    """Eligible on day ``t``: a score and a bar, a member, and a history that does not end that day (before
    the calendar's last day)."""
    if np.isnan(score) or np.isnan(close) or not member:
        return False
    return not (last_bar == t and t < n_bars - 1)


@njit(nogil=True, cache=True)
def eligible_counts_nb(
    scores: np.ndarray,
    close: np.ndarray,
    member: np.ndarray,
    last_bar: np.ndarray,
    vol: np.ndarray,
    counts: np.ndarray,
) -> None:
    """Add the eligible symbols of these rows (a chunk of the market) to ``counts`` per day: row 0 all of
    them, row 1 those with a positive volatility too (``inverse_vol``; only when ``vol`` is not empty)."""
    n_sym, n_bars = scores.shape
    for i in range(n_sym):
        for t in range(n_bars):
            ok = member.shape[0] == 0 or member[i, t]
            if eligible_nb(scores[i, t], close[i, t], ok, last_bar[i], t, n_bars):
                counts[0, t] += 1
                if vol.shape[0] > 0 and vol[i, t] > 0.0:
                    counts[1, t] += 1


@njit(nogil=True, cache=True)
def gather_days_nb(
    scores: np.ndarray,
    close: np.ndarray,
    member: np.ndarray,
    last_bar: np.ndarray,
    days: np.ndarray,
    out: np.ndarray,
    first_row: int,
) -> None:
    """The scores of these rows on ``days`` into columns ``first_row...`` of the day-major ``out`` (days x
    symbols), NaN where the symbol is not eligible that day."""
    n_sym, n_bars = scores.shape
    for i in range(n_sym):
        for c in range(days.shape[0]):
            t = days[c]
            ok = member.shape[0] == 0 or member[i, t]
            s = scores[i, t]
            out[c, first_row + i] = s if eligible_nb(s, close[i, t], ok, last_bar[i], t, n_bars) else np.nan


@njit(nogil=True, cache=True)
def targets_nb(
    row: np.ndarray,
    vol_row: np.ndarray,
    top: int,
    quantile: float,
    long_short: bool,
    weighting: int,
    max_weight: float,
    target: np.ndarray,
    chosen: np.ndarray,
) -> int:
    """Target weights decided from one day's eligible scores ``row`` into ``target`` (zeroed first), the
    symbols they set in ``chosen``; returns how many."""
    n_sym = row.shape[0]
    target[:] = 0.0
    idx = np.empty(n_sym, dtype=np.int64)
    key = np.empty(n_sym)
    vol_today = np.zeros(n_sym)
    n = 0
    for i in range(n_sym):
        s = row[i]
        if np.isnan(s):
            continue
        if weighting == INVERSE_VOL:
            v = vol_row[i]
            if not (v > 0.0):
                continue
            vol_today[i] = v
        idx[n] = i
        key[n] = -float(s)
        n += 1
    if n == 0:
        return 0
    if top > 0:
        m = min(top, n)
    else:
        m = max(1, int(np.floor(quantile * n + 1e-9)))
    if long_short:
        m = min(m, n // 2)
    if m == 0:
        return 0
    budget = 0.5 if long_short else 1.0
    best = ends_nb(idx[:n], key[:n], m, False)
    w = leg_weights_nb(best, True, weighting, budget, max_weight, vol_today)
    for j in range(m):
        target[best[j]] = w[j]
        chosen[j] = best[j]
    if long_short:
        worst = ends_nb(idx[:n], key[:n], m, True)
        w = leg_weights_nb(worst, False, weighting, budget, max_weight, vol_today)
        for j in range(m):
            target[worst[j]] = -w[j]
            chosen[m + j] = worst[j]
        return 2 * m
    return m


@njit(nogil=True, cache=True)
def first_day_nb(counts: np.ndarray, need: int) -> int:
    """The first day with at least ``need`` eligible symbols (``counts`` per day), or -1."""
    for t in range(counts.shape[0]):
        if counts[t] >= need:
            return t
    return -1


@njit(nogil=True, cache=True)
def simulate_nb(
    close: np.ndarray,
    open_: np.ndarray,
    days: np.ndarray,
    col_of: np.ndarray,
    vol_days: np.ndarray,
    last_bar: np.ndarray,
    top: int,
    quantile: float,
    long_short: bool,
    weighting: int,
    max_weight: float,
    rebalance: int,
    first: int,
    cost: float,
    next_open: bool,
    snap_days: np.ndarray,
    log_mask: np.ndarray,
    ret: np.ndarray,
    turnover: np.ndarray,
    n_holdings: np.ndarray,
    snaps: np.ndarray,
    log_targets: np.ndarray,
    log_days: np.ndarray,
) -> int:
    """One portfolio over the whole calendar: daily ``ret``, ``turnover`` and ``n_holdings``.

    ``days`` holds the eligible scores (``gather_days_nb``) of the days ``col_of`` maps to its rows: every
    rebalance day, ``first`` and every ``rebalance`` days after it (-1: never); ``vol_days`` the volatility
    on those days for ``inverse_vol`` (else empty). End-of-day weights of the days ``snap_days``
    (ascending) go to the rows of ``snaps``; the targets decided on rebalance days where ``log_mask`` is set
    go to the rows of ``log_targets`` with their day in ``log_days``. Returns the rows logged.
    """
    n_sym, n_bars = close.shape
    pos = np.zeros(n_sym)  # value held in each symbol
    last_px = np.zeros(n_sym)  # its price when last valued
    held = np.empty(n_sym, dtype=np.int64)
    n_held = 0
    cash = 1.0
    value_prev = 1.0
    target = np.zeros(n_sym)
    chosen = np.empty(n_sym, dtype=np.int64)
    n_chosen = 0
    seen = np.zeros(n_sym, dtype=np.bool_)
    pending = False
    n_log = 0
    k_snap = 0
    for t in range(n_bars):
        traded_all = 0.0
        value_ref = -1.0  # the value before the day's first trade: the turnover's denominator
        fee = 0.0
        if pending:  # next_open: yesterday's targets, traded at today's open
            for h in range(n_held):
                i = held[h]
                c = close[i, t]
                if not np.isnan(c):
                    o = open_[i, t]
                    px = o if not np.isnan(o) else c
                    pos[i] *= px / last_px[i]
                    last_px[i] = px
            value = cash
            for h in range(n_held):
                value += pos[held[h]]
            cash, traded = trade_nb(
                t, True, close, open_, target, chosen, n_chosen, pos, last_px, held, n_held, seen, cash, value
            )
            n_held = _rebuild_held(pos, held)
            fee += cost * traded
            traded_all += traded
            value_ref = value
            pending = False
        # the close: every held symbol with a bar moves to it
        for h in range(n_held):
            i = held[h]
            c = close[i, t]
            if not np.isnan(c):
                pos[i] *= c / last_px[i]
                last_px[i] = c
        value = cash
        for h in range(n_held):
            value += pos[held[h]]
        traded = 0.0
        # a history that ends before the calendar's: sold at its last close
        if t < n_bars - 1:
            for h in range(n_held):
                i = held[h]
                if last_bar[i] == t and pos[i] != 0.0:
                    traded += abs(pos[i])
                    cash += pos[i]
                    pos[i] = 0.0
        is_rebalance = first >= 0 and t >= first and (t - first) % rebalance == 0
        if is_rebalance:
            c = col_of[t]
            vol_row = vol_days[c] if vol_days.shape[0] > 0 else np.empty(0)
            n_chosen = targets_nb(
                days[c], vol_row, top, quantile, long_short, weighting, max_weight, target, chosen
            )
            if log_mask[t]:
                log_targets[n_log, :] = target
                log_days[n_log] = t
                n_log += 1
            if next_open:
                pending = t + 1 < n_bars
            else:
                cash, done = trade_nb(
                    t,
                    False,
                    close,
                    open_,
                    target,
                    chosen,
                    n_chosen,
                    pos,
                    last_px,
                    held,
                    n_held,
                    seen,
                    cash,
                    value,
                )
                traded += done
        n_held = _rebuild_held(pos, held) if (is_rebalance or traded > 0.0) else n_held
        fee += cost * traded
        traded_all += traded
        if value_ref < 0.0:
            value_ref = value
        cash -= fee
        value_end = cash
        count = 0
        for h in range(n_held):
            p = pos[held[h]]
            value_end += p
            if p != 0.0:
                count += 1
        ret[t] = value_end / value_prev - 1.0 if value_prev > 0.0 else np.nan
        turnover[t] = traded_all / value_ref if value_ref > 0.0 else 0.0
        n_holdings[t] = count
        while k_snap < snap_days.shape[0] and snap_days[k_snap] == t:
            if value_end > 0.0:
                for h in range(n_held):
                    i = held[h]
                    snaps[k_snap, i] = pos[i] / value_end
            k_snap += 1
        value_prev = value_end
    return n_log


@njit(nogil=True, cache=True)
def trade_nb(
    t: int,
    at_open: bool,
    close: np.ndarray,
    open_: np.ndarray,
    target: np.ndarray,
    chosen: np.ndarray,
    n_chosen: int,
    pos: np.ndarray,
    last_px: np.ndarray,
    held: np.ndarray,
    n_held: int,
    seen: np.ndarray,
    cash: float,
    value: float,
) -> tuple[float, float]:
    """Trade every symbol with a bar on day ``t`` to ``target x value``; returns the cash and the notional.

    Only the held symbols and the ``chosen`` ones (those with a target) can trade. A held symbol without a
    bar cannot: it keeps its value, and the targets shrink by its share.
    """
    stuck = 0.0
    for h in range(n_held):
        i = held[h]
        if np.isnan(close[i, t]):
            stuck += abs(pos[i])
    scale = max(0.0, 1.0 - stuck / value) if value > 0.0 else 0.0
    traded = 0.0
    for k in range(n_held + n_chosen):
        i = held[k] if k < n_held else chosen[k - n_held]
        if seen[i]:
            continue
        seen[i] = True
        c = close[i, t]
        if np.isnan(c):
            continue
        new = target[i] * scale * value
        if new != pos[i]:
            traded += abs(new - pos[i])
            cash -= new - pos[i]
            if pos[i] == 0.0:
                o = open_[i, t]
                last_px[i] = o if at_open and not np.isnan(o) else c
            pos[i] = new
    for k in range(n_held + n_chosen):
        seen[held[k] if k < n_held else chosen[k - n_held]] = False
    return cash, traded


@njit(nogil=True, cache=True)
def _rebuild_held(pos: np.ndarray, held: np.ndarray) -> int:
    n = 0
    for i in range(pos.shape[0]):
        if pos[i] != 0.0:
            held[n] = i
            n += 1
    return n
