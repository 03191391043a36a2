"""The three-phase walk-forward study (docs/design.md section 2) of a chunk of symbols, and the chunks' merge.

Phase 1 scores every combination of the grid on each fold's train window and keeps the top K per symbol;
phase 2 picks, among those K, the best on the validate window; phase 3 applies it on the test window and
stitches the test windows into one out-of-sample series per symbol. Every symbol is computed on its own bars
only and folds are fixed by dates for the whole study, so the results are the same whatever the chunking.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from backtest.atomic import write_tables
from backtest.config import OBJECTIVES, ParamGrid, StudyConfig
from backtest.data.panel import PricePanel
from backtest.defaults import SPA_REPS, SPA_SEED
from backtest.engine.folds import WINDOWS, Fold, FoldLayout, check_warmup, make_folds
from backtest.engine.heap import release_free_memory
from backtest.engine.metrics import metrics_table
from backtest.engine.simulate_nb import (
    METRIC_NAMES,
    grid_scores_nb,
    oos_layout_nb,
    oos_nb,
    ranges_metrics_nb,
    trial_days_nb,
    weights_scores_nb,
)
from backtest.engine.strategies import Strategy, get_strategy
from backtest.errors import ConfigError, DataError
from backtest.overfitting.moments_nb import ranges_moments_nb
from backtest.overfitting.sharpe import (
    deflated_sharpe,
    probabilistic_sharpe,
    sharpe_from_sums,
    trial_sharpe_variance,
)
from backtest.overfitting.trials import Overfitting, TrialMatrix, TrialSums, assess, trial_parts_frame

if TYPE_CHECKING:
    import pyarrow as pa

OBJECTIVE_IDS = {name: i for i, name in enumerate(OBJECTIVES)}
#: dates in result tables: millisecond timestamps survive a Parquet round trip unchanged
RESULT_DATE = "datetime64[ms]"


@dataclass(frozen=True, eq=False)
class StudyPlan:
    """A validated configuration resolved against the data's date range: strategy, combinations, folds."""

    config: StudyConfig
    strategy: Strategy
    grid: ParamGrid
    combos: np.ndarray
    folds: tuple[Fold, ...]

    @classmethod
    def create(cls, config: StudyConfig, first: dt.date, last: dt.date) -> StudyPlan:
        strategy = get_strategy(config.strategy)
        grid, combos = strategy.combinations(config.grid)
        start = max(first, config.start) if config.start else first
        end = min(last, config.end) if config.end else last
        if start >= end:
            raise ConfigError(
                f"no data between {start} and {end}: check the study's start and end dates against the store's"
            )
        folds = tuple(make_folds(start, end, config.folds))
        check_warmup(folds, strategy.warmup(combos), strategy.name)
        return cls(config=config, strategy=strategy, grid=grid, combos=combos, folds=folds)

    @property
    def last_date(self) -> dt.date:
        return self.folds[-1].test_end - dt.timedelta(days=1)

    def combo_params(self, k: int) -> dict[str, float]:
        return dict(zip(self.strategy.params, (float(v) for v in self.combos[k]), strict=True))


def _timed(timings: dict[str, float], name: str, start: float) -> float:
    now = time.perf_counter()
    timings[name] = timings.get(name, 0.0) + now - start
    return now


@dataclass(frozen=True, eq=False)
class ChunkResult:
    """Everything a chunk produced; small enough to persist as one file, mergeable across chunks.

    ``oos_returns`` is a DataFrame, except in a result read back from its file for streaming
    (``backtest.results.chunkio.read_chunk(..., oos_as_arrow=True)``): there it is the Arrow table of the same rows,
    which ``combine`` hands to its ``oos_sink`` untouched.
    """

    symbols: tuple[str, ...]
    selections: pd.DataFrame
    oos_returns: pd.DataFrame | pa.Table
    symbol_metrics: pd.DataFrame
    portfolio_parts: pd.DataFrame
    grid_scores: pd.DataFrame
    trial_parts: pd.DataFrame
    timings: dict[str, float] = field(default_factory=dict)

    TABLES = ("selections", "oos_returns", "symbol_metrics", "portfolio_parts", "grid_scores", "trial_parts")


