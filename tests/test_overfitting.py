"""The statistics of luck (docs/design.md section 7) against independent calculations, and their properties."""

import itertools
import math
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest
from arch.bootstrap import SPA
from scipy import stats

from backtest.config import ConfigError, FoldSpec, ParamGrid, StudyConfig
from backtest.engine.simulate_nb import simulate_nb
from backtest.engine.strategies import register, strategy_from_function
from backtest.engine.study import date_range, run_study
from backtest.overfitting.cscv import cscv, halvings
from backtest.overfitting.sharpe import (
    deflated_sharpe,
    expected_max_sharpe,
    probabilistic_sharpe,
    sharpe_from_sums,
    trial_sharpe_variance,
)
from backtest.overfitting.snooping import spa_test
from backtest.overfitting.trials import TrialSums, series_moments, trial_parts_frame
from tests.panels import random_panel

PHI = NormalDist().cdf

# --- the probabilistic and deflated Sharpe ratios -----------------------------------------------------------


def test_psr_of_normal_returns_by_hand():
    """Normal returns (skewness 0, kurtosis 3): PSR = Phi(SR sqrt(T - 1) / sqrt(1 + SR^2 / 2))."""
    sr, t = 0.1, 253
    z = sr * math.sqrt(t - 1) / math.sqrt(1 + sr * sr / 2)
    assert probabilistic_sharpe(sr, t, 0.0, 3.0) == pytest.approx(PHI(z), abs=1e-14)
    assert probabilistic_sharpe(sr, t, 0.0, 3.0) == pytest.approx(0.94335, abs=1e-5)  # tables: Phi(1.5835)
    # against a benchmark Sharpe equal to the observed one: a coin toss
    assert probabilistic_sharpe(sr, t, -1.0, 8.0, benchmark=sr) == pytest.approx(0.5, abs=1e-15)


def test_psr_penalises_negative_skew_and_fat_tails():
    base = probabilistic_sharpe(0.08, 500, 0.0, 3.0)
    assert probabilistic_sharpe(0.08, 500, -2.0, 3.0) < base
    assert probabilistic_sharpe(0.08, 500, 0.0, 12.0) < base


def test_deflated_sharpe_worked_example_of_the_paper():
    """Bailey and Lopez de Prado (2014), "The Deflated Sharpe Ratio", section 5: 100 trials with an annualised
    Sharpe variance of 1/2, the best at an annualised 2.5 over 5 years of daily returns (250 a year), skewness
    -3, kurtosis 10: SR* = 0.1132 (daily) and DSR = 0.9004."""
    sr, variance = 2.5 / math.sqrt(250), 0.5 / 250
    assert expected_max_sharpe(100, variance) == pytest.approx(0.1132, abs=5e-5)
    assert deflated_sharpe(sr, 1250, -3.0, 10.0, 100, variance) == pytest.approx(0.9004, abs=5e-5)


def test_expected_max_sharpe_by_hand_and_against_simulation():
    gamma = 0.5772156649015329
    inv = NormalDist().inv_cdf
    n, v = 50, 0.04
    by_hand = math.sqrt(v) * ((1 - gamma) * inv(1 - 1 / n) + gamma * inv(1 - 1 / (n * math.e)))
    assert expected_max_sharpe(n, v) == pytest.approx(by_hand, rel=1e-12)
    # the expected maximum of n independent N(0, v) draws, within the approximation's few per cent
    draws = np.random.default_rng(0).normal(0, math.sqrt(v), size=(20_000, n)).max(axis=1)
    assert expected_max_sharpe(n, v) == pytest.approx(draws.mean(), rel=0.03)
    assert expected_max_sharpe(1, v) == 0.0  # one trial: no multiple testing
    assert deflated_sharpe(0.1, 300, 0.0, 3.0, 1, v) == probabilistic_sharpe(0.1, 300, 0.0, 3.0)


