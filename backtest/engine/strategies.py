"""Strategies: functions of price arrays and parameters returning target weights, and their registry.

A strategy is ``f(prices: PricePanel, **params) -> np.ndarray`` of shape ``(symbols, bars)`` with weights in
[-1, 1] (values on days a symbol has no bar are ignored). Built-ins are thin wrappers over numba kernels and
carry a kernel id, which lets the grid kernel run them without Python in the loop; any other strategy runs
through the same simulator one combination at a time.

Users add a strategy by decorating it with :func:`register_strategy`, or by naming it on the command line as
``package.module:function``: its keyword parameters (with defaults) are its parameters. That is code the user
chose to run; it runs with the user's permissions.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from backtest.config import ParamGrid
from backtest.data.panel import PricePanel
from backtest.engine import signals_nb
from backtest.engine.simulate_nb import builtin_weights_nb
from backtest.errors import ConfigError, StrategyError

StrategyFunc = Callable[..., np.ndarray]
ComboCheck = Callable[[Mapping[str, float]], "str | None"]


@dataclass(frozen=True)
class Strategy:
    """A registered strategy: its function, parameters (in kernel row order), defaults and default grid."""

    name: str
    func: StrategyFunc
    params: tuple[str, ...]
    defaults: Mapping[str, float]
    default_grid: ParamGrid
    kernel: int | None = None
    integer_params: frozenset[str] = frozenset()
    check: ComboCheck | None = None
    warmup_params: tuple[str, ...] = ()
    description: str = ""
    #: "timing" (weights per symbol) or "ranking" (scores across the market: docs/cross_sectional.md)
    kind: str = "timing"
    _extra_sources: tuple[str, ...] = field(default=(), repr=False)

    def combinations(self, grid: ParamGrid | None) -> tuple[ParamGrid, np.ndarray]:
        """The grid (default when None) and its valid combinations as a float array in ``params`` order.

        Parameters missing from the grid take their default; combinations failing the strategy's check
        (such as fast >= slow) are dropped, and an error says so when none is left.
        """
        grid = self.default_grid if grid is None else grid
        unknown = [n for n in grid.names if n not in self.params]
        if unknown:
            known = ", ".join(self.params) or "none"
            raise ConfigError(
                f"strategy {self.name!r} has no parameter {', '.join(unknown)}; its parameters: {known}"
            )
        for name, values in grid.axes:
            if name in self.integer_params:
                bad = [v for v in values if v != int(v) or v < 1]
                if bad:
                    raise ConfigError(f"{self.name}: {name} must be whole numbers >= 1, got {bad}")
        raw = grid.product()
        table = np.empty((raw.shape[0], len(self.params)))
        for j, name in enumerate(self.params):
            table[:, j] = raw[:, grid.names.index(name)] if name in grid.names else self.defaults[name]
        if self.check is None:
            return grid, table
        keep = np.ones(len(table), dtype=bool)
        reasons: list[str] = []
        for r, row in enumerate(table):
            reason = self.check(dict(zip(self.params, row, strict=True)))
            if reason:
                keep[r] = False
                reasons.append(reason)
        if not keep.any():
            raise ConfigError(f"{self.name}: no valid parameter combination in the grid ({reasons[0]})")
        return grid, table[keep]

    def warmup(self, combos: np.ndarray) -> int:
        """Bars the slowest combination needs before its first weight (for window-length checks)."""
        if not self.warmup_params or len(combos) == 0:
            return 0
        cols = [self.params.index(p) for p in self.warmup_params]
        return int(combos[:, cols].max())

    def weights(self, prices: PricePanel, combo: Mapping[str, float]) -> np.ndarray:
        """Weights of one combination, checked: right shape, finite and within [-1, 1] on every bar."""
        kwargs = {name: (int(v) if name in self.integer_params else v) for name, v in combo.items()}
        try:
            w = self.func(prices, **kwargs)
        except Exception as exc:
            raise StrategyError(
                f"strategy {self.name!r} failed with {kwargs}: {type(exc).__name__}: {exc}"
            ) from exc
        return check_weights(self.name, w, prices, kwargs)

    def scores(self, prices: PricePanel, combo: Mapping[str, float]) -> np.ndarray:
        """A ranking strategy's scores of one combination, checked: right shape, no infinities; float32."""
        kwargs = {name: (int(v) if name in self.integer_params else v) for name, v in combo.items()}
        try:
            raw = self.func(prices, **kwargs)
        except Exception as exc:
            raise StrategyError(
                f"strategy {self.name!r} failed with {kwargs}: {type(exc).__name__}: {exc}"
            ) from exc
        expected = (prices.n_symbols, prices.n_bars)
        try:
            arr = np.asarray(raw, dtype=np.float32)
        except (TypeError, ValueError):
            arr = None
        if arr is None or arr.shape != expected:
            got = None if arr is None else arr.shape
            raise StrategyError(
                f"ranking strategy {self.name!r} with {kwargs} returned shape {got}, expected {expected} "
                "(symbols x bars, NaN where a symbol is not eligible)"
            )
        bad = np.isinf(arr)
        if bad.any():
            i, t = np.argwhere(bad)[0]
            raise StrategyError(
                f"ranking strategy {self.name!r} with {kwargs} returned {arr[i, t]} for {prices.symbols[i]} on "
                f"{prices.dates[t]}: scores must be finite, or NaN for not eligible"
            )
        return np.where(prices.valid, arr, np.float32(np.nan))

    def source_hash(self) -> str:
        """Hash of the strategy's code (its whole module): changing it changes every cache key using it."""
        h = hashlib.blake2b(digest_size=16)
        module = inspect.getmodule(self.func)
        try:
            # the whole module: a helper the function calls is as much its code as its own body
            h.update(inspect.getsource(module if module is not None else self.func).encode())
        except (OSError, TypeError):
            h.update(repr(self.func).encode())
        for src in self._extra_sources:
            h.update(src.encode())
        return h.hexdigest()


