import datetime as dt
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backtest.config import FoldSpec
from backtest.engine.folds import FoldLayout, check_warmup, make_folds
from backtest.errors import ConfigError


@settings(max_examples=60, deadline=None)
@given(
    train=st.integers(1, 72),
    validate=st.integers(1, 24),
    test=st.integers(1, 24),
    anchored=st.booleans(),
    years=st.integers(3, 25),
    start_day=st.integers(0, 3000),
)
def test_test_windows_tile_the_history_without_gaps_or_overlaps(
    train, validate, test, anchored, years, start_day
):
    first = dt.date(1995, 1, 1) + dt.timedelta(days=start_day)
    last = first + dt.timedelta(days=int(years * 365.25))
    spec = FoldSpec(train / 12, validate / 12, test / 12, anchored)
    try:
        folds = make_folds(first, last, spec)
    except ConfigError:
        assert (train + validate) / 12 * 365 > (last - first).days - 40
        return
    for a, b in itertools.pairwise(folds):
        assert b.test_start == a.test_end  # no gap, no overlap
    for f in folds:
        assert f.train_start < f.train_end == f.validate_start < f.validate_end == f.test_start < f.test_end
        assert f.train_start == first if anchored else f.train_start >= first
    assert folds[0].train_start == first
    assert folds[-1].test_end <= last + dt.timedelta(days=1)
    # the last test window reaches the end of the data: nothing at the end is left untested
    assert (last + dt.timedelta(days=1) - folds[-1].test_end).days <= 0


def test_rolling_and_anchored_defaults_on_twenty_years():
    rolling = make_folds(dt.date(2005, 1, 3), dt.date(2024, 12, 31), FoldSpec())
    anchored = make_folds(dt.date(2005, 1, 3), dt.date(2024, 12, 31), FoldSpec(anchored=True))
    assert len(rolling) == len(anchored) == 14
    assert rolling[1].train_start == dt.date(2006, 1, 3)
    assert anchored[1].train_start == dt.date(2005, 1, 3)
    assert rolling[0].test_start == dt.date(2011, 1, 3)
    assert rolling[-1].test_end == dt.date(2025, 1, 1)  # cut at the end of the data


def test_too_short_history_says_how_to_fix_it():
    with pytest.raises(ConfigError, match=r"too short for one fold.*--train-years"):
        make_folds(dt.date(2013, 2, 8), dt.date(2018, 2, 7), FoldSpec())


def test_layout_maps_windows_to_calendar_ranges():
    folds = make_folds(dt.date(2001, 1, 1), dt.date(2006, 12, 31), FoldSpec(2, 1, 1))
    dates = np.busday_offset(np.datetime64("2001-01-01"), np.arange(1560), roll="forward").astype(
        "datetime64[D]"
    )
    layout = FoldLayout.build(folds, dates)
    for f in folds:
        for name in ("train", "validate", "test"):
            lo, hi = layout.window_bars(f.index, name)
            start, end = f.window(name)
            inside = (dates >= np.datetime64(start)) & (dates < np.datetime64(end))
            assert np.flatnonzero(inside).tolist() == list(range(lo, hi))


def test_train_window_shorter_than_slowest_indicator_is_refused():
    folds = make_folds(dt.date(2001, 1, 1), dt.date(2010, 12, 31), FoldSpec(1, 1, 1))
    with pytest.raises(ConfigError, match="slowest indicator"):
        check_warmup(folds, 300, "sma_crossover")
    check_warmup(folds, 200, "sma_crossover")
