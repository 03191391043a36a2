"""Series metrics (backtest.engine.metrics, series_metrics_nb) against empyrical-reloaded and the references."""

from __future__ import annotations

import math
import warnings

import empyrical as ep
import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from backtest.engine.metrics import metrics_table, series_metrics
from backtest.engine.simulate_nb import METRIC_NAMES, simulate_nb
from tests import reference as ref

PERIODS = 252.0
EMPYRICAL = ("total_return", "cagr", "annual_volatility", "sharpe", "sortino", "max_drawdown", "calmar")

# returns in (-0.5, 0.5); magnitudes below 1e-12 become 0 so that squares cannot underflow (1e-187 ** 2 == 0
# would make both sides divide by a zero deviation of a series that is not constant)
returns_values = st.floats(-0.5, 0.5, exclude_min=True, exclude_max=True, allow_subnormal=False).map(
    lambda x: x if abs(x) >= 1e-12 else 0.0
)


def empyrical_metrics(r: np.ndarray) -> dict[str, float]:
    """The oracle, on a series without NaN."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return {
            "total_return": float(ep.cum_returns_final(r)),
            "cagr": float(ep.annual_return(r)),
            "annual_volatility": float(ep.annual_volatility(r)),
            "sharpe": float(ep.sharpe_ratio(r)),
            "sortino": float(ep.sortino_ratio(r)),
            "max_drawdown": float(ep.max_drawdown(r)),
            "calmar": float(ep.calmar_ratio(r)),
        }


def tolerances(r: np.ndarray, expected: dict[str, float]) -> dict[str, tuple[float, float]]:
    """(rtol, atol) per metric: rtol 1e-9, plus the rounding both sides legitimately differ by.

    Sums taken in another order differ by about n ulps of the summed magnitudes, which only matters where a
    result cancels to near 0 (a mean near 0, a growth factor near 1, a tiny drawdown) or where the deviation
    is tiny next to the returns (nearly constant series, where both sides are noise-dominated).
    """
    n = len(r)
    eps = 1e-15 * max(n, 1)
    mean_abs = float(np.mean(np.abs(r))) if n else 0.0
    std = float(np.std(r, ddof=1)) if n >= 2 else math.nan
    down = math.sqrt(float(np.mean(np.minimum(r, 0.0) ** 2))) if n else math.nan
    cagr, mdd = expected["cagr"], abs(expected["max_drawdown"])
    tol = {
        "total_return": (1e-9, eps * (1.0 + abs(expected["total_return"]))),
        "cagr": (1e-9, eps * (PERIODS / max(n, 1)) * (1.0 + abs(cagr))),
        "max_drawdown": (1e-9, eps),
    }
    if std > 0:
        spread = 1e-9 + 1e-13 * float(np.max(np.abs(r))) / std
        tol["annual_volatility"] = (spread, 0.0)
        tol["sharpe"] = (spread, eps * mean_abs / std * math.sqrt(PERIODS))
    else:
        tol["annual_volatility"] = tol["sharpe"] = (1e-9, 1e-12)
    tol["sortino"] = (1e-9, eps * mean_abs / down * math.sqrt(PERIODS) if down > 0 else 0.0)
    if mdd > 0 and np.isfinite(expected["calmar"]):
        tol["calmar"] = (1e-9, (tol["cagr"][1] + abs(expected["calmar"]) * eps) / mdd)
    else:
        tol["calmar"] = (1e-9, 0.0)
    return tol


def assert_matches_empyrical(got: dict[str, float], r: np.ndarray) -> None:
    expected = empyrical_metrics(r)
    tol = tolerances(r, expected)
    for name in EMPYRICAL:
        g, e = got[name], expected[name]
        if np.isnan(e) or np.isinf(e):
            assert g == e or (np.isnan(g) and np.isnan(e)), f"{name}: got {g!r}, empyrical {e!r}"
            continue
        rtol, atol = tol[name]
        assert abs(g - e) <= atol + rtol * abs(e), f"{name}: got {g!r}, empyrical {e!r} (n={len(r)})"


@settings(max_examples=200, deadline=None)
@given(values=st.lists(returns_values, min_size=2, max_size=600))
def test_metrics_match_empyrical(values):
    r = np.array(values)
    assume(r.max() != r.min())  # identical values: see test_zero_dispersion_sharpe_matches_empyrical
    got = series_metrics(r)
    assert got["days"] == len(r)
    assert_matches_empyrical(got, r)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.one_of(returns_values, st.just(math.nan)), min_size=0, max_size=600))
def test_metrics_skip_nan_gaps(values):
    """NaN days are skipped: the metrics are empyrical's on the series without them."""
    r = np.array(values, dtype=float)
    clean = r[~np.isnan(r)]
    assume(len(clean) < 2 or clean.max() != clean.min())
    got = series_metrics(r)
    assert got["days"] == len(clean)
    assert_matches_empyrical(got, clean)


