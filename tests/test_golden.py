"""Golden numbers on real data: the S&P 500 sample (505 symbols, 2013-02-08 to 2018-02-07), frozen.

A fixed study (SMA crossover on a 3 x 3 grid, 2+1+1-year folds, 5 bps fees, top 3) is run once per module on
the real prices and its headline numbers are pinned as literals, so any change to ingestion, folds, selection,
simulation or metrics that moves a number shows up here. The numbers were inspected for plausibility when they
were frozen, and several are re-derived independently below (by hand with pandas/numpy, or with
empyrical-reloaded) from the stored prices, so the literals are not merely "whatever the code said once".

If a deliberate change moves a golden number, re-derive it, check the cross-checks still pass, and update the
literal together with the reason in the commit message.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import empyrical
import numpy as np
import pandas as pd
import pytest

from backtest.config import FoldSpec, ParamGrid, StudyConfig
from backtest.data.ingest import IngestReport, ingest_folder
from backtest.data.store import Store
from backtest.engine.planning import Universe, resolve_universe
from backtest.engine.study import StudyResult, run_study

RTOL = 1e-9  # the pipeline is deterministic: golden numbers must match to (almost) the last digit
FOLDS = FoldSpec(train_years=2, validate_years=1, test_years=1)
SMA_GRID = ParamGrid.from_mapping({"fast": [5, 10, 20], "slow": [50, 100, 150]})
FEES_BPS = 5.0
COST = FEES_BPS * 1e-4
#: the two test windows ``[start, end)`` the study's dates give: they tile 2016-02-08 .. 2018-02-07
TEST_WINDOWS = (
    (pd.Timestamp("2016-02-08"), pd.Timestamp("2017-02-08")),
    (pd.Timestamp("2017-02-08"), pd.Timestamp("2018-02-08")),
)
OOS_DAYS = 505  # trading days from 2016-02-08 to 2018-02-07


def config(strategy: str = "sma_crossover", grid: ParamGrid = SMA_GRID, **kwargs) -> StudyConfig:
    return StudyConfig(strategy=strategy, grid=grid, folds=FOLDS, fees_bps=FEES_BPS, top_k=3, **kwargs)


# -- fixtures: ingest once, run each study once --------------------------------------------------------


@pytest.fixture(scope="module")
def ingested(sp500_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, IngestReport]:
    store = Store(tmp_path_factory.mktemp("golden") / "store")
    return store, ingest_folder(sp500_dir, store, durable=False)


@pytest.fixture(scope="module")
def store(ingested: tuple[Store, IngestReport]) -> Store:
    return ingested[0]


@pytest.fixture(scope="module")
def universe(store: Store) -> Universe:
    return resolve_universe(store.catalog())


def study(store: Store, universe: Universe, cfg: StudyConfig, chunk_size=1000, workers=1) -> StudyResult:
    return run_study(cfg, universe.symbols, store.load, universe.first, universe.last, chunk_size, workers)


@pytest.fixture(scope="module")
def sma(store: Store, universe: Universe) -> StudyResult:
    return study(store, universe, config())


@pytest.fixture(scope="module")
def sma_next_open(store: Store, universe: Universe) -> StudyResult:
    return study(store, universe, config(execution="next_open"))


@pytest.fixture(scope="module")
def momentum(store: Store, universe: Universe) -> StudyResult:
    return study(
        store, universe, config("momentum", ParamGrid.from_mapping({"lookback": [20, 60, 120, 250]}))
    )


@pytest.fixture(scope="module")
def donchian(store: Store, universe: Universe) -> StudyResult:
    grid = ParamGrid.from_mapping({"window": [10, 20, 50, 100]})
    return study(store, universe, config("donchian_breakout", grid))


@pytest.fixture(scope="module")
def aapl(store: Store) -> pd.DataFrame:
    return store.load(["AAPL"]).frame("AAPL")


# -- helpers: independent re-derivations -----------------------------------------------------------------


def selected(result: StudyResult, symbol: str) -> list[tuple]:
    """(fold, combo, params...) of a symbol's selections, params as in the strategy's parameter order."""
    rows = result.selections[result.selections["symbol"] == symbol]
    cols = ["fold", "combo", *(f"param_{p}" for p in result.plan.strategy.params)]
    return [tuple(r) for r in rows[cols].itertuples(index=False)]


def metric(result: StudyResult, symbol: str, name: str) -> float:
    row = result.symbol_metrics[result.symbol_metrics["symbol"] == symbol]
    assert len(row) == 1, symbol
    return float(row[name].iloc[0])


def oos_of(result: StudyResult, symbol: str) -> pd.Series:
    oos = result.oos_returns
    rows = oos[oos["symbol"] == symbol]
    return pd.Series(rows["ret"].to_numpy(), index=pd.DatetimeIndex(rows["date"]), name=symbol)


def hand_oos(frame: pd.DataFrame, fold_weights: list[pd.Series | None], next_open: bool) -> pd.Series:
    """A symbol's stitched out-of-sample returns, written from docs/design.md section 2 without the library.

    Fold k's test days take the full-history return of fold k's weights (None: the symbol sits the fold
    out); the first test day also pays ``COST * |new - old|`` for switching from the previous fold's position
    (flat when the previous fold was sat out or there is none). At the close, a decision at t earns day t+1's
    close-to-close return; at next_open it is filled at the open of t+1 and earns open(t+1)->close(t+1), then
    close(t+1)->open(t+2). Returns are over the symbol's own bars: a missing day is skipped, never filled.
    """
    close, open_ = frame["close"], frame["open"]
    ret = close / close.shift(1) - 1.0
    gap = open_ / close.shift(1) - 1.0
    intra = close / open_ - 1.0
    lag = 2 if next_open else 1
    parts = []
    previous = None
    for (start, end), w in zip(TEST_WINDOWS, fold_weights, strict=True):
        if w is None:
            previous = None
            continue
        w1, w2 = w.shift(1, fill_value=0.0), w.shift(2, fill_value=0.0)
        if next_open:
            r = (1 + w2 * gap) * (1 - COST * (w1 - w2).abs()) * (1 + w1 * intra) - 1
        else:
            r = (1 + w1 * ret) * (1 - COST * (w - w1).abs()) - 1
        days = (frame.index >= start) & (frame.index < end)
        a = int(np.flatnonzero(days)[0])
        new = w.iloc[a - lag]
        old = 0.0 if previous is None else previous.iloc[a - lag]
        r = r[days].copy()
        r.iloc[0] = (1 + r.iloc[0]) * (1 - COST * abs(new - old)) - 1
        parts.append(r)
        previous = w
    return pd.concat(parts)


def assert_same_days(a: pd.DatetimeIndex, b: pd.DatetimeIndex) -> None:
    np.testing.assert_array_equal(a.to_numpy().astype("datetime64[D]"), b.to_numpy().astype("datetime64[D]"))


def sma_weights(close: pd.Series, fast: int, slow: int) -> pd.Series:
    fast_ma = close.rolling(fast).mean()
    slow_ma = close.rolling(slow).mean()
    return (fast_ma > slow_ma).astype(float)  # NaN (warm-up) compares False: flat


def donchian_weights(frame: pd.DataFrame, window: int) -> pd.Series:
    upper = frame["high"].shift(1).rolling(window).max()
    lower = frame["low"].shift(1).rolling(window).min()
    pos, out = 0.0, []
    for c, hi, lo in zip(frame["close"], upper, lower, strict=True):
        if not np.isnan(hi):
            if c > hi:
                pos = 1.0
            elif c < lo:
                pos = 0.0
        out.append(pos)
    return pd.Series(out, index=frame.index)


# -- ingest ------------------------------------------------------------------------------------------------


def test_ingest_totals(ingested: tuple[Store, IngestReport], universe: Universe) -> None:
    _, report = ingested
    totals = report.totals()
    assert totals["files"] == 505 and totals["added"] == 505 and totals["failed"] == 0
    assert totals["rows"] == 619_017
    assert totals["rejected_rows"] == 23 and totals["problems"] == 23
    assert totals["rows"] + totals["rejected_rows"] == 619_040  # the README's row count
    assert len(universe.symbols) == 505 and universe.rows == 619_017
    assert (universe.first, universe.last) == (dt.date(2013, 2, 8), dt.date(2018, 2, 7))


def test_folds(sma: StudyResult) -> None:
    folds = [f.to_dict() for f in sma.plan.folds]
    assert folds == [
        {
            "index": 0,
            "train_start": "2013-02-08",
            "train_end": "2015-02-08",
            "validate_start": "2015-02-08",
            "validate_end": "2016-02-08",
            "test_start": "2016-02-08",
            "test_end": "2017-02-08",
        },
        {
            "index": 1,
            "train_start": "2014-02-08",
            "train_end": "2016-02-08",
            "validate_start": "2016-02-08",
            "validate_end": "2017-02-08",
            "test_start": "2017-02-08",
            "test_end": "2018-02-08",
        },
    ]


# -- SMA crossover, fills at the close: golden numbers --------------------------------------------------


def test_sma_portfolio_golden(sma: StudyResult) -> None:
    m = sma.portfolio_metrics
    assert m["days"] == OOS_DAYS and len(sma.portfolio) == OOS_DAYS
    assert m["total_return"] == pytest.approx(0.18638884418045687, rel=RTOL)
    assert m["sharpe"] == pytest.approx(1.2726321362941402, rel=RTOL)
    assert m["max_drawdown"] == pytest.approx(-0.06459081921514834, rel=RTOL)
    assert m["cagr"] == pytest.approx(0.08903047992020552, rel=RTOL)
    assert m["sortino"] == pytest.approx(1.7109589892987314, rel=RTOL)
    assert m["annual_volatility"] == pytest.approx(0.06889715235349451, rel=RTOL)
    assert m["turnover"] == pytest.approx(4.787258538347716, rel=RTOL)
    b = sma.benchmark_metrics
    assert b["total_return"] == pytest.approx(0.4486679665046587, rel=RTOL)
    assert b["sharpe"] == pytest.approx(1.7534154612358357, rel=RTOL)
    assert b["max_drawdown"] == pytest.approx(-0.07597242209967035, rel=RTOL)


def test_sma_counts_golden(sma: StudyResult) -> None:
    sel = sma.selections
    # 505 symbols x 2 folds, less the 5 listed after fold 0's test window (APTV, BHF, BHGE, DWDP, DXC)
    assert len(sel) == 1005
    assert sel["basis"].value_counts().to_dict() == {"validation": 978, "skipped": 25, "in_sample": 2}
    assert len(sma.oos_returns) == 247_445
    assert len(sma.symbol_metrics) == 492
    skipped = sel[sel["basis"] == "skipped"]
    # every skip is a late listing: too little history in the train window to score any combination
    late = {"APTV", "BHF", "BHGE", "CSRA", "DWDP", "DXC", "EVHC", "FTV", "HLT", "HPE", "HPQ", "KHC"}
    late |= {"PYPL", "QRVO", "UA", "WLTW", "WRK"}
    assert set(skipped["symbol"]) == late
    assert sorted(sel.loc[sel["basis"] == "in_sample", "symbol"]) == ["NOV", "NRG"]
    # the portfolio holds 488 symbols on most of fold 0's days and 492 in fold 1
    assert sma.portfolio["n_symbols"].min() == 487 and sma.portfolio["n_symbols"].max() == 492
    assert sma.oos_returns["ret"].notna().all()


def test_sma_symbols_golden(sma: StudyResult) -> None:
    # (fold, combo, fast, slow, short); combos are the grid in order: (5,50), (5,100), (5,150), (10,50), ...
    assert selected(sma, "AAPL") == [(0, 5, 10.0, 150.0, 0.0), (1, 2, 5.0, 150.0, 0.0)]
    assert metric(sma, "AAPL", "sharpe") == pytest.approx(1.0393424200739567, rel=RTOL)
    assert metric(sma, "AAPL", "total_return") == pytest.approx(0.38910046572498214, rel=RTOL)
    assert selected(sma, "MSFT") == [(0, 7, 20.0, 100.0, 0.0), (1, 0, 5.0, 50.0, 0.0)]
    assert metric(sma, "MSFT", "sharpe") == pytest.approx(1.1064285309384922, rel=RTOL)
    assert selected(sma, "XOM") == [(0, 0, 5.0, 50.0, 0.0), (1, 7, 20.0, 100.0, 0.0)]
    assert metric(sma, "XOM", "sharpe") == pytest.approx(0.1024367803494861, rel=RTOL)
    # GOOG is listed from 2014-03-27 (975 rows): only part of fold 0's train window, but enough
    assert selected(sma, "GOOG") == [(0, 3, 10.0, 50.0, 0.0), (1, 8, 20.0, 150.0, 0.0)]
    assert metric(sma, "GOOG", "sharpe") == pytest.approx(0.9301437655799659, rel=RTOL)
    # KHC is listed from 2015-07-06 (655 rows): no train data in fold 0, so it sits fold 0 out
    khc = selected(sma, "KHC")
    assert khc[0][:2] == (0, -1) and all(np.isnan(v) for v in khc[0][2:])
    assert khc[1] == (1, 6, 20.0, 50.0, 0.0)
    assert metric(sma, "KHC", "days") == 252
    assert metric(sma, "KHC", "sharpe") == pytest.approx(-0.5755143357062982, rel=RTOL)
    assert metric(sma, "KHC", "total_return") == pytest.approx(-0.08685614965803568, rel=RTOL)
    assert oos_of(sma, "KHC").index.min() == TEST_WINDOWS[1][0]


# -- SMA crossover: independent cross-checks -------------------------------------------------------------


def test_aapl_sma_signal_and_oos_returns_by_hand(sma: StudyResult, aapl: pd.DataFrame) -> None:
    """AAPL's whole out-of-sample series, rebuilt with pandas rolling means from its stored closes."""
    assert len(aapl) == 1259
    weights = [sma_weights(aapl["close"], 10, 150), sma_weights(aapl["close"], 5, 150)]
    expected = hand_oos(aapl, weights, next_open=False)
    got = oos_of(sma, "AAPL")
    assert len(got) == OOS_DAYS
    assert_same_days(got.index, expected.index)
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=1e-12, atol=1e-15)
    # a spot check of the signal itself on a known day: fast 5 above slow 150 on 2017-06-01 (AAPL rising)
    close = aapl["close"]
    day = pd.Timestamp("2017-06-01")
    assert close.loc[:day].tail(5).mean() > close.loc[:day].tail(150).mean()
    assert weights[1].loc[day] == 1.0


