"""The cross-sectional walk-forward study (docs/cross_sectional.md): scores per chunk, portfolios per block
of combinations, then the three phases on the portfolios' daily returns.

The stages are separate functions because they scale differently: scores are per symbol (``chunk_scores``,
mapped over symbol chunks), a portfolio needs every symbol on a day (``form_block``, mapped over blocks of
combinations that share a score), and the walk-forward (``walk_forward``) needs only each combination's
daily series. ``run_cross_sectional`` chains them in memory, as the flow does through files.
"""

from __future__ import annotations

import datetime as dt
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from backtest.atomic import atomic_path, write_tables
from backtest.config import ParamGrid, StudyConfig
from backtest.data.panel import PricePanel
from backtest.defaults import SPA_REPS, SPA_SEED
from backtest.engine.folds import WINDOWS, Fold, FoldLayout, check_warmup, make_folds
from backtest.engine.metrics import metrics_table
from backtest.engine.simulate_nb import METRIC_NAMES, ranges_metrics_nb
from backtest.engine.strategies import Strategy, get_strategy
from backtest.engine.study import select_top_k
from backtest.errors import ConfigError, DataError
from backtest.overfitting.trials import Overfitting, TrialMatrix, assess
from backtest.ranking import scores_nb
from backtest.ranking.portfolio import (
    CHOICES,
    CONSTRUCTION_PARAMS,
    Construction,
    Market,
    Pieces,
    bench_days,
    encode_choice,
    score_days,
    simulate,
)
from backtest.ranking.universe import membership_mask

RESULT_DATE = "datetime64[ms]"
KIND = "cross_sectional"


@dataclass(frozen=True, eq=False)
class RankingPlan:
    """A validated cross-sectional study: the strategy, every combination (score x construction), the folds.

    ``combos`` has the strategy's parameters first, then ``CONSTRUCTION_PARAMS`` (choices as codes);
    ``score_index[k]`` is the row of ``score_combos`` combination k ranks by.
    """

    config: StudyConfig
    construction: Construction
    strategy: Strategy
    score_combos: np.ndarray
    combos: np.ndarray
    score_index: np.ndarray
    folds: tuple[Fold, ...]
    universe_digest: str | None = None

    @classmethod
    def create(
        cls,
        config: StudyConfig,
        construction: Construction,
        first: dt.date,
        last: dt.date,
        universe_digest: str | None = None,
    ) -> RankingPlan:
        strategy = get_strategy(config.strategy)
        if strategy.kind != "ranking":
            raise ConfigError(f"{strategy.name} is a timing strategy, not a ranking one")
        score_axes, build_axes = split_grid(strategy, config.grid)
        _, score_combos = strategy.combinations(ParamGrid(score_axes) if score_axes else None)
        rows = construction_rows(construction, build_axes)
        combos = np.array([(*s, *b) for s, b in itertools.product(score_combos.tolist(), rows)])
        score_index = np.repeat(np.arange(len(score_combos)), len(rows))
        start = max(first, config.start) if config.start else first
        end = min(last, config.end) if config.end else last
        if start >= end:
            raise ConfigError(f"no data between {start} and {end}: check the study's start and end dates")
        folds = tuple(make_folds(start, end, config.folds))
        check_warmup(folds, strategy.warmup(score_combos), strategy.name)
        return cls(config, construction, strategy, score_combos, combos, score_index, folds, universe_digest)

    @property
    def params(self) -> tuple[str, ...]:
        return (*self.strategy.params, *CONSTRUCTION_PARAMS)

    @property
    def last_date(self) -> dt.date:
        return self.folds[-1].test_end - dt.timedelta(days=1)

    def construction_of(self, k: int) -> Construction:
        return Construction.from_row(self.combos[k, len(self.strategy.params) :])

    def score_params(self, s: int) -> dict[str, float]:
        return dict(zip(self.strategy.params, (float(v) for v in self.score_combos[s]), strict=True))

    def identity(self) -> str:
        """What the portfolios' numbers depend on beside the data: part of every cache key of the study."""
        return repr(
            (
                self.config.digest(),
                self.strategy.name,
                self.strategy.source_hash(),
                self.combos.tolist(),
                [f.to_dict() for f in self.folds],
                self.universe_digest,
            )
        )


