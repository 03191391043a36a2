"""Frozen, typed configuration of a study: what to run, over which windows, at what cost.

Validation happens here, once, when the configuration is built, so that a bad value fails before any data is
read, with a message that says how to fix it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from backtest.errors import ConfigError

Objective = Literal["sharpe", "sortino", "total_return", "calmar"]
Execution = Literal["close", "next_open"]
OBJECTIVES: tuple[str, ...] = ("sharpe", "sortino", "total_return", "calmar")
EXECUTIONS: tuple[str, ...] = ("close", "next_open")

#: A grid bigger than this is refused: it is almost always a typo in a range, and it would run for hours.
MAX_COMBINATIONS = 20_000
PERIODS_PER_YEAR = 252


@dataclass(frozen=True)
class ParamGrid:
    """Named parameter value lists; the grid is their cartesian product, in the order given.

    The order matters: it is the deterministic tie-break of the top-K selection (earlier combinations win).
    """

    axes: tuple[tuple[str, tuple[float, ...]], ...]

    @classmethod
    def from_mapping(cls, grid: Mapping[str, Iterable[float]]) -> ParamGrid:
        axes = []
        for name, values in grid.items():
            vals = tuple(float(v) for v in values)
            if not vals:
                raise ConfigError(f"parameter {name!r} has no values: give at least one, e.g. {name}=10,20")
            if not all(np.isfinite(vals)):
                raise ConfigError(f"parameter {name!r} has a non-finite value: {vals}")
            if len(set(vals)) != len(vals):
                raise ConfigError(f"parameter {name!r} repeats a value: {vals}")
            axes.append((str(name), vals))
        return cls(axes=tuple(axes))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.axes)

    def as_dict(self) -> dict[str, list[float]]:
        return {name: list(values) for name, values in self.axes}

    def size(self) -> int:
        n = 1
        for _, values in self.axes:
            n *= len(values)
        return n

    def product(self) -> np.ndarray:
        """All combinations as a float array (combinations x parameters), first axis varying slowest."""
        n = self.size()
        if n > MAX_COMBINATIONS:
            raise ConfigError(
                f"the grid has {n:,} combinations, more than the limit of {MAX_COMBINATIONS:,}: "
                "use fewer values per parameter"
            )
        if not self.axes:
            return np.zeros((1, 0))
        return np.array(list(itertools.product(*(v for _, v in self.axes))), dtype=np.float64)


@dataclass(frozen=True)
class FoldSpec:
    """Window lengths in years (converted to whole months); the fold start advances by the test length."""

    train_years: float = 5.0
    validate_years: float = 1.0
    test_years: float = 1.0
    anchored: bool = False

    def __post_init__(self) -> None:
        for name in ("train_years", "validate_years", "test_years"):
            value = getattr(self, name)
            if not (value > 0) or round(value * 12) < 1:
                raise ConfigError(f"{name} must be at least one month (1/12 year), got {value}")

    def months(self) -> tuple[int, int, int]:
        return (round(self.train_years * 12), round(self.validate_years * 12), round(self.test_years * 12))


@dataclass(frozen=True)
class StudyConfig:
    """Everything that decides a study's numbers (and so its cache key), nothing about how it is run."""

    strategy: str = "sma_crossover"
    grid: ParamGrid | None = None
    folds: FoldSpec = field(default_factory=FoldSpec)
    top_k: int = 5
    objective: Objective = "sharpe"
    min_trades: int = 1
    min_bars: int = 20
    fees_bps: float = 0.0
    slippage_bps: float = 0.0
    execution: Execution = "close"
    start: dt.date | None = None
    end: dt.date | None = None

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ConfigError(f"top_k must be at least 1, got {self.top_k}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"unknown objective {self.objective!r}: choose one of {', '.join(OBJECTIVES)}")
        if self.execution not in EXECUTIONS:
            raise ConfigError(f"unknown execution {self.execution!r}: choose one of {', '.join(EXECUTIONS)}")
        if self.min_trades < 0:
            raise ConfigError(f"min_trades must be 0 or more, got {self.min_trades}")
        if self.min_bars < 2:
            raise ConfigError(
                f"min_bars must be at least 2 (a volatility needs two returns), got {self.min_bars}"
            )
        for name in ("fees_bps", "slippage_bps"):
            value = getattr(self, name)
            if not (0 <= value < 10_000):
                raise ConfigError(f"{name} must be between 0 and 10000 basis points, got {value}")
        if self.start and self.end and self.start >= self.end:
            raise ConfigError(f"start {self.start} must be before end {self.end}")

    @property
    def cost(self) -> float:
        """Cost per unit of traded notional: fees plus slippage, as a fraction."""
        return (self.fees_bps + self.slippage_bps) * 1e-4

    def to_dict(self) -> dict:
        data = asdict(self)
        data["grid"] = self.grid.as_dict() if self.grid is not None else None
        data["start"] = self.start.isoformat() if self.start else None
        data["end"] = self.end.isoformat() if self.end else None
        return data

    def digest(self) -> str:
        """A stable hash of the configuration, part of every cache key."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def parse_param(spec: str) -> tuple[str, list[float]]:
    """Parse ``name=v1,v2,...`` or ``name=start:stop:step`` (stop inclusive) from the command line."""
    name, sep, values = spec.partition("=")
    name = name.strip()
    if not sep or not name or not values.strip():
        raise ConfigError(f"bad --param {spec!r}: write name=v1,v2,... or name=start:stop:step")
    try:
        if ":" in values:
            parts = [float(p) for p in values.split(":")]
            if len(parts) != 3 or parts[2] <= 0 or parts[1] < parts[0]:
                raise ValueError
            start, stop, step = parts
            count = int(np.floor((stop - start) / step + 1e-9)) + 1
            if count > MAX_COMBINATIONS:
                raise ConfigError(f"--param {spec!r} expands to {count:,} values: use a larger step")
            return name, [round(start + i * step, 10) for i in range(count)]
        return name, [float(v) for v in values.split(",") if v.strip()]
    except ConfigError:  # a ValueError too, but already the precise message
        raise
    except ValueError:
        raise ConfigError(
            f"bad --param {spec!r}: values must be numbers, as name=5,10,20 or name=5:50:5"
        ) from None


def parse_params(specs: Sequence[str]) -> ParamGrid | None:
    """The grid given on the command line, or None for the strategy's default grid."""
    if not specs:
        return None
    grid: dict[str, list[float]] = {}
    for spec in specs:
        name, values = parse_param(spec)
        if name in grid:
            raise ConfigError(f"--param {name} is given twice: give all its values in one --param")
        grid[name] = values
    return ParamGrid.from_mapping(grid)