@pytest.mark.parametrize(
    "symbol",
    [
        "MSFT",  # enters from flat on fold 0's first test day: pays the switching cost there
        "XOM",  # likewise
        "CSCO",  # long at the end of fold 0, flat under fold 1's parameters: pays to switch between folds
        "KHC",  # listed 2015-07-06: sits fold 0 out, enters at fold 1's start
        "LNT",  # a rejected row (2016-05-19, close outside low..high): the next return spans two days
        "BBY",  # likewise (2016-03-14)
    ],
)
def test_sma_oos_returns_by_hand(sma: StudyResult, store: Store, symbol: str) -> None:
    """Phase 3 for symbols that exercise switching costs, a skipped fold and gaps, from their selections."""
    frame = store.load([symbol]).frame(symbol)
    rows = sma.selections[sma.selections["symbol"] == symbol].set_index("fold")
    weights = [
        None
        if rows.loc[k, "combo"] < 0
        else sma_weights(frame["close"], *rows.loc[k, ["param_fast", "param_slow"]].astype(int))
        for k in range(len(TEST_WINDOWS))
    ]
    expected = hand_oos(frame, weights, next_open=False)
    got = oos_of(sma, symbol)
    assert_same_days(got.index, expected.index)
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=1e-12, atol=1e-15)
    assert np.prod(1.0 + expected.to_numpy()) - 1.0 == pytest.approx(
        metric(sma, symbol, "total_return"), rel=1e-10
    )


