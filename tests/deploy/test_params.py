"""The study's parameters refuse what could never work, before a deployment's run starts any work."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from flows.params import StudyParams


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"strategy": "no_such_strategy"}, "unknown strategy 'no_such_strategy'"),
        ({"grid": {"fast": [50, 60], "slow": [20, 40]}}, "no valid parameter combination"),
        (
            {"grid": {"fast": [5], "slow": [200]}, "train_years": 0.5},
            "slowest indicator of sma_crossover (200",
        ),
        ({"train_years": 0.9}, "slowest indicator of sma_crossover (240 bars)"),  # the default grid
        ({"strategy": "momentum", "grid": {"lookback": [300]}, "train_years": 1}, "momentum (300 bars)"),
        ({"fees_bps": -1}, "fees_bps"),
        ({"slippage_bps": -0.5}, "slippage_bps"),
        ({"grid": {"fast": ["a"]}}, "parameter 'fast' takes numbers, got 'a'"),
        ({"strategy": "momentum_rank", "grid": {"side": ["long", "sideways"]}}, "unknown side 'sideways'"),
        ({"grid": {"period": [5]}}, "has no parameter period"),
    ],
)
def test_bad_values_are_refused_with_the_reason(values, message):
    with pytest.raises(ValidationError) as caught:
        StudyParams(**values)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "values",
    [
        {},  # the defaults: 5-year train windows, the 100-combination grid
        {"train_years": 1.0},  # about 261 weekdays > 240 bars of the slowest default SMA
        {"grid": {"fast": [5, 60], "slow": [20, 40]}},  # some combinations usable: the others are dropped
        {"strategy": "buy_and_hold", "train_years": 0.25},  # no indicator, no warm-up
    ],
)
def test_usable_values_pass(values):
    StudyParams(**values)


def test_a_ranking_grid_takes_its_choices_by_name_as_the_command_line_does():
    from cli.grid import parse_param

    by_name = StudyParams(strategy="momentum_rank", grid={"side": ["long", "long_short"], "top": [10, 20]})
    assert by_name.to_config().grid.as_dict() == {"side": [0.0, 1.0], "top": [10.0, 20.0]}
    assert dict([parse_param("side=long,long_short")]) == {"side": [0.0, 1.0]}
    assert (
        by_name.to_config().digest()
        == StudyParams(strategy="momentum_rank", grid={"side": [0, 1], "top": [10, 20]}).to_config().digest()
    )  # one cache key, however the choice was written


def test_public_dump_masks_a_database_password():
    params = StudyParams(db="postgresql+psycopg://quant:s3cret@127.0.0.1:5432/prices")
    dumped = params.public_dump()
    assert "s3cret" not in str(dumped)
    assert dumped["db"] == "postgresql+psycopg://quant:***@127.0.0.1:5432/prices"
    assert {k: v for k, v in dumped.items() if k != "db"} == {
        k: v for k, v in params.model_dump(mode="json").items() if k != "db"
    }