def split_grid(
    strategy: Strategy, grid: ParamGrid | None
) -> tuple[tuple[tuple[str, tuple[float, ...]], ...], tuple[tuple[str, tuple[float, ...]], ...]]:
    """The grid's score axes and construction axes; a name that is neither is an error naming both lists."""
    if grid is None:
        return (), ()
    unknown = [n for n in grid.names if n not in strategy.params and n not in CONSTRUCTION_PARAMS]
    if unknown:
        raise ConfigError(
            f"strategy {strategy.name!r} has no parameter {', '.join(unknown)}; its parameters: "
            f"{', '.join(strategy.params) or 'none'}; portfolio parameters: {', '.join(CONSTRUCTION_PARAMS)}"
        )
    score = tuple(a for a in grid.axes if a[0] in strategy.params)
    build = tuple(a for a in grid.axes if a[0] in CONSTRUCTION_PARAMS)
    return score, build


def construction_rows(
    base: Construction, axes: Sequence[tuple[str, Sequence[float]]]
) -> list[tuple[float, ...]]:
    """Every construction of the grid's portfolio axes, the others from ``base``; each one validated."""
    names = [n for n, _ in axes]
    rows = []
    for values in itertools.product(*(v for _, v in axes)):
        row = dict(zip(CONSTRUCTION_PARAMS, base.row(), strict=True))
        given = dict(zip(names, values, strict=True))
        for name, v in given.items():
            row[name] = encode_choice(name, v) if name in CHOICES else float(v)
        if "quantile" in given and "top" not in given:
            row["top"] = 0.0  # a quantile axis replaces the default top N
        if "top" in given and "quantile" not in given:
            row["quantile"] = 0.0
        rows.append(Construction.from_row(np.array([row[n] for n in CONSTRUCTION_PARAMS])).row())
    return rows or [base.row()]


def chunk_scores(plan: RankingPlan, panel: PricePanel) -> np.ndarray:
    """Scores of a chunk's symbols for every score combination: score combinations x symbols x bars.
    A built-in strategy computes every combination in one kernel call; another is called per combination."""
    out = np.empty((len(plan.score_combos), panel.n_symbols, panel.n_bars), dtype=np.float32)
    if plan.strategy.kernel is not None:
        scores_nb.builtin_scores_nb(plan.strategy.kernel, plan.score_combos, panel.close, out)
        return out
    for s in range(len(plan.score_combos)):
        out[s] = plan.strategy.scores(panel, plan.score_params(s))
    return out


def market_of(panel: PricePanel, membership: pd.DataFrame | None = None) -> Market:
    """A whole-universe panel as a ``Market`` (with the membership mask of a universe file)."""
    member = (
        membership_mask(membership, panel.symbols, panel.dates)
        if membership is not None
        else np.zeros((0, 0), np.bool_)
    )
    return Market(panel.symbols, panel.dates, panel.close, panel.open, member)


@dataclass(frozen=True, eq=False)
class BlockResult:
    """The portfolios of a block of combinations: daily series, snapshots for phase 3, targets logged."""

    combos: np.ndarray  # combination indices
    ret: np.ndarray  # combinations x days
    turnover: np.ndarray
    n_holdings: np.ndarray
    first: np.ndarray  # first rebalance day of each
    snaps: np.ndarray  # combinations x folds x symbols: end-of-day weights the day before each test window
    log_combo: (
        np.ndarray
    )  # targets decided on the test windows' rebalance days: combination, day, symbol, weight
    log_day: np.ndarray
    log_symbol: np.ndarray
    log_weight: np.ndarray
    bench_keys: np.ndarray  # (first, rebalance) of each benchmark series
    bench_ret: np.ndarray
    bar_count: np.ndarray  # symbols with a bar, per day
    dates: np.ndarray  # the calendar, datetime64[D]

    def save(self, path: Path) -> Path:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **{name: getattr(self, name) for name in self.__dataclass_fields__})
        return path

    @classmethod
    def load(cls, path: Path) -> BlockResult:
        with np.load(path) as data:
            return cls(**{name: data[name] for name in cls.__dataclass_fields__})