def test_aapl_selection_by_hand(sma: StudyResult, aapl: pd.DataFrame) -> None:
    """Phases 1 and 2 for AAPL: train Sharpe of all 9 combinations, top 3, best validation Sharpe among them."""
    close = aapl["close"]
    ret = close / close.shift(1) - 1.0
    combos = [(f, s) for f in (5, 10, 20) for s in (50, 100, 150)]
    windows = [("2013-02-08", "2015-02-08", "2016-02-08"), ("2014-02-08", "2016-02-08", "2017-02-08")]
    rows = sma.selections[sma.selections["symbol"] == "AAPL"].set_index("fold")
    for fold, (train_start, train_end, validate_end) in enumerate(windows):
        train_sharpe, validate_sharpe = [], []
        for fast, slow in combos:
            w = sma_weights(close, fast, slow)
            w1 = w.shift(1, fill_value=0.0)
            r = (1 + w1 * ret.fillna(0.0)) * (1 - COST * (w - w1).abs()) - 1
            train = (r.index >= train_start) & (r.index < train_end)
            validate = (r.index >= train_end) & (r.index < validate_end)
            train_sharpe.append(empyrical.sharpe_ratio(r[train].to_numpy()))
            validate_sharpe.append(empyrical.sharpe_ratio(r[validate].to_numpy()))
        top = sorted(range(len(combos)), key=lambda k: -train_sharpe[k])[:3]
        best = max(top, key=lambda k: validate_sharpe[k])
        assert rows.loc[fold, "combo"] == best
        assert rows.loc[fold, "train_rank"] == top.index(best)
        assert rows.loc[fold, "is_score"] == pytest.approx(train_sharpe[best], rel=1e-9)
        assert rows.loc[fold, "val_score"] == pytest.approx(validate_sharpe[best], rel=1e-9)


