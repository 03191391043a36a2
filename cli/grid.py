"""The ``--param`` option's syntax: ``name=v1,v2,...`` or ``name=start:stop:step``, into the core's grid."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from backtest.config import MAX_COMBINATIONS, ParamGrid
from backtest.errors import ConfigError
from backtest.ranking.portfolio import CHOICES, encode_choice


def parse_param(spec: str) -> tuple[str, list[float]]:
    """Parse ``name=v1,v2,...`` or ``name=start:stop:step`` (stop inclusive) from the command line."""
    name, sep, values = spec.partition("=")
    name = name.strip()
    if not sep or not name or not values.strip():
        raise ConfigError(f"bad --param {spec!r}: write name=v1,v2,... or name=start:stop:step")
    if name in CHOICES:  # side=long,long_short / weighting=equal,inverse_vol: by name
        return name, [encode_choice(name, v.strip()) for v in values.split(",") if v.strip()]
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