def bench_key(first: int, rebalance: int) -> tuple[int, int]:
    """The benchmark of a schedule: the same rebalance days, extended back to the calendar's start, so that
    every combination on the same days (whatever its warm-up) shares one benchmark series."""
    return (first % rebalance if first >= 0 else 0, rebalance)


def fold_layout(plan: RankingPlan, dates: np.ndarray) -> FoldLayout:
    return FoldLayout.build(plan.folds, dates.astype("datetime64[D]"))


def form_block(
    plan: RankingPlan, market: Market, pieces_of: Callable[[int], Pieces], combos: Sequence[int]
) -> BlockResult:
    """Simulate the combinations ``combos`` (each over the whole calendar) and their benchmarks.

    ``pieces_of(s)`` gives score combination ``s``'s scores in pieces of the market's rows (a chunk file
    each in the flow); the combinations sharing a score are simulated together, from one ``ScoreDays``."""
    cfg = plan.config
    layout = fold_layout(plan, market.dates)
    test = layout.win_bounds[2::3]
    snap_days = np.maximum(test[:, 0] - 1, 0)
    log_mask = np.zeros(market.n_days, np.bool_)
    for lo, hi in test:
        log_mask[lo:hi] = True
    n, n_days, n_folds = len(combos), market.n_days, len(plan.folds)
    ret, turnover = np.empty((n, n_days)), np.empty((n, n_days))
    n_holdings = np.empty((n, n_days), np.int64)
    first = np.empty(n, np.int64)
    snaps = np.zeros((n, n_folds, market.n_symbols))
    logs: list[tuple[np.ndarray, ...]] = []
    benches: dict[tuple[int, int], np.ndarray] = {}
    next_open = cfg.execution == "next_open"
    position = {int(k): j for j, k in enumerate(combos)}
    by_score: dict[int, list[int]] = {}
    for k in combos:
        by_score.setdefault(int(plan.score_index[k]), []).append(int(k))
    for s, ks in by_score.items():
        builds = [plan.construction_of(k) for k in ks]
        days, firsts = score_days(market, pieces_of(s), builds)
        for k, build, f in zip(ks, builds, firsts, strict=True):
            j = position[k]
            sim = simulate(market, days, build, cfg.cost, next_open, snap_days, log_mask, first=f)
            ret[j], turnover[j], n_holdings[j], first[j] = sim.ret, sim.turnover, sim.n_holdings, sim.first
            snaps[j] = np.where((test[:, 0] > 0)[:, None], sim.snaps, 0.0)
            day, sym = np.nonzero(sim.log_targets)
            logs.append((np.full(len(day), k), sim.log_days[day], sym, sim.log_targets[day, sym]))
            key = bench_key(int(sim.first), build.rebalance)
            if key not in benches:
                bench = Construction(top=0, quantile=1.0, rebalance=build.rebalance)
                benches[key] = simulate(
                    market, bench_days(market, *key), bench, cfg.cost, next_open, first=key[0]
                ).ret
        del days
    log = (
        [np.concatenate(parts) if parts else np.zeros(0) for parts in zip(*logs, strict=True)]
        if logs
        else [np.zeros(0)] * 4
    )
    return BlockResult(
        combos=np.asarray(combos, np.int64),
        ret=ret,
        turnover=turnover,
        n_holdings=n_holdings,
        first=first,
        snaps=snaps,
        log_combo=log[0].astype(np.int64),
        log_day=log[1].astype(np.int64),
        log_symbol=log[2].astype(np.int64),
        log_weight=log[3].astype(np.float64),
        bench_keys=np.array(list(benches), np.int64).reshape(-1, 2),
        bench_ret=np.array(list(benches.values())).reshape(len(benches), n_days),
        bar_count=market.bar_count,
        dates=market.dates.astype("datetime64[D]"),
    )