@dataclass(frozen=True, eq=False)
class GridPhase:
    """Phase 1 and 2's raw material, and the trials' returns the overfitting statistics need."""

    scores: np.ndarray  # symbols x combinations x windows
    trades: np.ndarray
    trials: np.ndarray  # combinations x calendar days: sums over the chunk's symbols
    full_stats: np.ndarray  # symbols x combinations x (bars, sum, sum of squares) over the study period


def _grid_phase(plan: StudyPlan, panel: PricePanel, layout: FoldLayout) -> GridPhase:
    """Scores and trade counts of every (symbol, combination, window), and each combination's returns."""
    cfg = plan.config
    next_open = cfg.execution == "next_open"
    objective = OBJECTIVE_IDS[cfg.objective]
    n_combo = len(plan.combos)
    trials = np.zeros((n_combo, panel.n_bars))
    full = np.zeros((panel.n_symbols, n_combo, 3))
    if plan.strategy.kernel is not None:
        scores, trades = grid_scores_nb(
            plan.strategy.kernel,
            plan.combos,
            panel.open,
            panel.high,
            panel.low,
            panel.close,
            layout.seg_bounds,
            layout.win_segs,
            cfg.cost,
            next_open,
            objective,
            cfg.min_bars,
            trials,
            full,
        )
        return GridPhase(scores, trades, trials, full)
    n_win = layout.win_segs.shape[0]
    scores = np.full((panel.n_symbols, n_combo, n_win), np.nan)
    trades = np.zeros_like(scores)
    for k in range(n_combo):
        full_k = np.zeros((panel.n_symbols, 3))  # a symbol without bars leaves its row untouched: zeros
        w = plan.strategy.weights(panel, plan.combo_params(k))
        scores[:, k], trades[:, k] = weights_scores_nb(
            w,
            panel.open,
            panel.close,
            layout.seg_bounds,
            layout.win_segs,
            cfg.cost,
            next_open,
            objective,
            cfg.min_bars,
            trials[k],
            full_k,
        )
        full[:, k] = full_k
    return GridPhase(scores, trades, trials, full)


