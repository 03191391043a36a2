"""A user strategy named ``package.module:function`` is looked up afresh for every study, never cached."""

from __future__ import annotations

import sys

from backtest.engine.strategies import available, get_strategy

SOURCE = """
import numpy as np


def weights(prices, lookback={default}):
    return np.zeros_like(prices.close)
"""


def test_a_user_function_is_not_kept_from_an_earlier_study(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        (tmp_path / "user_strats_once.py").write_text(SOURCE.format(default=5))
        first = get_strategy("user_strats_once:weights")
        assert "user_strats_once:weights" not in available()

        # the module changes (a new version, or another test writing one of the same name) and is re-imported
        sys.modules.pop("user_strats_once")
        (tmp_path / "user_strats_once.py").write_text(SOURCE.format(default=90))
        second = get_strategy("user_strats_once:weights")
        assert second.func is not first.func
        assert (first.defaults, second.defaults) == ({"lookback": 5}, {"lookback": 90})
    finally:
        sys.modules.pop("user_strats_once", None)
