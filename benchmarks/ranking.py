"""The cross-sectional benchmark: the whole market ranked by ``momentum_rank`` through the flow, and on a slice
the core beside vectorbt's ``Portfolio.from_orders`` and a naive pandas rank-and-hold loop.

What the three compute on the slice, so that their speeds can be compared: every combination's portfolio over
the whole history, top N equal-weight long, rebalanced every 21 trading days from the first day with N
eligible symbols, no costs (with costs vectorbt's fee accounting differs, measured in
tests/test_ranking_oracle.py). On the slice every symbol's missing days, and the days after its history ends,
carry its last close, because a day without a bar and a delisting have conventions of their own
(docs/cross_sectional.md) that a plain pandas or vectorbt pipeline does not follow; on such prices the three
must agree on every combination's total return to 1e-9.

The flow runs on the store's prices as they are, so its figures on the slice are checked against the core's
study of the same prices in memory instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from backtest.config import ParamGrid, StudyConfig
from backtest.data.panel import PricePanel
from backtest.ranking.portfolio import Construction
from backtest.ranking.study import RankingPlan, chunk_scores, form_block, market_of, run_cross_sectional

#: the issue's grid on W: 5 lookbacks x 2 skips x 4 portfolio sizes = 40 combinations
LOOKBACKS = (21, 63, 126, 189, 252)
SKIPS = (0, 21)
TOPS_AT_W = (20, 50, 100, 200)
REBALANCE = 21
W_SYMBOLS = 4000
#: agreement of the three implementations on each combination's total return
TOLERANCE = 1e-9
#: the naive loop is slow: it runs this many of the combinations (its rate is per combination anyway)
NAIVE_COMBINATIONS = 4
VBT_CASH = 1e9  # vectorbt ignores share adjustments below 1e-12: large units keep every trade


def rank_grid(n_symbols: int) -> dict[str, list[float]]:
    """The benchmark's grid for a universe of ``n_symbols``: W's portfolio sizes scaled down for smaller
    universes, so a reduced run holds the same share of its market."""
    tops = sorted({max(1, round(t * min(n_symbols, W_SYMBOLS) / W_SYMBOLS)) for t in TOPS_AT_W})
    return {"lookback": list(LOOKBACKS), "skip": list(SKIPS), "top": [float(t) for t in tops]}


def rank_config(grid: dict[str, list[float]], fees_bps: float = 0.0) -> StudyConfig:
    return StudyConfig(strategy="momentum_rank", grid=ParamGrid.from_mapping(grid), fees_bps=fees_bps)


@dataclass(frozen=True, eq=False)
class RankSlice:
    """The comparison slice: the first symbols in name order, as stored and with their gaps filled."""

    panel: PricePanel  # as stored (the core's study and the flow)
    clean: PricePanel  # gaps filled with the last close (what all three portfolios are computed on)
    plan: RankingPlan

    @property
    def work(self) -> int:
        """Bars x combinations of every portfolio of the grid."""
        return self.clean.n_symbols * self.clean.n_bars * len(self.plan.combos)


def filled(panel: PricePanel) -> PricePanel:
    """Every price field with a missing day, and every day after a symbol's last bar, carried from its
    previous bar (before its first bar a symbol stays without prices: a late listing is no convention)."""
    fields = {}
    for name in ("open", "high", "low", "close", "volume"):
        frame = pd.DataFrame(getattr(panel, name).T).ffill()
        fields[name] = np.ascontiguousarray(frame.to_numpy().T)
    return PricePanel(symbols=panel.symbols, dates=panel.dates, **fields)


def make_rank_slice(store: Any, count: int, grid: dict[str, list[float]]) -> RankSlice:
    panel = store.load(sorted(store.symbols())[:count])
    clean = filled(panel)
    first, last = (
        clean.dates[0].astype("datetime64[D]").item(),
        clean.dates[-1].astype("datetime64[D]").item(),
    )
    plan = RankingPlan.create(rank_config(grid), Construction(rebalance=REBALANCE), first, last)
    return RankSlice(panel, clean, plan)


def core_portfolios(piece: RankSlice) -> np.ndarray:
    """Each combination's total return over the whole calendar: the core's scores and portfolio kernel."""
    panel, plan = piece.clean, piece.plan
    scores = chunk_scores(plan, panel)
    scores.flags.writeable = False
    block = form_block(
        plan, market_of(panel), lambda s: lambda: [(0, scores[s])], list(range(len(plan.combos)))
    )
    return np.prod(1.0 + block.ret, axis=1) - 1.0


def core_study(piece: RankSlice, config: StudyConfig) -> dict[str, float]:
    """The core's whole study (scores, portfolios, three phases, statistics of luck) on the stored slice."""
    result = run_cross_sectional(config, Construction(rebalance=REBALANCE), piece.panel)
    return dict(result.portfolio_metrics)