def test_aapl_metrics_recomputed(sma: StudyResult) -> None:
    r = oos_of(sma, "AAPL").to_numpy()
    assert np.prod(1.0 + r) - 1.0 == pytest.approx(metric(sma, "AAPL", "total_return"), rel=1e-12)
    assert empyrical.sharpe_ratio(r) == pytest.approx(metric(sma, "AAPL", "sharpe"), rel=1e-10)
    assert empyrical.max_drawdown(r) == pytest.approx(metric(sma, "AAPL", "max_drawdown"), rel=1e-10)


def test_every_symbols_total_return_recomputed(sma: StudyResult) -> None:
    oos = sma.oos_returns
    by_symbol = (1.0 + oos["ret"]).groupby(oos["symbol"], observed=True).prod() - 1.0
    metrics = sma.symbol_metrics.set_index("symbol")
    np.testing.assert_allclose(by_symbol.loc[metrics.index], metrics["total_return"], rtol=1e-10, atol=1e-14)
    days = oos.groupby("symbol", observed=True).size()
    np.testing.assert_array_equal(days.loc[metrics.index].to_numpy(), metrics["days"].to_numpy())


def test_portfolio_recomputed_from_oos_returns(sma: StudyResult) -> None:
    oos = sma.oos_returns
    daily = oos.groupby("date")["ret"].agg(["mean", "size"])
    pf = sma.portfolio
    np.testing.assert_array_equal(daily.index.to_numpy(), pf["date"].to_numpy())
    np.testing.assert_array_equal(daily["size"].to_numpy(), pf["n_symbols"].to_numpy())
    np.testing.assert_allclose(daily["mean"].to_numpy(), pf["ret"].to_numpy(), rtol=1e-10, atol=1e-16)
    r = daily["mean"].to_numpy()
    m = sma.portfolio_metrics
    assert np.prod(1.0 + r) - 1.0 == pytest.approx(m["total_return"], rel=1e-10)
    assert empyrical.sharpe_ratio(r) == pytest.approx(m["sharpe"], rel=1e-10)
    assert empyrical.max_drawdown(r) == pytest.approx(m["max_drawdown"], rel=1e-10)
    assert empyrical.annual_volatility(r) == pytest.approx(m["annual_volatility"], rel=1e-10)
    assert pf["equity"].iloc[-1] - 1.0 == pytest.approx(m["total_return"], rel=1e-12)


