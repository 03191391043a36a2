"""Frozen, typed configuration of a study: what to run, over which windows, at what cost.

Validation happens here, once, when the configuration is built, so that a bad value fails before any data is
read, with a message that says how to fix it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from backtest import defaults as D
from backtest.errors import ConfigError

Objective = Literal[D.OBJECTIVES]  # type: ignore[valid-type] - the choices, written once in backtest.defaults
Execution = Literal[D.EXECUTIONS]  # type: ignore[valid-type]
OBJECTIVES: tuple[str, ...] = D.OBJECTIVES
EXECUTIONS: tuple[str, ...] = D.EXECUTIONS

#: A grid bigger than this is refused: it is almost always a typo in a range, and it would run for hours.
MAX_COMBINATIONS = 20_000
PERIODS_PER_YEAR = 252
#: configuration fields that change only how the chunks' results are merged, not any chunk's numbers
MERGE_ONLY = ("pbo_blocks",)


def check_blocks(blocks: int) -> None:
    """The PBO's CSCV halves its blocks: an even number, and few enough for C(S, S/2) halvings to be cheap."""
    if (
        isinstance(blocks, bool)
        or not isinstance(blocks, int)
        or blocks < 2
        or blocks % 2
        or blocks > D.MAX_PBO_BLOCKS
    ):
        raise ConfigError(
            f"pbo_blocks must be an even whole number from 2 to {D.MAX_PBO_BLOCKS}, got {blocks!r} (16 is usual)"
        )


def encode_choice(name: str, value: str | float) -> float:
    """A grid value of ``side`` or ``weighting`` by name (or already as its code)."""
    choices = D.CHOICES[name]
    if isinstance(value, str):
        if value not in choices:
            raise ConfigError(f"unknown {name} {value!r}: choose one of {', '.join(choices)}")
        return float(choices.index(value))
    if value != int(value) or not (0 <= value < len(choices)):
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return float(value)


def _grid_value(name: str, value: float | str) -> float:
    if name in D.CHOICES:
        return encode_choice(name, value)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"parameter {name!r} takes numbers, got {value!r}") from None


@dataclass(frozen=True)
class ParamGrid:
    """Named parameter value lists; the grid is their cartesian product, in the order given.

    The order matters: it is the deterministic tie-break of the top-K selection (earlier combinations win).
    """

    axes: tuple[tuple[str, tuple[float, ...]], ...]

    @classmethod
    def from_mapping(cls, grid: Mapping[str, Iterable[float | str]]) -> ParamGrid:
        """A grid from ``{name: values}``; a ranking study's ``side`` and ``weighting`` values may be given by
        name (``"long_short"``), every other value must be a number."""
        axes = []
        for name, values in grid.items():
            vals = tuple(_grid_value(name, v) for v in values)
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

    train_years: float = D.TRAIN_YEARS
    validate_years: float = D.VALIDATE_YEARS
    test_years: float = D.TEST_YEARS
    anchored: bool = D.ANCHORED

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

    strategy: str = D.STRATEGY
    grid: ParamGrid | None = None
    folds: FoldSpec = field(default_factory=FoldSpec)
    top_k: int = D.TOP_K
    objective: Objective = D.OBJECTIVE  # type: ignore[assignment]
    min_trades: int = D.MIN_TRADES
    min_bars: int = D.MIN_BARS
    fees_bps: float = D.FEES_BPS
    slippage_bps: float = D.SLIPPAGE_BPS
    execution: Execution = D.EXECUTION  # type: ignore[assignment]
    start: dt.date | None = None
    end: dt.date | None = None
    #: CSCV blocks of the PBO: it changes only the merge of the chunks, so chunk keys leave it out
    pbo_blocks: int = D.PBO_BLOCKS

    def __post_init__(self) -> None:
        check_blocks(self.pbo_blocks)
        if self.top_k < D.MIN_TOP_K:
            raise ConfigError(f"top_k must be at least {D.MIN_TOP_K}, got {self.top_k}")
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
            if not (0 <= value < D.MAX_BPS):
                raise ConfigError(f"{name} must be between 0 and {D.MAX_BPS} basis points, got {value}")
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
        """A stable hash of what decides a chunk's numbers, part of every chunk's cache key."""
        data = {k: v for k, v in self.to_dict().items() if k not in MERGE_ONLY}
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()

    def merge_digest(self) -> str:
        """What else decides the merged results (the chunks' keys decide the rest): part of their cache key."""
        return json.dumps({k: getattr(self, k) for k in MERGE_ONLY}, sort_keys=True)
