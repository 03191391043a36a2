"""Three-phase walk-forward backtesting core: data store, strategies, numba kernels, folds and the study.

The core never imports Prefect; tasks/ and flows/ wrap it.
"""

__version__ = "0.1.0"