def test_sharpe_helpers_and_undefined_values():
    r = np.random.default_rng(1).normal(0.001, 0.01, size=(400, 3))
    got = sharpe_from_sums(np.full(3, 400.0), r.sum(0), (r * r).sum(0))
    np.testing.assert_allclose(got, r.mean(0) / r.std(0, ddof=1), rtol=1e-10)
    assert np.isnan(sharpe_from_sums(np.array([5.0]), np.array([0.0]), np.array([0.0])))[0]
    assert trial_sharpe_variance(np.array([0.1, np.nan, 0.3])) == pytest.approx(0.02)
    assert np.isnan(trial_sharpe_variance(np.array([0.1, np.nan])))
    assert np.isnan(probabilistic_sharpe(0.1, 1, 0.0, 3.0))  # one day
    assert np.isnan(probabilistic_sharpe(np.nan, 100, 0.0, 3.0))
    assert np.isnan(probabilistic_sharpe(1.0, 100, 10.0, 3.0))  # the variance term is negative


def test_series_moments_match_scipy():
    r = np.random.default_rng(2).standard_t(4, size=700) * 0.01 + 0.0004
    r[[3, 50]] = np.nan
    n, sharpe, skew, kurt = series_moments(r)
    x = r[~np.isnan(r)]
    assert n == 698
    assert sharpe == pytest.approx(x.mean() / x.std(ddof=1), rel=1e-12)
    assert skew == pytest.approx(stats.skew(x, bias=True), rel=1e-10)
    assert kurt == pytest.approx(stats.kurtosis(x, fisher=False, bias=True), rel=1e-10)
    assert np.isnan(series_moments(np.zeros(10))[1])  # no dispersion


# --- CSCV and the PBO ----------------------------------------------------------------------------------------