def test_benchmark_recomputed_from_stored_closes(sma: StudyResult, store: Store, universe: Universe) -> None:
    """Equal-weight buy and hold of the symbols in the portfolio each day, from the closes alone."""
    panel = store.load(list(universe.symbols))
    closes = pd.DataFrame(panel.close.T, index=pd.DatetimeIndex(panel.dates), columns=list(panel.symbols))
    long = closes.stack().dropna().rename("close")  # (date, symbol) on each symbol's own bars only
    long.index.names = ["date", "symbol"]
    bar_ret = long.groupby(level="symbol").pct_change().fillna(0.0)  # first bar: no return
    oos = sma.oos_returns
    keys = pd.MultiIndex.from_arrays(
        [pd.DatetimeIndex(oos["date"]).astype("datetime64[ns]"), oos["symbol"].astype(str)]
    )
    held = bar_ret.reindex(keys)
    assert held.notna().all()
    daily = held.groupby(level="date").mean()
    np.testing.assert_allclose(
        daily.to_numpy(), sma.portfolio["benchmark_ret"].to_numpy(), rtol=1e-12, atol=1e-15
    )
    total = np.prod(1.0 + daily.to_numpy()) - 1.0
    assert total == pytest.approx(sma.benchmark_metrics["total_return"], rel=1e-10)
    assert total == pytest.approx(0.4486679665046587, rel=RTOL)