def check_weights(name: str, w: object, prices: PricePanel, params: Mapping[str, float]) -> np.ndarray:
    """Refuse weights the simulator cannot trust, saying where the first bad value is."""
    expected = (prices.n_symbols, prices.n_bars)
    try:
        arr = np.asarray(w, dtype=np.float64) if w is not None else None
    except (TypeError, ValueError):
        raise StrategyError(
            f"strategy {name!r} with {dict(params)} returned a {type(w).__name__}, not an array of weights "
            f"of shape {expected}"
        ) from None
    if arr is None or arr.shape != expected:
        got = None if arr is None else arr.shape
        raise StrategyError(
            f"strategy {name!r} with {dict(params)} returned shape {got}, expected {expected}"
        )
    valid = prices.valid
    bad = valid & ~np.isfinite(arr)
    if bad.any():
        i, t = np.argwhere(bad)[0]
        raise StrategyError(
            f"strategy {name!r} with {dict(params)} returned {arr[i, t]} for {prices.symbols[i]} on "
            f"{prices.dates[t]}: weights must be finite where the symbol has a bar (use 0 for no position)"
        )
    out = valid & ((arr > 1.0) | (arr < -1.0))
    if out.any():
        i, t = np.argwhere(out)[0]
        raise StrategyError(
            f"strategy {name!r} with {dict(params)} returned weight {arr[i, t]} for {prices.symbols[i]} on "
            f"{prices.dates[t]}: target weights must lie in [-1, 1]"
        )
    return np.ascontiguousarray(arr)


_REGISTRY: dict[str, Strategy] = {}


def register(strategy: Strategy) -> Strategy:
    _REGISTRY[strategy.name] = strategy
    return strategy