def select_top_k(
    plan: StudyPlan, scores: np.ndarray, trades: np.ndarray, fold: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Phases 1 and 2 for one fold: the chosen combination per symbol (-1: none), its rank, and the basis.

    Top K by train score (ties: earlier combination first), restricted to combinations with a finite score
    and at least ``min_trades`` trades; then the best validation score among them (ties: better train rank).
    When none of the K has a finite validation score, the best train combination is kept (basis 1).
    """
    cfg = plan.config
    n_sym = scores.shape[0]
    train = scores[:, :, 3 * fold]
    valid = scores[:, :, 3 * fold + 1]
    eligible = np.isfinite(train) & (trades[:, :, 3 * fold] >= cfg.min_trades)
    key = np.where(eligible, train, -np.inf)
    order = np.argsort(-key, axis=1, kind="stable")[:, : cfg.top_k]
    rows = np.arange(n_sym)[:, None]
    top_ok = eligible[rows, order]
    val = np.where(top_ok, valid[rows, order], np.nan)
    val_key = np.where(np.isfinite(val) | np.isposinf(val), val, -np.inf)
    best = np.argmax(val_key, axis=1)
    has_val = np.isfinite(val_key[np.arange(n_sym), best]) | np.isposinf(val_key[np.arange(n_sym), best])
    rank = np.where(has_val, best, 0)
    chosen = order[np.arange(n_sym), rank]
    basis = np.where(has_val, 0, 1)
    chosen = np.where(top_ok[:, 0], chosen, -1)
    return chosen, rank, basis


def _python_fold_weights(
    plan: StudyPlan, panel: PricePanel, chosen: np.ndarray, test_bounds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For strategies written in Python: each (symbol, fold)'s chosen weights on the bars phase 3 reads.

    Phase 3 reads a fold's weights on its test window and the two bars before it (the position carried into
    the window, and the switch from the previous fold's), and the next fold reads the last two as its
    previous position. Only that span of each symbol's own bars is kept, in one flat array: about one
    symbols x bars array in all rather than one per fold. Each distinct chosen combination is computed once.
    Returns the flat weights and ``oos_nb``'s spans (symbols x folds x (offset, first, end)).
    """
    n_sym, n_folds = chosen.shape
    own_bars = [np.flatnonzero(~np.isnan(row)) for row in panel.close]
    spans = np.zeros((n_sym, n_folds, 3), np.int64)
    for i, bars in enumerate(own_bars):
        window = np.searchsorted(bars, test_bounds)  # compact [start, end) of each test window
        spans[i, :, 1] = np.maximum(window[:, 0] - 2, 0)
        spans[i, :, 2] = np.maximum(window[:, 1], np.append(window[1:, 0], 0))  # up to the next window
    lengths = np.where(chosen >= 0, spans[:, :, 2] - spans[:, :, 1], 0)
    spans[:, :, 0] = (np.cumsum(lengths) - lengths.ravel()).reshape(n_sym, n_folds)
    weights = np.zeros(int(lengths.sum()))
    for k in np.unique(chosen[chosen >= 0]):
        w = plan.strategy.weights(panel, plan.combo_params(int(k)))
        for i, f in zip(*np.nonzero(chosen == k), strict=True):
            offset, first, end = spans[i, f]
            weights[offset : offset + end - first] = w[i, own_bars[i][first:end]]
    return weights, spans


def run_chunk(panel: PricePanel, plan: StudyPlan) -> ChunkResult:
    """All three phases for the symbols of ``panel``: the unit of work a Prefect task wraps.

    Two chunks run at once, so each chunk's working set counts twice: arrays are dropped at their last use
    (the scores before phase 3, the prices after it), and phase 3 writes straight into the compact rows the
    out-of-sample table keeps instead of symbols x bars arrays. A caller that lets go of the panel (passes
    ``load(...)`` directly) lets its prices go as soon as phase 3 is done.
    """
    timings: dict[str, float] = {}
    t = time.perf_counter()
    cfg = plan.config
    end = np.datetime64(plan.last_date, "D")
    if panel.n_bars and panel.dates[-1] > end:
        panel = _cut(panel, end)
    layout = FoldLayout.build(plan.folds, panel.dates)
    symbols, dates = panel.symbols, panel.dates
    n_sym = panel.n_symbols
    n_folds = len(plan.folds)

    grid = _grid_phase(plan, panel, layout)
    scores, trades = grid.scores, grid.trades
    day_count, bench_sum = trial_days_nb(panel.close, layout.seg_bounds)
    trial_parts = trial_parts_frame(dates.astype(RESULT_DATE), day_count, bench_sum, grid.trials)
    trial_sharpes = sharpe_from_sums(
        grid.full_stats[..., 0], grid.full_stats[..., 1], grid.full_stats[..., 2]
    )
    del grid
    t = _timed(timings, "optimise", t)

    chosen = np.full((n_sym, n_folds), -1, dtype=np.int64)
    rank = np.zeros((n_sym, n_folds), dtype=np.int64)
    basis = np.zeros((n_sym, n_folds), dtype=np.int64)
    for fold in plan.folds:
        chosen[:, fold.index], rank[:, fold.index], basis[:, fold.index] = select_top_k(
            plan, scores, trades, fold.index
        )
    del trades
    # all the tables need of the (symbols x combinations x windows) scores, taken before phase 3 runs
    safe = np.maximum(chosen, 0)
    sym_rows = np.arange(n_sym)[:, None]
    fold_cols = 3 * np.arange(n_folds)[None, :]
    is_scores = np.where(chosen >= 0, scores[sym_rows, safe, fold_cols], np.nan)
    val_scores = np.where(chosen >= 0, scores[sym_rows, safe, fold_cols + 1], np.nan)
    grid_scores = _grid_score_frame(plan, scores)
    del scores, safe
    t = _timed(timings, "select", t)

    test_bounds = np.ascontiguousarray(layout.win_bounds[2::3])
    if plan.strategy.kernel is not None:
        kind, weights, spans = plan.strategy.kernel, np.zeros(0), np.zeros((0, 0, 3), np.int64)
    else:
        kind, (weights, spans) = -1, _python_fold_weights(plan, panel, chosen, test_bounds)
    starts, test_bars = oos_layout_nb(chosen, test_bounds, panel.close)
    rows = oos_nb(
        kind,
        plan.combos,
        weights,
        spans,
        chosen,
        test_bounds,
        panel.open,
        panel.high,
        panel.low,
        panel.close,
        dates.astype(RESULT_DATE).view(np.int64),
        starts,
        cfg.cost,
        cfg.execution == "next_open",
    )
    del weights, spans, panel  # the prices: what follows needs only the symbols and the calendar
    t = _timed(timings, "test", t)

    per_fold = np.diff(starts).reshape(n_sym, n_folds)  # out-of-sample rows of each (symbol, fold)
    fold_metrics = ranges_metrics_nb(rows.ret, rows.traded, rows.held, starts[:-1], starts[1:]).reshape(
        n_sym, n_folds, len(METRIC_NAMES)
    )
    obj_col = METRIC_NAMES.index(cfg.objective)
    sel_frames: list[pd.DataFrame] = []  # appended fold by fold, then ordered by symbol
    for fold in plan.folds:
        k = fold.index
        test_metrics = fold_metrics[:, k]
        sel_frames.append(
            _selection_frame(
                plan,
                fold,
                symbols,
                is_scores[:, k],
                val_scores[:, k],
                chosen[:, k],
                rank[:, k],
                basis[:, k],
                test_metrics[:, obj_col],
                test_metrics,
                (chosen[:, k] >= 0) | (test_bars[:, k] > 0),
            )
        )
    t = _timed(timings, "select", t)

    oos_returns = pd.DataFrame(
        {
            "date": rows.date.view(RESULT_DATE),
            "symbol": pd.Categorical.from_codes(
                np.repeat(np.arange(n_sym, dtype=np.int32), per_fold.sum(axis=1)), categories=list(symbols)
            ),
            "fold": np.repeat(np.tile(np.arange(n_folds, dtype=np.int16), n_sym), per_fold.ravel()),
            "ret": rows.ret,
            "traded": rows.traded,
            "held": rows.held,
        },
        copy=False,  # the kernel's arrays: no copy, and one array per column for combine to release one by one
    )
    first_row = np.arange(n_sym) * n_folds
    metrics = ranges_metrics_nb(
        rows.ret, rows.traded, rows.held, starts[first_row], starts[first_row + n_folds]
    )
    symbol_metrics = pd.DataFrame(metrics, columns=list(METRIC_NAMES))
    symbol_metrics.insert(0, "symbol", list(symbols))
    symbol_metrics["folds"] = (per_fold > 0).sum(axis=1).astype(np.int64)  # test windows with rows
    _add_luck(symbol_metrics, rows.ret, starts[first_row], starts[first_row + n_folds], trial_sharpes)
    symbol_metrics = symbol_metrics[symbol_metrics["days"] > 0].reset_index(drop=True)

    days = rows.count > 0
    portfolio_parts = pd.DataFrame(
        {
            "date": dates[days].astype(RESULT_DATE),
            "ret_sum": rows.ret_sum[days],
            "count": rows.count[days],
            "traded_sum": rows.traded_sum[days],
            "held_sum": rows.held_sum[days],
            "bench_sum": rows.bench_sum[days],
        }
    )
    _timed(timings, "collect", t)
    return ChunkResult(
        symbols=symbols,
        selections=pd.concat(sel_frames, ignore_index=True)
        .sort_values(["sym_pos", "fold"], kind="stable")
        .drop(columns="sym_pos")
        .reset_index(drop=True),
        oos_returns=oos_returns,
        symbol_metrics=symbol_metrics,
        portfolio_parts=portfolio_parts,
        grid_scores=grid_scores,
        trial_parts=trial_parts,
        timings=timings,
    )


def _add_luck(
    metrics: pd.DataFrame, rets: np.ndarray, lo: np.ndarray, hi: np.ndarray, trial_sharpes: np.ndarray
) -> None:
    """Each symbol's probabilistic and deflated Sharpe ratio of its stitched out-of-sample series.

    The deflation uses the symbol's own trials: the grid's combinations (all tried on it), and the variance
    of their daily Sharpe ratios over the study period on that symbol's bars.
    """
    n, sharpe, skew, kurt = ranges_moments_nb(rets, lo, hi).T
    variance = trial_sharpe_variance(trial_sharpes, axis=1)
    metrics["psr"] = probabilistic_sharpe(sharpe, n, skew, kurt)
    metrics["dsr"] = deflated_sharpe(sharpe, n, skew, kurt, trial_sharpes.shape[1], variance)


def _cut(panel: PricePanel, end: np.datetime64) -> PricePanel:
    n = int(np.searchsorted(panel.dates, end, side="right"))
    return PricePanel(
        symbols=panel.symbols,
        dates=panel.dates[:n],
        **{
            f: np.ascontiguousarray(getattr(panel, f)[:, :n])
            for f in ("open", "high", "low", "close", "volume")
        },
    )


def _selection_frame(
    plan: StudyPlan,
    fold: Fold,
    symbols: Sequence[str],
    is_scores: np.ndarray,
    val_scores: np.ndarray,
    chosen: np.ndarray,
    rank: np.ndarray,
    basis: np.ndarray,
    test_score: np.ndarray,
    test_metrics: np.ndarray,
    keep: np.ndarray,
) -> pd.DataFrame:
    k = fold.index
    rows = np.flatnonzero(keep)
    ch = chosen[rows]
    ok = ch >= 0
    safe = np.maximum(ch, 0)
    is_score = is_scores[rows]  # NaN where no combination was chosen
    val_score = val_scores[rows]
    frame = pd.DataFrame(
        {
            "symbol": [symbols[i] for i in rows],
            "sym_pos": rows,
            "fold": np.full(len(rows), k, dtype=np.int16),
            **{
                f"{w}_{e}": np.full(
                    len(rows), np.datetime64(getattr(fold, f"{w}_{e}"), "D").astype(RESULT_DATE)
                )
                for w in WINDOWS
                for e in ("start", "end")
            },
            "combo": ch.astype(np.int32),
            **{
                f"param_{p}": np.where(ok, plan.combos[safe, j], np.nan)
                for j, p in enumerate(plan.strategy.params)
            },
            "is_score": is_score,
            "val_score": val_score,
            "test_score": np.where(ok, test_score[rows], np.nan),
            "degradation": is_score - val_score,
            "train_rank": np.where(ok, rank[rows], -1).astype(np.int16),
            "basis": np.where(ok, np.where(basis[rows] == 0, "validation", "in_sample"), "skipped"),
            "test_return": np.where(ok, test_metrics[rows, METRIC_NAMES.index("total_return")], np.nan),
            "test_days": np.where(ok, test_metrics[rows, 0], 0).astype(np.int32),
        }
    )
    return frame


def _grid_score_frame(plan: StudyPlan, scores: np.ndarray) -> pd.DataFrame:
    """Sum and count of finite scores per (fold, window, combination): the grid heat map, mergeable."""
    n_folds = len(plan.folds)
    finite = np.isfinite(scores)
    sums = np.where(finite, scores, 0.0).sum(axis=0)  # combos x windows
    counts = finite.sum(axis=0)
    combo, win = np.meshgrid(np.arange(len(plan.combos)), np.arange(3 * n_folds), indexing="ij")
    return pd.DataFrame(
        {
            "fold": (win // 3).ravel().astype(np.int16),
            "window": np.array(WINDOWS)[(win % 3).ravel()],
            "combo": combo.ravel().astype(np.int32),
            "score_sum": sums.ravel(),
            "score_count": counts.ravel().astype(np.int64),
        }
    )


@dataclass(frozen=True, eq=False)
class StudyResult:
    """The merged results of a whole study."""

    plan: StudyPlan
    selections: pd.DataFrame
    oos_returns: pd.DataFrame | None  # None when streamed to a file by ``combine``
    symbol_metrics: pd.DataFrame
    portfolio: pd.DataFrame
    portfolio_metrics: dict[str, float]
    benchmark_metrics: dict[str, float]
    grid_scores: pd.DataFrame
    timings: dict[str, float]
    trials: TrialMatrix
    overfitting: Overfitting

    def save(self, out: Path) -> dict[str, Path]:
        """Write the result tables as Parquet into ``out`` (atomically, file by file)."""
        files = {
            "selections": self.selections,
            **({"oos_returns": self.oos_returns} if self.oos_returns is not None else {}),
            "oos_metrics": self.symbol_metrics,
            "portfolio": self.portfolio,
            "grid_scores": self.grid_scores,
            "trials": self.trials.to_frame(),
            "cscv": self.overfitting.splits_frame(),
        }
        return write_tables(out, files)


class _OosParts:
    """The out-of-sample rows of the chunks as separate column arrays, merged column by column.

    A chunk's frame is taken apart on arrival (its columns are separate arrays, see ``run_chunk``), and each
    merged column is built with one ``np.concatenate``, after which that column's parts are dropped: the
    merge needs the merged table plus one column of slack, not two copies of the table (``pd.concat``).
    Categorical codes are remapped onto the categories in order of first appearance, as
    ``union_categoricals`` orders them.
    """

    def __init__(self) -> None:
        self.names: list[str] | None = None
        self.columns: dict[str, list[np.ndarray]] = {}
        self.categories: dict[str, dict[str, int]] = {}

    def add(self, frame: pd.DataFrame) -> None:
        if self.names is None:
            self.names = list(frame.columns)
            self.columns = {name: [] for name in self.names}
            self.categories = {
                name: {} for name in self.names if isinstance(frame[name].dtype, pd.CategoricalDtype)
            }
        elif list(frame.columns) != self.names:
            raise DataError(f"chunk results disagree on the out-of-sample columns: {list(frame.columns)}")
        for name in self.names:
            column = frame[name]
            index = self.categories.get(name)
            if index is None:
                self.columns[name].append(column.to_numpy())
                continue
            mapping = np.array([index.setdefault(c, len(index)) for c in column.cat.categories] + [-1])
            self.columns[name].append(mapping[column.cat.codes.to_numpy()])  # code -1 (missing) stays -1

    def merge(self) -> pd.DataFrame:
        data: dict[str, np.ndarray | pd.Categorical] = {}
        for name in self.names or ():
            parts = self.columns.pop(name)
            merged = np.concatenate(parts)
            parts.clear()
            release_free_memory()  # the parts' heap pages, before the next column is built beside them
            index = self.categories.get(name)
            data[name] = (
                merged if index is None else pd.Categorical.from_codes(merged, categories=list(index))
            )
        return pd.DataFrame(data, copy=False)


def combine(
    plan: StudyPlan,
    results: Iterable[ChunkResult],
    oos_sink: Callable[[pd.DataFrame | pa.Table], None] | None = None,
) -> StudyResult:
    """Merge chunk results: concatenate per-symbol tables, sum the portfolio and grid parts by key.

    ``results`` is consumed once, in universe order, so it can be a generator reading chunk files one at a
    time; with ``oos_sink`` the (large) out-of-sample returns go there chunk by chunk instead of into memory,
    as each chunk holds them (a DataFrame, or an Arrow table when read for streaming).
    """
    selections_parts: list[pd.DataFrame] = []
    metric_parts: list[pd.DataFrame] = []
    portfolio_parts: list[pd.DataFrame] = []
    grid_parts: list[pd.DataFrame] = []
    oos_parts = _OosParts() if oos_sink is None else None
    trial_sums = TrialSums(len(plan.combos))
    timings: dict[str, float] = {}
    for r in results:
        selections_parts.append(r.selections)
        metric_parts.append(r.symbol_metrics)
        portfolio_parts.append(r.portfolio_parts)
        grid_parts.append(r.grid_scores)
        trial_sums.add(r.trial_parts)
        if oos_parts is not None:
            oos = r.oos_returns
            oos_parts.add(oos if isinstance(oos, pd.DataFrame) else oos.to_pandas())
        elif oos_sink is not None:
            oos_sink(r.oos_returns)
        for key, value in r.timings.items():
            timings[key] = timings.get(key, 0.0) + value
        del r  # the caller may be streaming: keep no chunk alive beyond its parts
    if not selections_parts:
        raise DataError("no chunk results to combine")
    # chunks come in universe order and each is ordered by symbol, so concatenation keeps that order
    selections = pd.concat(selections_parts, ignore_index=True)
    symbol_metrics = pd.concat(metric_parts, ignore_index=True)
    oos = oos_parts.merge() if oos_parts is not None else None

    parts = pd.concat(portfolio_parts, ignore_index=True).groupby("date", sort=True).sum()
    portfolio = pd.DataFrame(
        {
            "date": parts.index.to_numpy(),
            "ret": (parts["ret_sum"] / parts["count"]).to_numpy(),
            "n_symbols": parts["count"].to_numpy(),
            "turnover": (parts["traded_sum"] / parts["count"]).to_numpy(),
            "gross_exposure": (parts["held_sum"] / parts["count"]).to_numpy(),
            "benchmark_ret": (parts["bench_sum"] / parts["count"]).to_numpy(),
        }
    )
    portfolio["equity"] = np.cumprod(1.0 + portfolio["ret"].to_numpy())
    portfolio["benchmark_equity"] = np.cumprod(1.0 + portfolio["benchmark_ret"].to_numpy())
    row = metrics_table(
        portfolio["ret"].to_numpy(), portfolio["turnover"].to_numpy(), portfolio["gross_exposure"].to_numpy()
    )[0]
    bench_row = metrics_table(portfolio["benchmark_ret"].to_numpy(), held=np.ones(len(portfolio)))[0]

    grid = pd.concat(grid_parts, ignore_index=True)
    grid = grid.groupby(["fold", "window", "combo"], as_index=False, sort=True)[
        ["score_sum", "score_count"]
    ].sum()
    grid["mean_score"] = grid["score_sum"] / grid["score_count"].where(grid["score_count"] > 0)
    for j, p in enumerate(plan.strategy.params):
        grid[f"param_{p}"] = plan.combos[grid["combo"].to_numpy(), j]

    t = time.perf_counter()
    trials = trial_sums.matrix()
    luck = assess(trials, portfolio["ret"].to_numpy(), plan.config.pbo_blocks, SPA_REPS, SPA_SEED)
    timings["overfitting"] = time.perf_counter() - t
    return StudyResult(
        plan=plan,
        selections=selections,
        oos_returns=oos,
        symbol_metrics=symbol_metrics,
        portfolio=portfolio,
        portfolio_metrics=dict(zip(METRIC_NAMES, map(float, row), strict=True)),
        benchmark_metrics=dict(zip(METRIC_NAMES, map(float, bench_row), strict=True)),
        grid_scores=grid,
        timings=timings,
        trials=trials,
        overfitting=luck,
    )


def chunked(symbols: Sequence[str], size: int) -> list[tuple[str, ...]]:
    if size < 1:
        raise ConfigError(f"chunk size must be at least 1, got {size}")
    return [tuple(symbols[i : i + size]) for i in range(0, len(symbols), size)]


def date_range(panel: PricePanel) -> tuple[dt.date, dt.date]:
    if panel.n_bars == 0:
        raise DataError("no prices: the panel is empty")
    return panel.dates[0].astype(dt.date), panel.dates[-1].astype(dt.date)


def run_study(
    config: StudyConfig,
    symbols: Sequence[str],
    load: Callable[[Sequence[str]], PricePanel],
    first: dt.date,
    last: dt.date,
    chunk_size: int = 100,
    workers: int = 2,
    oos_sink: Callable[[pd.DataFrame], None] | None = None,
) -> StudyResult:
    """The whole study with the core alone: chunks of symbols on a thread pool (the kernels release the GIL).

    ``load`` returns the prices of a chunk; ``first``/``last`` are the dates of the whole universe, which fix
    the folds for every chunk. The out-of-sample rows are most of a study's memory: with ``oos_sink`` they go
    to it chunk by chunk, in universe order (a Parquet writer, say), and the result's ``oos_returns`` is None.
    """
    plan = StudyPlan.create(config, first, last)

    def one(chunk: tuple[str, ...]) -> ChunkResult:
        t0 = time.perf_counter()
        loaded = [load(chunk)]
        load_seconds = time.perf_counter() - t0
        # handed over, not kept: run_chunk lets the prices go once phase 3 has run
        result = run_chunk(loaded.pop(), plan)
        result.timings["load"] = load_seconds
        return result

    chunks = chunked(list(symbols), chunk_size)
    if workers <= 1:
        return combine(plan, map(one, chunks), oos_sink=oos_sink)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # ``map`` yields in chunk order and lets go of each result once yielded, so combine takes each chunk
        # apart while the workers compute the next ones, and no finished chunk is kept whole
        return combine(plan, pool.map(one, chunks), oos_sink=oos_sink)