@dataclass(frozen=True, eq=False)
class CrossSectionalResult:
    """The merged results of a cross-sectional study."""

    plan: RankingPlan
    selections: pd.DataFrame
    portfolio: pd.DataFrame
    holdings: pd.DataFrame
    grid_scores: pd.DataFrame
    portfolio_metrics: dict[str, float]
    benchmark_metrics: dict[str, float]
    trials: TrialMatrix
    overfitting: Overfitting
    timings: dict[str, float]

    def save(self, out: Path) -> dict[str, Path]:
        """The result tables as Parquet in ``out``, each written atomically."""
        files = {
            "selections": self.selections,
            "portfolio": self.portfolio,
            "holdings": self.holdings,
            "grid_scores": self.grid_scores,
            "trials": self.trials.to_frame(),
            "cscv": self.overfitting.splits_frame(),
        }
        return write_tables(out, files)

    def figures(self) -> dict[str, object]:
        """What summary.json says about the results (with the names the timing study's printing and
        artifacts read)."""
        sel = self.selections[self.selections["combo"] >= 0]
        port = self.portfolio
        return {
            "kind": KIND,
            "portfolio": self.portfolio_metrics,
            "benchmark": self.benchmark_metrics,
            "combinations": len(self.plan.combos),
            "folds_selected": len(sel),
            "mean_holdings": float(port["n_holdings"].mean()) if len(port) else 0.0,
            "oos_start": str(port["date"].iloc[0].date()) if len(port) else None,
            "oos_end": str(port["date"].iloc[-1].date()) if len(port) else None,
            "mean_in_sample_score": _mean(sel["is_score"]),
            "mean_validation_score": _mean(sel["val_score"]),
            "mean_test_score": _mean(sel["test_score"]),
            "mean_turnover": _mean(port["turnover"]),
            "overfitting": self.overfitting.to_dict(),
        }