@settings(max_examples=50, deadline=None)
@given(values=st.lists(returns_values, min_size=2, max_size=100), n_nan=st.integers(1, 50))
def test_leading_and_trailing_nan(values, n_nan):
    """A late listing / early delisting in a calendar row changes nothing."""
    r = np.array(values)
    assume(r.max() != r.min())
    padded = np.concatenate([np.full(n_nan, np.nan), r, np.full(n_nan // 2, np.nan)])
    a, b = series_metrics(padded), series_metrics(r)
    for name in METRIC_NAMES:
        assert a[name] == b[name] or (np.isnan(a[name]) and np.isnan(b[name])), name


# --- undefined values are NaN, never a crash --------------------------------------------------------------


def test_empty_series():
    got = series_metrics(np.array([], dtype=float))
    assert got["days"] == 0 and got["trades"] == 0
    for name in METRIC_NAMES:
        if name not in ("days", "trades"):
            assert np.isnan(got[name]), name


def test_all_nan_series():
    got = series_metrics(np.full(7, np.nan))
    assert got["days"] == 0
    for name in EMPYRICAL:
        assert np.isnan(got[name]), name


@pytest.mark.parametrize("value", [0.01, -0.02, 0.0])
def test_one_value(value):
    r = np.array([value])
    got = series_metrics(r)
    assert got["days"] == 1
    assert got["total_return"] == pytest.approx(value, rel=1e-12, abs=1e-15)
    assert got["cagr"] == pytest.approx((1.0 + value) ** PERIODS - 1.0, rel=1e-9, abs=1e-15)
    for name in ("annual_volatility", "sharpe", "sortino"):
        assert np.isnan(got[name]), name
    assert got["max_drawdown"] == pytest.approx(min(value, 0.0), rel=1e-12)
    assert_matches_empyrical(got, r)


def test_all_zeros():
    r = np.zeros(10)
    got = series_metrics(r)
    assert got["total_return"] == 0.0 and got["cagr"] == 0.0 and got["max_drawdown"] == 0.0
    assert got["annual_volatility"] == 0.0
    for name in ("sharpe", "sortino", "calmar", "win_rate"):
        assert np.isnan(got[name]), name
    assert_matches_empyrical(got, r)


@pytest.mark.parametrize(
    "values",
    [[0.01, 0.01], [0.1, 0.1, 0.1], [0.3] * 7, [-0.1, -0.1, -0.1], [0.02] * 5],
    ids=["two", "three", "seven", "negative", "five"],
)
def test_zero_dispersion_sharpe_matches_empyrical(values):
    """Identical returns: the deviation is exactly 0, so Sharpe is empyrical's +-inf, not a rounding residue
    of ~1e-18 turned into a ratio of ~1e16 (nor NaN for some lengths and huge for others)."""
    r = np.array(values)
    got = series_metrics(r)
    expected = empyrical_metrics(r)
    assert got["sharpe"] == expected["sharpe"], (
        f"sharpe of {values}: got {got['sharpe']!r}, empyrical {expected['sharpe']!r}"
    )
    assert got["sortino"] == expected["sortino"]
    assert abs(got["annual_volatility"]) < 1e-12


def test_series_input_and_metric_names():
    r = pd.Series([0.01, -0.02, 0.03], index=pd.date_range("2020-01-01", periods=3))
    got = series_metrics(r)
    assert tuple(got) == METRIC_NAMES
    assert_matches_empyrical(got, r.to_numpy())


# --- activity metrics and windows ---------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_bars=st.integers(1, 120),
    next_open=st.booleans(),
    cost=st.sampled_from([0.0, 0.001]),
)
def test_activity_metrics(seed, n_bars, next_open, cost):
    """Trades, turnover, exposure and win rate of simulated returns, NaN days skipped."""
    arrays = ref.with_gaps(seed, ref.random_ohlc(seed, 3, n_bars, 0.02), 0.2)
    o, c = arrays[0], arrays[3]
    w = ref.random_weights(seed, c.shape)
    rets, traded, held = simulate_nb(w, o, c, cost, next_open)
    table = metrics_table(rets, traded, held)
    for i in range(c.shape[0]):
        expected = ref.activity_metrics(rets[i], traded[i], held[i])
        for name, value in expected.items():
            got = table[i, METRIC_NAMES.index(name)]
            if np.isnan(value):
                assert np.isnan(got), name
            else:
                assert got == pytest.approx(value, rel=1e-12), name


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(st.one_of(returns_values, st.just(math.nan)), min_size=1, max_size=200),
    data=st.data(),
)
def test_metrics_table_window_equals_slice(values, data):
    """Metrics on columns [lo, hi) are the metrics of that slice; rows are independent."""
    r = np.array(values, dtype=float)
    lo = data.draw(st.integers(0, len(r)))
    hi = data.draw(st.integers(lo, len(r)))
    two_rows = np.vstack([r, r[::-1]])
    table = metrics_table(two_rows, lo=lo, hi=hi)
    for row, series in ((0, r[lo:hi]), (1, r[::-1][lo:hi])):
        expected = series_metrics(series)
        for j, name in enumerate(METRIC_NAMES):
            assert table[row, j] == expected[name] or (np.isnan(table[row, j]) and np.isnan(expected[name]))