def _combo(plan: RankingPlan, k: int) -> tuple[int, int, int]:
    params = dict(zip(plan.params, plan.combos[k], strict=True))
    return int(params["lookback"]), int(params["skip"]), int(params["top"])


def _momentum(close: pd.DataFrame, lookback: int, skip: int) -> pd.DataFrame:
    return close.shift(skip) / close.shift(lookback) - 1.0


def _schedule(score: pd.DataFrame, top: int) -> list[int]:
    """Rebalance rows: the first with ``top`` eligible symbols, then every ``REBALANCE`` rows."""
    enough = np.flatnonzero(score.notna().sum(axis=1).to_numpy() >= top)
    return list(range(int(enough[0]), len(score), REBALANCE)) if len(enough) else []


def naive_portfolio(close: pd.DataFrame, lookback: int, skip: int, top: int) -> float:
    """What a pandas user writes: rank on each rebalance day, hold the top N equally, let them drift day by
    day until the next rebalance. Returns the total return."""
    score = _momentum(close, lookback, skip)
    rebalance = set(_schedule(score, top))
    cash, holdings = 1.0, pd.Series(0.0, index=close.columns)
    for t in range(len(close)):
        if t:
            holdings = holdings * (close.iloc[t] / close.iloc[t - 1]).fillna(1.0)  # not listed yet: not held
        if t in rebalance:
            value = cash + holdings.sum()
            best = score.iloc[t].dropna().sort_values(ascending=False, kind="stable").index[:top]
            holdings = pd.Series(0.0, index=close.columns)
            holdings[best] = value / len(best)
            cash = value - holdings.sum()
    return float(cash + holdings.sum() - 1.0)


def naive_portfolios(piece: RankSlice, combos: Sequence[int]) -> np.ndarray:
    close = pd.DataFrame(piece.clean.close.T, columns=list(piece.clean.symbols))
    return np.array([naive_portfolio(close, *_combo(piece.plan, k)) for k in combos])


def vectorbt_portfolios(piece: RankSlice) -> np.ndarray:
    """The grid the way vectorbt is used for it: scores and ranks in pandas, the target weights of every
    combination as ``targetpercent`` orders on rebalance days, one ``from_orders`` over all combinations,
    each a cash-sharing group of the slice's symbols."""
    import vectorbt as vbt

    plan = piece.plan
    close = pd.DataFrame(piece.clean.close.T, columns=list(piece.clean.symbols))
    n_days, n_sym, n = len(close), close.shape[1], len(plan.combos)
    size = np.full((n_days, n * n_sym), np.nan)
    for k in range(n):
        lookback, skip, top = _combo(plan, k)
        score = _momentum(close, lookback, skip)
        # ties by symbol order, as the core breaks them: rank the symbols by (-score, position)
        ranks = score.rank(axis=1, ascending=False, method="first")
        target = (ranks <= top).astype(float).div((ranks <= top).sum(axis=1).clip(lower=1), axis=0)
        rows = _schedule(score, top)
        size[rows, k * n_sym : (k + 1) * n_sym] = target.to_numpy()[rows]
    columns = pd.MultiIndex.from_product([range(n), close.columns], names=["combo", "symbol"])
    portfolio = vbt.Portfolio.from_orders(
        close=pd.DataFrame(np.tile(close.to_numpy(), (1, n)), columns=columns),
        size=pd.DataFrame(size, columns=columns),
        size_type="targetpercent",
        group_by="combo",
        cash_sharing=True,
        call_seq="auto",
        init_cash=VBT_CASH,
        freq="1D",
    )
    return portfolio.total_return().to_numpy()


def disagreement(core: np.ndarray, other: np.ndarray) -> dict[str, Any]:
    """The largest difference of total returns, and whether it is within ``TOLERANCE``."""
    if core.shape != other.shape:
        return {"max_abs_diff": float("inf"), "worst": None, "ok": False, "tolerance": TOLERANCE}
    diff = np.abs(core - other)
    diff = np.where(np.isnan(diff), np.inf, diff)
    worst = int(np.argmax(diff)) if diff.size else None
    biggest = float(diff.max(initial=0.0))
    return {"max_abs_diff": biggest, "worst": worst, "ok": biggest <= TOLERANCE, "tolerance": TOLERANCE}