def reference_cscv(returns: np.ndarray, blocks: int) -> tuple[float, list[float]]:
    """The definition, halving by halving, with pandas: slow and obviously right."""
    t, n = returns.shape
    bounds = np.linspace(0, t, blocks + 1).round().astype(int)
    parts = [pd.DataFrame(returns[bounds[b] : bounds[b + 1]]) for b in range(blocks)]
    logits = []
    for chosen in itertools.combinations(range(blocks), blocks // 2):
        ins = pd.concat([parts[b] for b in chosen])
        outs = pd.concat([parts[b] for b in range(blocks) if b not in chosen])
        sr_in = ins.mean() / ins.std(ddof=1)
        sr_out = outs.mean() / outs.std(ddof=1)
        best = int(sr_in.to_numpy().argmax())
        rank = sr_out.rank(method="average").iloc[best]  # 1 = worst
        w = rank / (n + 1)
        logits.append(math.log(w / (1 - w)))
    return float(np.mean(np.array(logits) <= 0)), logits


@pytest.mark.parametrize(("t", "n", "blocks", "seed"), [(64, 5, 8, 0), (101, 7, 6, 1), (40, 2, 4, 2)])
def test_cscv_matches_the_definition(t, n, blocks, seed):
    r = np.random.default_rng(seed).normal(0.0005, 0.01, size=(t, n))
    got = cscv(r, blocks)
    pbo, logits = reference_cscv(r, blocks)
    assert got.splits == math.comb(blocks, blocks // 2)
    np.testing.assert_allclose(got.logits, logits, rtol=1e-12)
    assert got.pbo == pbo


def test_cscv_by_hand_anti_persistent_and_persistent():
    """Two trials, two blocks. Each trial is the best on one half and the worst on the other: the in-sample
    winner always comes last out of sample, rank 1 of 2, w = 1/3, logit ln(1/2): PBO 1. A trial that is
    better on both halves wins and stays first, rank 2, w = 2/3, logit ln 2: PBO 0."""
    rng = np.random.default_rng(3)
    noise = rng.normal(0, 0.01, size=(100, 2))
    good_then_bad = np.r_[np.full(50, 0.002), np.full(50, -0.002)] + noise[:, 0]
    bad_then_good = -np.r_[np.full(50, 0.002), np.full(50, -0.002)] + noise[:, 1]
    anti = cscv(np.c_[good_then_bad, bad_then_good], blocks=2)
    assert anti.pbo == 1.0
    np.testing.assert_allclose(anti.logits, math.log(0.5))
    steady = cscv(np.c_[noise[:, 0] + 0.003, noise[:, 1]], blocks=2)
    assert steady.pbo == 0.0 and (steady.winner == 0).all()
    np.testing.assert_allclose(steady.logits, math.log(2.0))


def test_halvings_are_complementary_and_complete():
    h = halvings(6)
    assert h.shape == (20, 6) and (h.sum(axis=1) == 3).all()
    assert len({tuple(row) for row in h}) == 20


def test_pbo_blocks_are_validated_at_the_entry():
    for bad in (0, 3, 22, 2.0):
        with pytest.raises(ConfigError, match="pbo_blocks"):
            StudyConfig(pbo_blocks=bad)
    assert StudyConfig(pbo_blocks=8).pbo_blocks == 8


def random_walk(seed: int, n_sym: int, n_bars: int) -> np.ndarray:
    steps = np.random.default_rng(seed).normal(0, 0.01, size=(n_sym, n_bars))
    return 100 * np.exp(np.cumsum(steps, axis=1))


def noise_trials(seed: int, n_trials: int = 12, n_sym: int = 6, n_bars: int = 800) -> np.ndarray:
    """Each trial: random long/flat weights on random-walk prices, averaged over the symbols."""
    rng = np.random.default_rng(seed)
    close = random_walk(seed + 10_000, n_sym, n_bars)
    columns = []
    for _ in range(n_trials):
        w = (rng.random((n_sym, n_bars)) < 0.5).astype(float)
        rets, _, _ = simulate_nb(w, close, close, 0.0, False)
        columns.append(np.nanmean(rets, axis=0))
    return np.stack(columns, axis=1)


def test_pbo_of_pure_noise_is_near_one_half():
    """With no skill anywhere the in-sample winner is a random draw out of sample: PBO about 0.5. Over 40
    seeds the mean PBO must be within four standard errors of 0.5 (PBO per seed spreads widely)."""
    pbos = np.array([cscv(noise_trials(seed), blocks=8).pbo for seed in range(40)])
    assert abs(pbos.mean() - 0.5) < 4 * pbos.std(ddof=1) / math.sqrt(len(pbos))
    assert 0.3 < pbos.mean() < 0.7


def test_planted_edge_gives_a_low_pbo_and_wins():
    r = noise_trials(5)
    r[:, 7] += 0.0015  # one trial with a real edge
    result = cscv(r, blocks=16)
    assert result.pbo < 0.05
    assert (result.winner == 7).mean() > 0.9
    assert result.degradation_slope == result.degradation_slope  # defined


def test_spa_equals_arch_called_directly():
    rng = np.random.default_rng(7)
    trials = rng.normal(0.0002, 0.01, size=(600, 9))
    trials[:, 4] += 0.001
    bench = rng.normal(0.0002, 0.01, size=600)
    daily = spa_test(bench, trials, reps=400, seed=11, period=1)
    direct = SPA(-bench, -trials, block_size=int(math.sqrt(600)), reps=400, seed=11)
    direct.compute()
    assert daily.pvalue == direct.pvalues["consistent"]
    assert daily.lower == direct.pvalues["lower"] and daily.upper == direct.pvalues["upper"]
    # weekly sums (the default), by hand: 600 days = 120 weeks, each the sum of its 5 days
    got = spa_test(bench, trials, reps=400, seed=11)
    weeks, week_bench = trials.reshape(120, 5, 9).sum(axis=1), bench.reshape(120, 5).sum(axis=1)
    direct = SPA(-week_bench, -weeks, block_size=int(math.sqrt(120)), reps=400, seed=11)
    direct.compute()
    assert got.pvalue == direct.pvalues["consistent"] and got.period == 5 and got.block_size == 10
    assert got.best_trial == 4 and got.tested == 9
    assert abs(got.pvalue - daily.pvalue) < 0.1  # the same hypothesis, tested on weeks
    # a trial identical to the benchmark cannot beat it: left out, not a division by zero
    same = spa_test(bench, np.c_[trials, bench], reps=400, seed=11)
    assert same.tested == 9 and same.pvalue == got.pvalue
    assert math.isnan(spa_test(bench, np.c_[bench], reps=50).pvalue)


# --- the trials' matrix and the study --------------------------------------------------------------------------


def test_trial_sums_add_chunks_by_date():
    dates = np.array(["2020-01-01", "2020-01-02", "2020-01-03"], dtype="datetime64[ms]")
    a = trial_parts_frame(dates, np.array([2, 0, 1]), np.array([0.1, 0.0, 0.2]), np.array([[0.2, 0.0, 0.3]]))
    b = trial_parts_frame(dates, np.array([1, 1, 0]), np.array([0.3, 0.1, 0.0]), np.array([[0.4, 0.5, 0.0]]))
    sums = TrialSums(1)
    sums.add(a)
    sums.add(b)
    m = sums.matrix()
    np.testing.assert_array_equal(m.dates, dates)
    np.testing.assert_allclose(m.returns[:, 0], [0.6 / 3, 0.5, 0.3])
    np.testing.assert_allclose(m.benchmark, [0.4 / 3, 0.1, 0.2])
    np.testing.assert_array_equal(m.symbols, [3, 1, 1])


FOLDS = FoldSpec(train_years=2, validate_years=1, test_years=1)
GRID = ParamGrid.from_mapping({"fast": [5, 10, 20], "slow": [40, 60, 100]})


def study(panel, config, chunk_size=1000, workers=1):
    first, last = date_range(panel)
    return run_study(config, panel.symbols, panel.select, first, last, chunk_size=chunk_size, workers=workers)


@pytest.fixture(scope="module")
def panel():
    return random_panel(n_symbols=13, n_bars=1300, seed=4)


@pytest.mark.parametrize("chunk_size", [1, 4, 13])
def test_overfitting_from_chunks_equals_from_the_whole_matrix(panel, chunk_size):
    """The trial matrix is a sum over chunks: any chunking gives the matrix (and PBO) of one chunk, and that
    matrix is each combination's full-history returns averaged over the symbols, computed directly."""
    config = StudyConfig(grid=GRID, folds=FOLDS, fees_bps=5, pbo_blocks=8)
    whole = study(panel, config)
    part = study(panel, config, chunk_size=chunk_size, workers=2)
    np.testing.assert_allclose(part.trials.returns, whole.trials.returns, rtol=1e-12, atol=1e-17)
    assert part.overfitting.cscv.pbo == whole.overfitting.cscv.pbo
    assert part.overfitting.to_dict()["dsr"] == pytest.approx(whole.overfitting.to_dict()["dsr"], rel=1e-9)
    # directly: the combination's weights over the whole history, its returns, the mean over symbols
    from backtest.engine.strategies import get_strategy

    strategy = get_strategy("sma_crossover")
    _, combos = strategy.combinations(GRID)
    for k in (0, 4, 8):
        w = strategy.weights(panel, dict(zip(strategy.params, combos[k], strict=True)))
        rets, _, _ = simulate_nb(w, panel.open, panel.close, config.cost, False)
        expected = np.nanmean(rets, axis=0)
        expected = expected[~np.isnan(expected)]
        np.testing.assert_allclose(whole.trials.returns[:, k], expected, rtol=1e-10, atol=1e-15)
    assert whole.overfitting.trials == len(combos) == whole.trials.n_trials


def test_study_reports_every_statistic(panel):
    result = study(panel, StudyConfig(grid=GRID, folds=FOLDS))
    doc = result.overfitting.to_dict()
    for name in ("trials", "sharpe_variance", "psr", "dsr", "pbo", "degradation_slope", "spa_pvalue"):
        assert np.isfinite(doc[name]), name
    assert doc["inputs"]["S"] == 16 and doc["inputs"]["splits"] == 12870
    assert doc["inputs"]["T"] == len(result.portfolio)
    assert "PBO" in doc["verdict"]
    # the portfolio's PSR from its own returns, computed independently
    ret = result.portfolio["ret"].to_numpy()
    sr = ret.mean() / ret.std(ddof=1)
    expected = PHI(
        sr
        * math.sqrt(len(ret) - 1)
        / math.sqrt(1 - stats.skew(ret) * sr + (stats.kurtosis(ret, fisher=False) - 1) / 4 * sr * sr)
    )
    assert doc["psr"] == pytest.approx(expected, rel=1e-9)
    assert doc["dsr"] <= doc["psr"]


def test_per_symbol_psr_and_dsr_in_oos_metrics(panel):
    config = StudyConfig(grid=GRID, folds=FOLDS)
    result = study(panel, config)
    metrics = result.symbol_metrics.set_index("symbol")
    oos = result.oos_returns
    strategy_sharpes = {}
    from backtest.engine.strategies import get_strategy

    strategy = get_strategy("sma_crossover")
    _, combos = strategy.combinations(GRID)
    first_train = np.datetime64(result.plan.folds[0].train_start, "D")
    for k in range(len(combos)):
        w = strategy.weights(panel, dict(zip(strategy.params, combos[k], strict=True)))
        rets, _, _ = simulate_nb(w, panel.open, panel.close, config.cost, False)
        strategy_sharpes[k] = rets[:, panel.dates >= first_train]
    for symbol in ("S000", "S005", "S012"):
        i = panel.symbols.index(symbol)
        x = oos.loc[oos["symbol"] == symbol, "ret"].to_numpy()
        sr = x.mean() / x.std(ddof=1)
        skew, kurt = stats.skew(x), stats.kurtosis(x, fisher=False)
        trial = [r[i][~np.isnan(r[i])] for r in strategy_sharpes.values()]
        trial_sr = np.array([t.mean() / t.std(ddof=1) for t in trial])
        star = expected_max_sharpe(len(combos), trial_sr.var(ddof=1))
        z = (sr - star) * math.sqrt(len(x) - 1) / math.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr * sr)
        assert metrics.loc[symbol, "dsr"] == pytest.approx(PHI(z), rel=1e-8)
        assert metrics.loc[symbol, "psr"] >= metrics.loc[symbol, "dsr"]


def _noise_weights(prices, seed=0):
    """Random long/flat weights, a different draw per combination: a strategy with no skill at all."""
    rng = np.random.default_rng(int(seed))
    return (rng.random(prices.close.shape) < 0.5).astype(float)


def _edge_weights(prices, seed=0):
    """Noise, except combination ``seed == 3``, which peeks at tomorrow's close (a planted edge)."""
    if int(seed) != 3:
        return _noise_weights(prices, seed)
    close = prices.close
    up = np.zeros_like(close)
    up[:, :-1] = np.nan_to_num(close[:, 1:] > close[:, :-1]).astype(float)
    return up


@pytest.fixture(scope="module")
def walk_panel():
    from backtest.data.panel import PricePanel

    n_sym, n_bars = 8, 1300
    close = random_walk(99, n_sym, n_bars)
    dates = np.arange(np.datetime64("2001-01-01"), np.datetime64("2001-01-01") + n_bars)
    return PricePanel(
        symbols=tuple(f"W{i}" for i in range(n_sym)),
        dates=dates,
        open=close.copy(),
        high=close.copy(),
        low=close.copy(),
        close=close,
        volume=np.ones_like(close),
    )


def test_noise_study_is_not_significant_and_planted_edge_is_found(walk_panel):
    grid = ParamGrid.from_mapping({"seed": [float(s) for s in range(8)]})
    register(strategy_from_function(_noise_weights, name="luck_noise"))
    register(strategy_from_function(_edge_weights, name="luck_edge"))
    noise = study(walk_panel, StudyConfig(strategy="luck_noise", grid=grid, folds=FOLDS, min_trades=0))
    assert noise.overfitting.dsr < 0.95
    assert noise.overfitting.spa.pvalue > 0.05
    edge = study(walk_panel, StudyConfig(strategy="luck_edge", grid=grid, folds=FOLDS, min_trades=0))
    assert edge.overfitting.cscv.pbo < 0.05
    assert (edge.selections["combo"] == 3).all()
    assert edge.overfitting.spa.best_trial == 3 and edge.overfitting.spa.pvalue < 0.05
    assert edge.overfitting.dsr > 0.95


def test_pbo_blocks_change_the_merged_key_not_the_chunk_key():
    from backtest.results.outputs import collected_key

    a, b = StudyConfig(), StudyConfig(pbo_blocks=8)
    assert a.digest() == b.digest()  # every chunk stays a cache hit
    assert a.merge_digest() != b.merge_digest()
    assert collected_key(["c1"], a.merge_digest()) != collected_key(["c1"], b.merge_digest())


def test_the_standard_librarys_normal_distribution_equals_scipys():
    from scipy.special import ndtr as scipy_ndtr
    from scipy.special import ndtri as scipy_ndtri

    from backtest.overfitting.sharpe import ndtr, ndtri

    z = np.linspace(-8.0, 8.0, 2001)
    np.testing.assert_allclose(ndtr(z), scipy_ndtr(z), rtol=1e-13, atol=1e-16)
    p = np.linspace(1e-9, 1.0 - 1e-9, 2001)
    np.testing.assert_allclose(ndtri(p), scipy_ndtri(p), rtol=1e-13, atol=1e-14)
    assert np.isnan(ndtr(np.nan)) and ndtr(np.array([])).shape == (0,)
    assert ndtri(np.array([0.0, 1.0])).tolist() == [-np.inf, np.inf] and np.isnan(ndtri(np.nan))