def register_strategy(
    func: StrategyFunc | None = None,
    *,
    name: str | None = None,
    grid: Mapping[str, list[float]] | None = None,
    integer_params: tuple[str, ...] = (),
    check: ComboCheck | None = None,
    kind: str = "timing",
) -> Callable[[StrategyFunc], StrategyFunc] | StrategyFunc:
    """Decorator registering a Python strategy under ``name`` (the function's name by default).

    ``kind="ranking"`` registers a ranking strategy (``backtest.ranking.ranking_strategy`` says it shorter).
    """

    def wrap(f: StrategyFunc) -> StrategyFunc:
        f.__backtest_kind__ = kind  # type: ignore[attr-defined] - read when it is named as module:function
        register(strategy_from_function(f, name=name, grid=grid, integer_params=integer_params, check=check))
        return f

    return wrap(func) if func is not None else wrap


def strategy_from_function(
    func: StrategyFunc,
    *,
    name: str | None = None,
    grid: Mapping[str, list[float]] | None = None,
    integer_params: tuple[str, ...] = (),
    check: ComboCheck | None = None,
) -> Strategy:
    """Describe a Python strategy from its signature: parameters are its keyword arguments with defaults."""
    sig = inspect.signature(func)
    items = list(sig.parameters.values())
    if not items:
        raise ConfigError(f"strategy {func.__qualname__} must take the prices as its first argument")
    params: list[str] = []
    defaults: dict[str, float] = {}
    for p in items[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is p.empty:
            raise ConfigError(f"strategy {func.__qualname__}: parameter {p.name!r} needs a default value")
        params.append(p.name)
        defaults[p.name] = float(p.default)
    default_grid = ParamGrid.from_mapping(grid or {k: [v] for k, v in defaults.items()})
    kind = getattr(func, "__backtest_kind__", "timing")
    if kind not in ("timing", "ranking"):
        raise ConfigError(f"strategy {func.__qualname__}: kind must be timing or ranking, got {kind!r}")
    return Strategy(
        name=name or func.__name__,
        func=func,
        params=tuple(params),
        defaults=defaults,
        default_grid=default_grid,
        integer_params=frozenset(integer_params),
        check=check,
        description=(inspect.getdoc(func) or "").split("\n")[0],
        kind=kind,
    )


def import_function(spec: str) -> Callable[..., object]:
    """Import a function named as ``package.module:function`` (user code: it runs with the user's rights)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"name the function as package.module:function, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc}") from None
    func = getattr(module, attr, None)
    if not callable(func):
        raise ConfigError(f"module {module_name!r} has no function {attr!r}")
    return func


#: modules that register more built-in strategies in this registry (the ranking ones build on this module, so
#: it cannot import them at its top): loaded on the first lookup
BUILTIN_MODULES = ("backtest.ranking.strategies",)
_loaded = False


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)


def get_strategy(name: str) -> Strategy:
    """A registered strategy by name, or a user function named as ``package.module:function``."""
    _load_builtins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        func = import_function(name)
        if name in _REGISTRY:  # registered by importing its module
            return _REGISTRY[name]
        # not registered: a process that runs several studies (a test session, a notebook) must see the
        # function as it is now imported, never one cached from an earlier study under the same name
        return strategy_from_function(func, name=name)
    raise ConfigError(
        f"unknown strategy {name!r}: choose one of {', '.join(sorted(_REGISTRY))}, or name your own "
        "function as package.module:function"
    )


def available() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


# --- built-ins -------------------------------------------------------------------------------------------

_KERNEL_SOURCE = Path(signals_nb.__file__).read_text()


def _rows(prices: PricePanel, *values: float) -> np.ndarray:
    return np.tile(np.array(values, dtype=np.float64), (prices.n_symbols, 1))


def _kernel_weights(kind: int, prices: PricePanel, *values: float) -> np.ndarray:
    return builtin_weights_nb(kind, _rows(prices, *values), prices.high, prices.low, prices.close)


def sma_crossover(prices: PricePanel, fast: int = 10, slow: int = 50, short: float = 0) -> np.ndarray:
    """1 while SMA(fast) > SMA(slow), else 0 (or -1 with short=1)."""
    return _kernel_weights(signals_nb.SMA_CROSSOVER, prices, fast, slow, float(bool(short)))


def momentum(prices: PricePanel, lookback: int = 126) -> np.ndarray:
    """1 while close / close ``lookback`` bars ago > 1, else 0."""
    return _kernel_weights(signals_nb.MOMENTUM, prices, lookback)


def rsi_reversion(prices: PricePanel, period: int = 14, lower: float = 30, upper: float = 70) -> np.ndarray:
    """Wilder's RSI: enter long when RSI < lower, exit when RSI > upper."""
    return _kernel_weights(signals_nb.RSI_REVERSION, prices, period, lower, upper)


def bollinger_reversion(prices: PricePanel, window: int = 20, k: float = 2.0) -> np.ndarray:
    """Enter long when close < SMA - k*std (ddof=0), exit when close > SMA."""
    return _kernel_weights(signals_nb.BOLLINGER_REVERSION, prices, window, k)


def donchian_breakout(prices: PricePanel, window: int = 20) -> np.ndarray:
    """Enter long on a close above the previous ``window`` bars' highest high, exit below their lowest low."""
    return _kernel_weights(signals_nb.DONCHIAN_BREAKOUT, prices, window)


def buy_and_hold(prices: PricePanel) -> np.ndarray:
    """Weight 1 from the first bar: the benchmark."""
    return _kernel_weights(signals_nb.BUY_AND_HOLD, prices)


def _fast_below_slow(c: Mapping[str, float]) -> str | None:
    return None if c["fast"] < c["slow"] else f"fast ({c['fast']:g}) must be below slow ({c['slow']:g})"


def _lower_below_upper(c: Mapping[str, float]) -> str | None:
    if not (0 <= c["lower"] < c["upper"] <= 100):
        return f"need 0 <= lower ({c['lower']:g}) < upper ({c['upper']:g}) <= 100"
    return None


def _positive_k(c: Mapping[str, float]) -> str | None:
    if c["window"] < 2:
        return f"window ({c['window']:g}) must be at least 2"
    return None if c["k"] > 0 else f"k ({c['k']:g}) must be positive"


def _builtin(
    func: StrategyFunc,
    kernel: int,
    grid: Mapping[str, list[float]],
    integer_params: tuple[str, ...],
    warmup: tuple[str, ...],
    check: ComboCheck | None = None,
) -> Strategy:
    base = strategy_from_function(func, grid=grid, integer_params=integer_params, check=check)
    return register(
        Strategy(
            name=base.name,
            func=func,
            params=base.params,
            defaults=base.defaults,
            default_grid=base.default_grid,
            kernel=kernel,
            integer_params=base.integer_params,
            check=check,
            warmup_params=warmup,
            description=base.description,
            _extra_sources=(_KERNEL_SOURCE,),
        )
    )


_builtin(
    sma_crossover,
    signals_nb.SMA_CROSSOVER,
    {"fast": list(range(5, 55, 5)), "slow": list(range(60, 260, 20))},
    ("fast", "slow"),
    ("slow",),
    _fast_below_slow,
)
_builtin(
    momentum, signals_nb.MOMENTUM, {"lookback": [21, 42, 63, 126, 189, 252]}, ("lookback",), ("lookback",)
)
_builtin(
    rsi_reversion,
    signals_nb.RSI_REVERSION,
    {"period": [7, 14, 21], "lower": [20, 25, 30, 35], "upper": [55, 65, 75]},
    ("period",),
    ("period",),
    _lower_below_upper,
)
_builtin(
    bollinger_reversion,
    signals_nb.BOLLINGER_REVERSION,
    {"window": [10, 20, 40, 60], "k": [1.0, 1.5, 2.0, 2.5]},
    ("window",),
    ("window",),
    _positive_k,
)
_builtin(
    donchian_breakout,
    signals_nb.DONCHIAN_BREAKOUT,
    {"window": [10, 20, 55, 100, 150]},
    ("window",),
    ("window",),
)
_builtin(buy_and_hold, signals_nb.BUY_AND_HOLD, {}, (), ())
