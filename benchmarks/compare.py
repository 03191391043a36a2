"""Three ways to compute the same SMA-crossover grid on the same prices: the core's fused numba kernel,
vectorbt, and the original design's per-symbol pandas function on a thread pool.

The benchmark times them side by side and checks that they agree on the total return of every (symbol,
combination) to 1e-6, because a speed ratio between programs that compute different things proves nothing.
What makes them compute the same thing:

* **Bars**: each symbol is simulated on its own bars only (the core's convention: no filled days; the return
  after a missing day spans the gap from the last close). vectorbt and pandas get each symbol's bars packed
  to the top of its column (row = the symbol's n-th bar), shorter histories padded with NaN at the end, so
  their rolling means run over exactly the bars the core's do. Dates play no part in a total return.
* **Signal**: weight 1 while SMA(fast) > SMA(slow), else 0; 0 until both means exist (NaN compares False).
* **Fill**: at the close of the signal's bar (vectorbt's ``from_signals`` default, the core's
  ``execution="close"``).
* **Ties**: where SMA(fast) equals SMA(slow) exactly (it happens: prices are whole cents), each program's
  rounding decides the signal, so it is not a difference of method. ``exact_ties`` finds those (symbol,
  combination) pairs in integer cents; the check leaves them out and reports how many there were.
* **Fees**: the core charges ``cost`` x the traded notional *before* the trade (a buy turns value V into
  V(1 - cost)); vectorbt charges its fee rate on the order's value *after* fees, so a buy with all the cash
  turns V into V / (1 + fee). A fee of ``cost / (1 - cost)`` on buys and ``cost`` on sells makes the two
  identical to rounding, which is what vectorbt is given (per element, as its ``fees`` argument allows).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd

from backtest.config import ParamGrid
from backtest.data.panel import PricePanel
from backtest.engine.simulate_nb import OBJ_TOTAL_RETURN, grid_scores_nb
from backtest.engine.strategies import get_strategy

#: agreement required between the implementations, on total returns (fractions, so 1e-6 = 0.0001 %)
TOLERANCE = 1e-6

#: SMA-crossover grids of the scaling runs, by size; every one has fast < slow and warm-up <= 390 bars
GRIDS: dict[int, dict[str, list[float]]] = {
    16: {"fast": [10, 20, 30, 40], "slow": [60, 120, 180, 240]},
    64: {"fast": list(range(5, 45, 5)), "slow": list(range(60, 220, 20))},
    100: {"fast": list(range(5, 55, 5)), "slow": list(range(60, 260, 20))},  # the study's default grid
    256: {"fast": list(range(5, 85, 5)), "slow": list(range(90, 410, 20))},
}


def sma_combos(size: int) -> np.ndarray:
    """The grid of ``size`` combinations as the kernel's parameter table (rows: fast, slow, short=0)."""
    _, combos = get_strategy("sma_crossover").combinations(ParamGrid.from_mapping(GRIDS[size]))
    if len(combos) != size:  # a grid edited into overlapping fast/slow values would silently shrink
        raise ValueError(f"grid {size} has {len(combos)} valid combinations")
    return combos


@dataclass(frozen=True, eq=False)
class CompactCloses:
    """Closes of a slice with each symbol's own bars packed to the top of its column (bars x symbols)."""

    symbols: tuple[str, ...]
    closes: np.ndarray  # float64, NaN after a symbol's last bar
    lengths: np.ndarray  # bars per symbol

    @classmethod
    def from_panel(cls, panel: PricePanel) -> CompactCloses:
        lengths = (~np.isnan(panel.close)).sum(axis=1)
        closes = np.full((int(lengths.max(initial=0)), panel.n_symbols), np.nan)
        for i in range(panel.n_symbols):
            row = panel.close[i]
            closes[: lengths[i], i] = row[~np.isnan(row)]
        return cls(symbols=panel.symbols, closes=closes, lengths=lengths)

    @property
    def bars(self) -> int:
        return int(self.lengths.sum())


def core_total_returns(panel: PricePanel, combos: np.ndarray, cost: float) -> np.ndarray:
    """Total return of every (symbol, combination) over the whole history, by the study's own grid kernel.

    One window covering every bar, objective total return: the kernel phase 1 runs on every fold's windows,
    pointed at the whole history instead.
    """
    kernel = get_strategy("sma_crossover").kernel
    assert kernel is not None
    scores, _ = grid_scores_nb(
        kernel,
        np.ascontiguousarray(combos),
        panel.open,
        panel.high,
        panel.low,
        panel.close,
        np.array([0, panel.n_bars], dtype=np.int64),
        np.array([[0, 1]], dtype=np.int64),
        cost,
        False,
        OBJ_TOTAL_RETURN,
        0,
        np.zeros((0, 0)),  # no trials' returns wanted
        np.zeros((0, 0, 0)),
    )
    return scores[:, :, 0]


def naive_symbol(frame: pd.DataFrame, combos: np.ndarray, cost: float) -> np.ndarray:
    """The original design's unit of work: one symbol's frame, every combination computed from scratch."""
    out = np.empty(len(combos))
    close = frame["close"]
    for k in range(len(combos)):
        fast = close.rolling(int(combos[k, 0])).mean()
        slow = close.rolling(int(combos[k, 1])).mean()
        weight = (fast > slow).astype(float)
        held = weight.shift(1, fill_value=0.0)
        daily = (1.0 + held * close.pct_change().fillna(0.0)) * (1.0 - cost * (weight - held).abs()) - 1.0
        out[k] = (1.0 + daily).prod() - 1.0
    return out