def test_chunking_and_workers_do_not_change_results(
    sma: StudyResult, store: Store, universe: Universe
) -> None:
    other = study(store, universe, config(), chunk_size=50, workers=2)
    # per-symbol tables are bit-identical whatever the chunking
    pd.testing.assert_frame_equal(other.selections, sma.selections, check_exact=True)
    pd.testing.assert_frame_equal(other.oos_returns, sma.oos_returns, check_exact=True)
    pd.testing.assert_frame_equal(other.symbol_metrics, sma.symbol_metrics, check_exact=True)
    # cross-chunk sums (portfolio, grid heat map) add the chunks' partial sums in another order: last-ulp only
    pd.testing.assert_frame_equal(other.portfolio, sma.portfolio, check_exact=False, rtol=1e-13, atol=1e-16)
    pd.testing.assert_frame_equal(other.grid_scores, sma.grid_scores, check_exact=False, rtol=1e-13, atol=0)
    for key, value in sma.portfolio_metrics.items():
        assert other.portfolio_metrics[key] == pytest.approx(value, rel=1e-13, abs=0), key


# -- SMA crossover, fills at the next open ----------------------------------------------------------------


def test_sma_next_open_golden(sma_next_open: StudyResult) -> None:
    r = sma_next_open
    m = r.portfolio_metrics
    assert m["days"] == OOS_DAYS
    assert m["total_return"] == pytest.approx(0.19183943255786184, rel=RTOL)
    assert m["sharpe"] == pytest.approx(1.2923058236448475, rel=RTOL)
    assert m["max_drawdown"] == pytest.approx(-0.06491560147026611, rel=RTOL)
    assert len(r.selections) == 1005
    assert r.selections["basis"].value_counts().to_dict() == {
        "validation": 978,
        "skipped": 25,
        "in_sample": 2,
    }
    assert len(r.oos_returns) == 247_445 and len(r.symbol_metrics) == 492
    assert selected(r, "AAPL") == [(0, 2, 5.0, 150.0, 0.0), (1, 2, 5.0, 150.0, 0.0)]
    assert metric(r, "AAPL", "sharpe") == pytest.approx(1.2705659798028575, rel=RTOL)
    assert metric(r, "AAPL", "total_return") == pytest.approx(0.4856006796543437, rel=RTOL)
    assert selected(r, "MSFT") == [(0, 3, 10.0, 50.0, 0.0), (1, 4, 10.0, 100.0, 0.0)]
    assert metric(r, "MSFT", "sharpe") == pytest.approx(1.350303564038935, rel=RTOL)
    # the benchmark does not depend on execution: same symbols, same days, same closes
    assert r.benchmark_metrics["total_return"] == pytest.approx(0.4486679665046587, rel=RTOL)


