"""Three-phase walk-forward backtesting core: data store, strategies, numba kernels, folds and the study.

The core never imports Prefect; tasks/ and flows/ wrap it.
"""

import os

__version__ = "0.1.0"

# Arrow's allocator (mimalloc) keeps the pages it frees for reuse by default: after loading a chunk of prices
# a process kept about 230 MB it no longer used, and the study's peak grew by as much. Returning them at once
# costs little (docs/benchmarks.md). Read when Arrow first allocates, so set before any table is read; a
# value already in the environment wins.
os.environ.setdefault("MIMALLOC_PURGE_DELAY", "0")
os.environ.setdefault("MIMALLOC_ARENA_EAGER_COMMIT", "0")
