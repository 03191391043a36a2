"""The portfolio kernel against the slow reference (tests/ranking_reference.py), option by option."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from backtest.engine.strategies import get_strategy
from backtest.ranking.portfolio import Construction, Market, simulate
from tests.panels import random_panel
from tests.ranking_reference import reference_portfolio

PANEL = random_panel(25, 500, seed=5)  # late listings, early delistings, missing days
SCORES = get_strategy("momentum_rank").scores(PANEL, {"lookback": 21, "skip": 0})


def frames(member: np.ndarray | None = None):
    dates = pd.DatetimeIndex(PANEL.dates.astype("datetime64[ns]"))
    frame = lambda a: pd.DataFrame(a.T, index=dates, columns=list(PANEL.symbols))  # noqa: E731
    return (
        frame(PANEL.close),
        frame(PANEL.open),
        frame(SCORES.astype(np.float64)),
        (None if member is None else frame(member)),
    )


@pytest.mark.parametrize(
    ("build", "cost", "next_open"),
    [
        (Construction(top=5), 0.0, False),
        (Construction(top=5), 0.002, False),
        (Construction(top=4, side="long_short", weighting="score"), 0.001, False),
        (Construction(quantile=0.3, weighting="inverse_vol", max_weight=0.15, rebalance=10), 0.001, False),
        (Construction(top=6, weighting="inverse_vol"), 0.001, True),
        (Construction(top=3, side="long_short", rebalance=5), 0.0005, True),
    ],
)
def test_kernel_equals_the_reference(build, cost, next_open):
    close, open_, scores, _ = frames()
    ref = reference_portfolio(
        close,
        open_,
        scores,
        top=build.top,
        quantile=build.quantile,
        side=build.side,
        weighting=build.weighting,
        max_weight=build.max_weight,
        rebalance=build.rebalance,
        cost=cost,
        execution="next_open" if next_open else "close",
    )
    market = Market(PANEL.symbols, PANEL.dates, PANEL.close, PANEL.open, np.zeros((0, 0), bool))
    sim = simulate(market, SCORES, build, cost, next_open, log_mask=np.ones(PANEL.n_bars, bool))
    np.testing.assert_allclose(sim.ret, ref.daily["ret"].to_numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(sim.turnover, ref.daily["turnover"].to_numpy(), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(sim.n_holdings, ref.daily["n_holdings"].to_numpy())
    days = [pd.Timestamp(PANEL.dates[d]) for d in sim.log_days]
    assert days == list(ref.rebalance_days)
    for row, day in zip(sim.log_targets, days, strict=True):
        expected = ref.targets[day].reindex(list(PANEL.symbols), fill_value=0.0).to_numpy()
        np.testing.assert_allclose(row, expected, rtol=0, atol=1e-12)


def test_kernel_equals_the_reference_with_a_membership_mask():
    member = np.ones(PANEL.close.shape, bool)
    member[::3, 100:300] = False
    close, open_, scores, frame = frames(member)
    ref = reference_portfolio(close, open_, scores, frame, top=5, rebalance=15, cost=0.001)
    market = Market(PANEL.symbols, PANEL.dates, PANEL.close, PANEL.open, member)
    sim = simulate(market, SCORES, Construction(top=5, rebalance=15), 0.001, False)
    np.testing.assert_allclose(sim.ret, ref.daily["ret"].to_numpy(), rtol=0, atol=1e-12)