def _mean(series: pd.Series) -> float | None:
    values = np.asarray(series, dtype=float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else None


def _param_columns(plan: RankingPlan, combos: np.ndarray) -> dict[str, np.ndarray]:
    """One ``param_<name>`` column per parameter (side and weighting by name; NaN / "" where none chosen)."""
    ok = combos >= 0
    safe = np.maximum(combos, 0)
    columns: dict[str, np.ndarray] = {}
    for j, name in enumerate(plan.params):
        values = plan.combos[safe, j]
        if name in CHOICES:
            names = np.array(CHOICES[name], dtype=object)[values.astype(np.int64)]
            columns[f"param_{name}"] = np.where(ok, names, None)
        else:
            columns[f"param_{name}"] = np.where(ok, values, np.nan)
    return columns


def walk_forward(
    plan: RankingPlan, symbols: Sequence[str], dates: np.ndarray, blocks: Sequence[BlockResult]
) -> CrossSectionalResult:
    """Phases 1-3 on the blocks' portfolios, the stitched out-of-sample portfolio and the statistics of luck."""
    t0 = time.perf_counter()
    cfg = plan.config
    n = len(plan.combos)
    order = np.argsort(np.concatenate([b.combos for b in blocks]), kind="stable")
    if len(order) != n:
        raise DataError(f"the blocks hold {len(order)} combinations, the study has {n}")

    def stack(name: str) -> np.ndarray:
        return np.concatenate([getattr(b, name) for b in blocks])[order]

    ret, turnover, n_holdings = stack("ret"), stack("turnover"), stack("n_holdings")
    first, snaps = stack("first"), stack("snaps")
    rebalance = plan.combos[:, plan.params.index("rebalance")].astype(np.int64)
    bench = {
        (int(a), int(b)): r for blk in blocks for (a, b), r in zip(blk.bench_keys, blk.bench_ret, strict=True)
    }
    layout = fold_layout(plan, dates)
    bounds = layout.win_bounds  # (3 x folds) x (lo, hi)
    held = (n_holdings > 0).astype(np.float64)
    metrics = np.stack(
        [
            ranges_metrics_nb(ret[k], turnover[k], held[k], bounds[:, 0].copy(), bounds[:, 1].copy())
            for k in range(n)
        ]
    )  # combinations x windows x metrics
    col = METRIC_NAMES.index
    scores = metrics[:, :, col(cfg.objective)]
    scores = np.where(
        (metrics[:, :, col("exposure")] > 0) & (metrics[:, :, col("days")] >= cfg.min_bars), scores, np.nan
    )
    trades = metrics[:, :, col("trades")]

    n_folds = len(plan.folds)
    oos_ret = np.zeros(0)
    parts: list[pd.DataFrame] = []
    rows: list[dict[str, object]] = []
    holdings: list[pd.DataFrame] = []
    prev = -1
    log_combo, log_day = (
        np.concatenate([b.log_combo for b in blocks]),
        np.concatenate([b.log_day for b in blocks]),
    )
    log_symbol, log_weight = (
        np.concatenate([b.log_symbol for b in blocks]),
        np.concatenate([b.log_weight for b in blocks]),
    )
    chosen_all = np.full(n_folds, -1, np.int64)
    for fold in plan.folds:
        f = fold.index
        # the timing study's rule, on one "symbol": the portfolio
        chosen, rank, basis = (a[0] for a in select_top_k(plan, scores[None], trades[None], f))
        chosen_all[f] = chosen
        lo, hi = layout.window_bars(f, "test")
        days = hi - lo
        c = int(chosen)
        weights_new = snaps[c, f] if c >= 0 else np.zeros(len(symbols))
        weights_old = snaps[prev, f] if prev >= 0 else np.zeros(len(symbols))
        switch = float(np.abs(weights_new - weights_old).sum()) if lo > 0 else 0.0
        if c >= 0:
            r, tv, nh = ret[c, lo:hi].copy(), turnover[c, lo:hi].copy(), n_holdings[c, lo:hi].copy()
            key = bench_key(int(first[c]), int(rebalance[c]))
        else:
            r, tv, nh = np.zeros(days), np.zeros(days), np.zeros(days, np.int64)
            key = bench_key(int(first[0]), int(rebalance[0]))
        if days:
            r[0] = (1.0 + r[0]) * (1.0 - cfg.cost * switch) - 1.0
            tv[0] += switch
        b = bench[key][lo:hi] if key in bench else np.full(days, np.nan)
        parts.append(
            pd.DataFrame(
                {
                    "date": dates[lo:hi].astype(RESULT_DATE),
                    "fold": np.full(days, f, np.int16),
                    "ret": r,
                    "n_holdings": nh,
                    "turnover": tv,
                    "benchmark_ret": b,
                }
            )
        )
        test_metrics = metrics_table(r, tv, (nh > 0).astype(np.float64))[0]
        row: dict[str, object] = {"fold": f}
        for w in WINDOWS:
            for e in ("start", "end"):
                row[f"{w}_{e}"] = pd.Timestamp(getattr(fold, f"{w}_{e}"))
        row["combo"] = c
        row.update({k: v[0] for k, v in _param_columns(plan, np.array([c])).items()})
        is_score = scores[c, 3 * f] if c >= 0 else np.nan
        val_score = scores[c, 3 * f + 1] if c >= 0 else np.nan
        row.update(
            is_score=is_score,
            val_score=val_score,
            test_score=test_metrics[col(cfg.objective)] if c >= 0 else np.nan,
            degradation=is_score - val_score,
            train_rank=int(rank) if c >= 0 else -1,
            basis=("validation" if basis == 0 else "in_sample") if c >= 0 else "skipped",
            test_return=test_metrics[col("total_return")],
            test_days=days,
            switch_turnover=switch,
        )
        rows.append(row)
        if c >= 0:
            pick = (log_combo == c) & (log_day >= lo) & (log_day < hi)
            holdings.append(
                pd.DataFrame(
                    {
                        "fold": np.full(int(pick.sum()), f, np.int16),
                        "date": dates[log_day[pick]].astype(RESULT_DATE),
                        "symbol": np.array(symbols, dtype=object)[log_symbol[pick]],
                        "weight": log_weight[pick],
                    }
                ).sort_values(["date", "weight", "symbol"], ascending=[True, False, True], kind="stable")
            )
        prev = c
    portfolio = pd.concat(parts, ignore_index=True)
    portfolio["equity"] = np.cumprod(1.0 + portfolio["ret"].to_numpy())
    portfolio["benchmark_equity"] = np.cumprod(1.0 + portfolio["benchmark_ret"].fillna(0.0).to_numpy())
    oos_ret = portfolio["ret"].to_numpy()
    p_row = metrics_table(
        oos_ret, portfolio["turnover"].to_numpy(), (portfolio["n_holdings"] > 0).to_numpy(float)
    )[0]
    b_row = metrics_table(portfolio["benchmark_ret"].to_numpy(), held=np.ones(len(portfolio)))[0]

    grid = pd.DataFrame(
        {
            "fold": np.repeat(np.arange(n_folds), 3 * 0 + 3)[None, :].repeat(n, 0).ravel().astype(np.int16),
            "window": np.tile(np.array(WINDOWS), n_folds)[None, :].repeat(n, 0).ravel(),
            "combo": np.repeat(np.arange(n, dtype=np.int32), 3 * n_folds),
            "score": scores.ravel(),
            "trades": trades.ravel().astype(np.int64),
        }
    )
    grid["mean_score"] = grid["score"]
    for name, values in _param_columns(plan, grid["combo"].to_numpy()).items():
        grid[name] = values

    lo, hi = int(bounds[0, 0]), int(bounds[-1, 1])  # the study period: first train day to last test day
    c0 = int(chosen_all[chosen_all >= 0][-1]) if (chosen_all >= 0).any() else 0
    key0 = bench_key(int(first[c0]), int(rebalance[c0]))
    bench_trials = bench.get(key0, next(iter(bench.values())))[lo:hi]
    trials = TrialMatrix(
        dates=dates[lo:hi].astype(RESULT_DATE),
        returns=np.ascontiguousarray(ret[:, lo:hi].T),
        benchmark=bench_trials,
        symbols=blocks[0].bar_count[lo:hi],
    )
    luck = assess(trials, oos_ret, cfg.pbo_blocks, SPA_REPS, SPA_SEED, "the equal-weight universe")
    selections = pd.DataFrame(rows)
    for w in WINDOWS:
        for e in ("start", "end"):
            selections[f"{w}_{e}"] = selections[f"{w}_{e}"].astype(RESULT_DATE)
    return CrossSectionalResult(
        plan=plan,
        selections=selections,
        portfolio=portfolio,
        holdings=pd.concat(holdings, ignore_index=True) if holdings else _empty_holdings(),
        grid_scores=grid,
        portfolio_metrics=dict(zip(METRIC_NAMES, map(float, p_row), strict=True)),
        benchmark_metrics=dict(zip(METRIC_NAMES, map(float, b_row), strict=True)),
        trials=trials,
        overfitting=luck,
        timings={"walk_forward": time.perf_counter() - t0},
    )


def _empty_holdings() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "fold": np.zeros(0, np.int16),
            "date": np.zeros(0, RESULT_DATE),
            "symbol": np.zeros(0, object),
            "weight": np.zeros(0),
        }
    )


