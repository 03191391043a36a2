"""The study's defaults and bounds, each written once: the core's configuration (backtest.config), the flow's
parameters (flows.params, and so the Prefect UI's form), the ``backtest`` command's options and the
deployments of prefect.yaml (which leave a value out to get its default) all take them from here.

A module that imports nothing, so that the command line can read it at start-up for free.
"""

from __future__ import annotations

STRATEGY = "sma_crossover"

# -- the walk-forward windows, in years (whole months)
TRAIN_YEARS = 5.0
VALIDATE_YEARS = 1.0
TEST_YEARS = 1.0
ANCHORED = False

# -- selection
OBJECTIVES = ("sharpe", "sortino", "total_return", "calmar")
OBJECTIVE = "sharpe"
TOP_K = 5
MIN_TOP_K = 1
MIN_TRADES = 1
MIN_BARS = 20

# -- the statistics of luck (docs/design.md section 7): CSCV blocks, an even number from 2 to MAX_PBO_BLOCKS,
# and the SPA bootstrap's repetitions and seed (fixed, so a re-run gives the same p-value)
PBO_BLOCKS = 16
MAX_PBO_BLOCKS = 20
SPA_REPS = 1000
SPA_SEED = 0
#: trading days summed into each observation of the SPA test (backtest.overfitting.snooping says why)
SPA_PERIOD = 5

# -- costs and fills, in basis points of traded notional: from 0 up to (not including) MAX_BPS
FEES_BPS = 0.0
SLIPPAGE_BPS = 0.0
MAX_BPS = 10_000
EXECUTIONS = ("close", "next_open")
#: a ranking study's portfolio choices; as grid parameters they are given by name and stored as their position
SIDES = ("long", "long_short")
WEIGHTINGS = ("equal", "score", "inverse_vol")
CHOICES = {"side": SIDES, "weighting": WEIGHTINGS}
EXECUTION = "close"

# -- how a run runs
RUNNERS = ("threads", "processes", "dask")
RUNNER = "threads"
CACHE_MAX_GB = 20.0
CACHE_MAX_AGE_DAYS = 30.0
MONITOR_INTERVAL = 1.0
MAX_MONITOR_INTERVAL = 60.0
