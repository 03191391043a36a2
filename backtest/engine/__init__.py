"""The computation: folds, strategies, numba kernels, simulation, metrics, study planning and running."""