def blocks_of(plan: RankingPlan, n_blocks: int) -> list[list[int]]:
    """Combinations grouped by score (a block reads one score array), the scores spread over ``n_blocks``."""
    by_score = [list(np.flatnonzero(plan.score_index == s)) for s in range(len(plan.score_combos))]
    n_blocks = max(1, min(n_blocks, len(by_score)))
    groups: list[list[int]] = [[] for _ in range(n_blocks)]
    for s, combos in enumerate(by_score):
        groups[s % n_blocks].extend(int(k) for k in combos)
    return [g for g in groups if g]


def run_cross_sectional(
    config: StudyConfig,
    construction: Construction,
    panel: PricePanel,
    membership: pd.DataFrame | None = None,
    universe_digest: str | None = None,
) -> CrossSectionalResult:
    """The whole study in memory on one panel of the whole universe (the flow runs the same stages)."""
    timings: dict[str, float] = {}
    t = time.perf_counter()
    first, last = panel.dates[0].astype(dt.date), panel.dates[-1].astype(dt.date)
    plan = RankingPlan.create(config, construction, first, last, universe_digest)
    end = np.datetime64(plan.last_date, "D")
    keep = panel.dates <= end
    if not keep.all():
        panel = PricePanel(
            symbols=panel.symbols,
            dates=panel.dates[keep],
            **{
                f: np.ascontiguousarray(getattr(panel, f)[:, keep])
                for f in ("open", "high", "low", "close", "volume")
            },
        )
    scores = chunk_scores(plan, panel)
    timings["scores"] = time.perf_counter() - t
    t = time.perf_counter()
    market = market_of(panel, membership)
    scores.flags.writeable = False  # as the flow's blocks read them, memory-mapped (one type for the kernels)
    block = form_block(plan, market, lambda s: lambda: [(0, scores[s])], list(range(len(plan.combos))))
    timings["portfolios"] = time.perf_counter() - t
    result = walk_forward(plan, panel.symbols, panel.dates, [block])
    result.timings.update(timings)
    return result