def timed(fn: Callable[[], Any], repeat_budget: float = 0.0) -> tuple[Any, float]:
    """``fn()`` and its best wall time, repeated while the runs add up to less than ``repeat_budget``."""
    best, spent, value = float("inf"), 0.0, None
    for _ in range(3):
        t0 = time.perf_counter()
        value = fn()
        seconds = time.perf_counter() - t0
        best, spent = min(best, seconds), spent + seconds
        if spent >= repeat_budget:
            break
    return value, best


# ---------------------------------------------------------------------------------------------- the suite's part

Log = Callable[[str], None]
RunFlow = Callable[[Any, str], dict[str, Any]]


def flow_params(store: Any, grid: dict[str, list[float]], workers: int, out: Any, **extra: Any) -> Any:
    from flows.params import StudyParams

    return StudyParams(
        store=str(store.root),
        out=str(out),
        strategy="momentum_rank",
        grid=grid,
        rebalance=REBALANCE,
        workers=workers,
        runner="threads",
        **extra,
    )


def check_rank_run(
    run: dict[str, Any], hits: int | None, misses: int | None, core: dict[str, float] | None
) -> list[str]:
    """What misbehaved in one cross-sectional flow run: its state, its cache counts, and (with ``core``, the
    core's study of the same prices) its portfolio's figures."""
    name = run["label"]
    if run["state"] != "Completed" or not run.get("summary"):
        return [f"{name}: flow state {run['state']} ({run.get('error') or 'see summary.json'})"]
    cache = run["summary"]["cache"]
    problems = []
    if hits is not None and (
        cache.get("hits") != hits or cache.get("misses") != misses or cache.get("failed")
    ):
        problems.append(
            f"{name}: cache {cache.get('hits')} hits / {cache.get('misses')} misses / {cache.get('failed')} "
            f"failed, expected {hits} / {misses} / 0"
        )
    port = (run.get("figures") or {}).get("portfolio") or {}
    for key, value in (core or {}).items():
        if key in ("sharpe", "total_return") and not np.isclose(
            port.get(key, np.nan), value, rtol=1e-9, atol=1e-12
        ):
            problems.append(f"{name}: portfolio {key} {port.get(key)!r} differs from the core's {value!r}")
    return problems


def measure_ranking(
    store: Any, symbols: int, workers: int, slice_symbols: int, runs_dir: Any, run_flow: RunFlow, log: Log
) -> tuple[dict[str, Any], RankSlice, np.ndarray]:
    """The cross-sectional flow on the whole store cold and warm and on the slice, then the core and the naive
    loop on the slice. Returns the measurements, the slice and the core's totals (for vectorbt, later: its
    import would inflate the flow's memory)."""
    import shutil

    grid = rank_grid(symbols)
    out: dict[str, Any] = {"grid": grid}
    piece = make_rank_slice(store, slice_symbols, grid)
    n_combos = len(piece.plan.combos)
    out["combinations"] = n_combos
    log(f"ranking: momentum_rank, {n_combos} combinations {grid}, rebalance every {REBALANCE} days")
    shutil.rmtree(store.root / "cache", ignore_errors=True)
    for label in ("cold", "warm"):
        run = run_flow(flow_params(store, grid, workers, runs_dir / f"rank-{label}"), f"ranking flow {label}")
        out[label] = run
        cache = (run.get("summary") or {}).get("cache") or {}
        log(
            f"ranking: {symbols:,} symbols, {label}: {run['wall_seconds']:.2f} s ({run['state']}, "
            f"{cache.get('hits', '?')} hits / {cache.get('misses', '?')} misses), peak RSS of the process tree "
            f"{run['peak_rss_with_children_mb']:,.0f} MB"
        )
    params = flow_params(store, grid, workers, runs_dir / "rank-slice", symbols=list(piece.panel.symbols))
    out["slice_flow"] = run_flow(params, "ranking flow on the slice")
    out["slice_study"], seconds = timed(lambda: core_study(piece, rank_config(grid)), 1.0)
    out["slice_study_seconds"] = seconds
    log(
        f"ranking: the slice ({piece.clean.n_symbols} symbols): flow "
        f"{out['slice_flow']['wall_seconds']:.2f} s, core study {seconds:.2f} s"
    )
    core_tr, seconds = timed(lambda: core_portfolios(piece), 1.0)
    out["core_kernel"] = {"wall_seconds": seconds, "bars_x_combinations_per_second": piece.work / seconds}
    k = min(NAIVE_COMBINATIONS, n_combos)
    naive_tr, seconds = timed(lambda: naive_portfolios(piece, range(k)))
    work = piece.work * k / n_combos
    out["naive"] = {
        "wall_seconds": seconds,
        "combinations": k,
        "bars_x_combinations_per_second": work / seconds,
        "check": disagreement(core_tr[:k], naive_tr),
    }
    log(
        f"ranking: the slice's portfolios, core {out['core_kernel']['wall_seconds']:.3f} s; naive pandas "
        f"{seconds:.2f} s for {k} of them, total returns "
        f"{'agree' if out['naive']['check']['ok'] else 'DISAGREE'} (max diff {out['naive']['check']['max_abs_diff']:.1e})"
    )
    out["command"] = cmd = measure_command(store, grid, workers, (runs_dir / "rank-project").resolve())
    log(
        f"ranking: as a user runs it (`backtest run`, a new process and project, cold): the command "
        f"{cmd['wall_seconds']:.1f} s, its flow {cmd.get('flow_seconds') or float('nan'):.2f} s, peak RSS of its "
        f"process tree {cmd.get('peak_rss_with_children_mb') or float('nan'):,.0f} MB, its server "
        f"{cmd.get('server_rss_mb') or float('nan'):,.0f} MB"
    )
    return out, piece, core_tr