def naive_total_returns(panel: PricePanel, combos: np.ndarray, cost: float, workers: int) -> np.ndarray:
    """``naive_symbol`` mapped over the symbols on a thread pool, as the original design ran it."""

    def one(symbol: str) -> np.ndarray:
        return naive_symbol(panel.frame(symbol), combos, cost)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        rows = list(pool.map(one, panel.symbols))
    return np.vstack(rows) if rows else np.empty((0, len(combos)))


def vectorbt_total_returns(data: CompactCloses, combos: np.ndarray, cost: float) -> np.ndarray:
    """The grid the way vectorbt is used for it: ``MA.run`` over the distinct windows, the crossover state
    as entries and exits, one ``Portfolio.from_signals`` over all (combination, symbol) columns."""
    import vectorbt as vbt

    closes = data.closes
    n_bars, n_sym = closes.shape
    index = pd.RangeIndex(n_bars, name="bar")
    close = pd.DataFrame(closes, index=index, columns=pd.Index(data.symbols, name="symbol"))
    windows = sorted({int(v) for v in combos[:, :2].ravel()})
    ma = vbt.MA.run(close, window=windows).ma.to_numpy().reshape(n_bars, len(windows), n_sym)
    where = {w: i for i, w in enumerate(windows)}
    above = np.concatenate(
        [ma[:, where[int(f)]] > ma[:, where[int(s)]] for f, s in combos[:, :2]], axis=1
    )  # bars x (combination, symbol)
    valid = np.tile(~np.isnan(closes), (1, len(combos)))
    columns = pd.MultiIndex.from_product([range(len(combos)), data.symbols], names=["combo", "symbol"])
    portfolio = vbt.Portfolio.from_signals(
        pd.DataFrame(np.tile(closes, (1, len(combos))), index=index, columns=columns),
        entries=pd.DataFrame(above, index=index, columns=columns),
        exits=pd.DataFrame(~above & valid, index=index, columns=columns),
        fees=np.where(above, cost / (1.0 - cost), cost),
        init_cash=100.0,
        freq="1D",
    )
    total = portfolio.total_return().to_numpy()
    return total.reshape(len(combos), n_sym).T


def vectorbt_version() -> str | None:
    """vectorbt's version, or None when it is not installed (the ``bench`` extra)."""
    try:
        import vectorbt as vbt
    except ImportError:
        return None
    return str(vbt.__version__)


def warm_up_vectorbt() -> float:
    """Compile vectorbt's numba functions on a tiny input, so compile time is not counted against it."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    tiny = CompactCloses(
        symbols=("A", "B"),
        closes=100.0 * np.exp(np.cumsum(rng.normal(0, 0.01, (300, 2)), axis=0)),
        lengths=np.array([300, 300]),
    )
    vectorbt_total_returns(tiny, sma_combos(16)[:2], 0.001)
    return time.perf_counter() - t0


def exact_ties(data: CompactCloses, combos: np.ndarray) -> np.ndarray:
    """(symbols x combinations) True where the two means are exactly equal on some bar where both exist.

    Sums of whole cents are exact in int64, so ``sum_fast * slow == sum_slow * fast`` is an exact test. Prices
    that are not whole cents cannot be tested this way: then nothing is marked (and nothing excluded).
    """
    closes = data.closes
    ties = np.zeros((closes.shape[1], len(combos)), dtype=bool)
    valid = ~np.isnan(closes)
    cents = np.rint(np.where(valid, closes, 0.0) * 100.0)
    if not np.allclose(cents[valid] / 100.0, closes[valid], rtol=0.0, atol=1e-9):
        return ties
    sums = np.vstack([np.zeros((1, closes.shape[1]), np.int64), np.cumsum(cents.astype(np.int64), axis=0)])
    for k, (fast, slow) in enumerate(combos[:, :2].astype(np.int64)):
        if slow > closes.shape[0]:
            continue
        s_fast = sums[slow:] - sums[slow - fast : -fast]
        s_slow = sums[slow:] - sums[:-slow]
        both = valid[slow - 1 :]  # the window ending on bar j is all real bars when bar j is
        ties[:, k] = ((s_fast * slow == s_slow * fast) & both).any(axis=0)
    return ties


@dataclass(frozen=True)
class Agreement:
    """How far one implementation's total returns are from the core's."""

    name: str
    compared: int
    excluded_ties: int
    max_abs_diff: float
    worst: tuple[str, int] | None  # (symbol, combination index) of the largest difference
    ok: bool

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "compared": self.compared,
            "excluded_ties": self.excluded_ties,
            "max_abs_diff": self.max_abs_diff,
            "worst": list(self.worst) if self.worst else None,
            "tolerance": TOLERANCE,
            "ok": self.ok,
        }


def agreement(
    name: str, symbols: Sequence[str], core: np.ndarray, other: np.ndarray, ties: np.ndarray
) -> Agreement:
    """Outside exact ties, both must be NaN in the same places and within ``TOLERANCE`` everywhere else."""
    if core.shape != other.shape or ties.shape != core.shape:
        return Agreement(name, 0, 0, float("inf"), None, False)
    both_nan = np.isnan(core) & np.isnan(other)
    diff = np.where(both_nan, 0.0, np.abs(core - other))
    diff = np.where(np.isnan(diff), np.inf, diff)
    diff[ties] = 0.0
    compared, excluded = int(diff.size - ties.sum()), int(ties.sum())
    if compared == 0:
        return Agreement(name, 0, excluded, 0.0, None, diff.size == 0)
    i, k = np.unravel_index(int(np.argmax(diff)), diff.shape)
    worst = float(diff[i, k])
    return Agreement(name, compared, excluded, worst, (symbols[i], int(k)), worst <= TOLERANCE)