def test_aapl_next_open_returns_by_hand(sma_next_open: StudyResult, aapl: pd.DataFrame) -> None:
    w = sma_weights(aapl["close"], 5, 150)  # the same combination in both folds
    expected = hand_oos(aapl, [w, w], next_open=True)
    got = oos_of(sma_next_open, "AAPL")
    assert_same_days(got.index, expected.index)
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=1e-12, atol=1e-15)
    assert empyrical.sharpe_ratio(got.to_numpy()) == pytest.approx(1.2705659798028575, rel=1e-10)


# -- other built-ins -------------------------------------------------------------------------------------


def test_momentum_golden_and_aapl_by_hand(momentum: StudyResult, aapl: pd.DataFrame) -> None:
    r = momentum
    m = r.portfolio_metrics
    assert m["days"] == OOS_DAYS
    assert m["total_return"] == pytest.approx(0.18537364643767518, rel=RTOL)
    assert m["sharpe"] == pytest.approx(1.3267851306043272, rel=RTOL)
    assert m["max_drawdown"] == pytest.approx(-0.061071165857988774, rel=RTOL)
    assert r.benchmark_metrics["total_return"] == pytest.approx(0.45011119072734695, rel=RTOL)
    assert len(r.selections) == 1005
    assert r.selections["basis"].value_counts().to_dict() == {
        "validation": 983,
        "skipped": 21,
        "in_sample": 1,
    }
    assert len(r.oos_returns) == 248_454 and len(r.symbol_metrics) == 495
    assert selected(r, "AAPL") == [(0, 2, 120.0), (1, 3, 250.0)]
    assert metric(r, "AAPL", "sharpe") == pytest.approx(1.4751977238692862, rel=RTOL)
    assert selected(r, "XOM") == [(0, 0, 20.0), (1, 2, 120.0)]
    assert metric(r, "XOM", "sharpe") == pytest.approx(-0.3782925055156776, rel=RTOL)

    close = aapl["close"]
    weights = [(close / close.shift(n) > 1.0).astype(float) for n in (120, 250)]
    expected = hand_oos(aapl, weights, next_open=False)
    np.testing.assert_allclose(oos_of(r, "AAPL").to_numpy(), expected.to_numpy(), rtol=1e-12, atol=1e-15)


def test_donchian_golden_and_aapl_by_hand(donchian: StudyResult, aapl: pd.DataFrame) -> None:
    r = donchian
    m = r.portfolio_metrics
    assert m["days"] == OOS_DAYS
    assert m["total_return"] == pytest.approx(0.1822488339970132, rel=RTOL)
    assert m["sharpe"] == pytest.approx(1.3299441312587343, rel=RTOL)
    assert m["max_drawdown"] == pytest.approx(-0.05741582309299906, rel=RTOL)
    assert r.benchmark_metrics["total_return"] == pytest.approx(0.4504626146100028, rel=RTOL)
    assert len(r.selections) == 1005
    assert r.selections["basis"].value_counts().to_dict() == {"validation": 985, "skipped": 20}
    assert len(r.oos_returns) == 248_706 and len(r.symbol_metrics) == 496
    assert selected(r, "AAPL") == [(0, 3, 100.0), (1, 3, 100.0)]
    assert metric(r, "AAPL", "sharpe") == pytest.approx(1.2168754011209737, rel=RTOL)
    assert selected(r, "MSFT") == [(0, 1, 20.0), (1, 3, 100.0)]
    assert metric(r, "MSFT", "sharpe") == pytest.approx(1.247172951837188, rel=RTOL)

    w = donchian_weights(aapl, 100)
    expected = hand_oos(aapl, [w, w], next_open=False)
    np.testing.assert_allclose(oos_of(r, "AAPL").to_numpy(), expected.to_numpy(), rtol=1e-12, atol=1e-15)