def measure_command(store: Any, grid: dict[str, list[float]], workers: int, project: Path) -> dict[str, Any]:
    """The cold study as a user runs it: ``backtest run`` in a new process and a project folder of its own
    (its imports, kernels loaded from numba's cache, the project's Prefect server, stopped afterwards), the
    cache removed first. Its memory is the peak RSS of its process tree as the run's own monitor sampled it
    (summary.json), free of this process's history, plus the server's."""
    import shutil

    from benchmarks.commands import backtest, command_env, server_rss_mb, stop_server

    shutil.rmtree(store.root / "cache", ignore_errors=True)
    args = [
        "run",
        "--store",
        str(store.root.resolve()),
        "--out",
        str(project / "out"),
        "--strategy",
        "momentum_rank",
    ]
    for name, values in grid.items():
        args += ["--param", f"{name}={','.join(f'{v:g}' for v in values)}"]
    args += ["--rebalance", str(REBALANCE), "--workers", str(workers)]
    try:
        run = backtest(args, project, project / "out", command_env())
        run["server_rss_mb"] = server_rss_mb(project)
    finally:
        stop_server(project)
    return run


def measure_ranking_vectorbt(piece: RankSlice, core_tr: np.ndarray, log: Log) -> dict[str, Any]:
    """vectorbt's portfolios of the slice, beside the core's again (the machine's speed drifts)."""
    try:
        warm = timed(lambda: vectorbt_portfolios(_first_rows(piece, 300)))[1]  # numba compiles, not counted
        _, core_seconds = timed(lambda: core_portfolios(piece), 1.0)
        totals, seconds = timed(lambda: vectorbt_portfolios(piece))
    except Exception as exc:  # an incompatible install must not hide the rest of the run
        log(f"ranking: vectorbt failed: {type(exc).__name__}: {exc}; its comparison is SKIPPED")
        return {"available": False, "reason": f"{type(exc).__name__}: {exc}"}
    run = {
        "available": True,
        "warmup_seconds": warm,
        "wall_seconds": seconds,
        "bars_x_combinations_per_second": piece.work / seconds,
        "core_beside_seconds": core_seconds,
        "core_beside_rate": piece.work / core_seconds,
        "check": disagreement(core_tr, totals),
    }
    log(
        f"ranking: vectorbt from_orders {seconds:.2f} s (core beside it {core_seconds:.3f} s); total returns "
        f"{'agree' if run['check']['ok'] else 'DISAGREE'} (max diff {run['check']['max_abs_diff']:.1e})"
    )
    return run


def _first_rows(piece: RankSlice, n: int) -> RankSlice:
    """The slice cut to its first ``n`` days and 4 symbols (a warm-up)."""
    c = piece.clean
    small = PricePanel(
        symbols=c.symbols[:4],
        dates=c.dates[:n],
        **{
            f: np.ascontiguousarray(getattr(c, f)[:4, :n]) for f in ("open", "high", "low", "close", "volume")
        },
    )
    return RankSlice(small, small, piece.plan)
