"""The standalone scripts' view of ``benchmarks.measure``: the same helpers with this folder's own defaults,
the data under ``benchmarks/.data/`` and the results under ``benchmarks/results/`` wherever a script is run
from (``backtest bench`` takes both relative to the working directory).

``generate_universe`` and ``ingest_folder`` use process pools, so every script calling ``ensure_store`` keeps
its work under ``if __name__ == "__main__":``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import measure as bench_measure
from benchmarks.measure import (
    MARKER,
    W_SEED,
    W_SYMBOLS,
    W_YEARS,
    RssSampler,
    Stopwatch,
    describe_machine,
    goal,
    machine_line,
    max_rss_mb,
    release_memory,
    timestamp,
)

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_DATA_DIR = BENCH_DIR / ".data"
RESULTS_DIR = BENCH_DIR / "results"

__all__ = [
    "BENCH_DIR",
    "DEFAULT_DATA_DIR",
    "MARKER",
    "RESULTS_DIR",
    "W_SEED",
    "W_SYMBOLS",
    "W_YEARS",
    "RssSampler",
    "Stopwatch",
    "data_dir",
    "describe_machine",
    "ensure_store",
    "goal",
    "machine_line",
    "max_rss_mb",
    "release_memory",
    "timestamp",
    "universe_dir",
    "write_results",
]


def data_dir(path: Path | str | None = None) -> Path:
    return Path(path) if path is not None else DEFAULT_DATA_DIR


def universe_dir(n_symbols: int, years: float, seed: int, data: Path | str | None = None) -> Path:
    return bench_measure.universe_dir(n_symbols, years, seed, data_dir(data))


def ensure_store(
    n_symbols: int = W_SYMBOLS,
    years: float = W_YEARS,
    seed: int = W_SEED,
    data: Path | str | None = None,
    *,
    keep_csv: bool = False,
    log: Callable[[str], None] = print,
) -> Any:
    """The ``Store`` of a synthetic universe under this folder's ``.data/`` (see ``bench_measure``)."""
    store, _ = bench_measure.ensure_store(n_symbols, years, seed, data_dir(data), keep_csv=keep_csv, log=log)
    return store


def write_results(script: str, payload: dict[str, Any]) -> Path:
    return bench_measure.write_results(script, payload, RESULTS_DIR)


def add_workload_args(p: Any, workers_help: str) -> None:
    """The options every benchmark script shares: the synthetic universe, workers and chunk size."""
    p.add_argument(
        "--symbols", type=int, default=W_SYMBOLS, help="symbols in the synthetic universe (W: 4000)"
    )
    p.add_argument("--years", type=float, default=W_YEARS, help="years of daily bars (W: 20)")
    p.add_argument("--seed", type=int, default=W_SEED, help="seed of the synthetic universe")
    p.add_argument("--workers", type=int, default=2, help=workers_help)
    p.add_argument(
        "--chunk-size", type=int, default=None, help="symbols per chunk (default: choose_chunk_size)"
    )
