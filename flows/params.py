"""The study flow's parameters: one typed model, so the Prefect UI renders a form and refuses bad values
before any work starts."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from backtest import defaults as D
from backtest.config import Execution, FoldSpec, Objective, ParamGrid, StudyConfig
from backtest.engine.strategies import get_strategy
from backtest.errors import BacktestError
from backtest.observe.alerts import AlertThresholds
from backtest.ranking.portfolio import DEFAULT_REBALANCE, DEFAULT_TOP, SIDES, WEIGHTINGS, Construction

Runner = Literal[D.RUNNERS]  # type: ignore[valid-type] - the choices, written once in backtest.defaults
Side = Literal[SIDES]  # type: ignore[valid-type]
Weighting = Literal[WEIGHTINGS]  # type: ignore[valid-type]
#: the parameters of cross-sectional studies only
RANKING_ONLY = ("top", "quantile", "side", "weighting", "max_weight", "rebalance", "universe")
#: a Monday: train windows are measured in weekdays from here, as ``check_warmup`` counts them
_NOMINAL_START = dt.date(2001, 1, 1)


class StudyParams(BaseModel):
    """A three-phase walk-forward study: what to test, on which data, and how to run it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    store: str = Field("data/store", description="Folder of the price store (filled by `backtest ingest`).")
    out: str | None = Field(None, description="Folder for the results; default: <store>/runs/<flow run id>.")
    strategy: str = Field(D.STRATEGY, description="A built-in strategy or package.module:function.")
    grid: dict[str, list[float | str]] | None = Field(
        None,
        description="Parameter values to search, e.g. {'fast': [5, 10], 'slow': [60, 120]}; default grid if "
        "empty. A ranking study's side and weighting by name: {'side': ['long', 'long_short']}.",
    )
    train_years: float = Field(D.TRAIN_YEARS, gt=0, description="Length of each train window (phase 1).")
    validate_years: float = Field(
        D.VALIDATE_YEARS, gt=0, description="Length of each validate window (phase 2)."
    )
    test_years: float = Field(
        D.TEST_YEARS, gt=0, description="Length of each test window (phase 3); folds advance by it."
    )
    anchored: bool = Field(
        D.ANCHORED, description="Expanding train windows from the first date instead of rolling."
    )
    top_k: int = Field(D.TOP_K, ge=D.MIN_TOP_K, description="Combinations kept per symbol after phase 1.")
    objective: Objective = Field(
        D.OBJECTIVE, description="Score that ranks the combinations in phases 1 and 2."
    )
    min_trades: int = Field(
        D.MIN_TRADES, ge=0, description="Fewest trades in the train window for a combination to count."
    )
    fees_bps: float = Field(
        D.FEES_BPS, ge=0, lt=D.MAX_BPS, description="Fees, basis points of traded notional."
    )
    slippage_bps: float = Field(
        D.SLIPPAGE_BPS, ge=0, lt=D.MAX_BPS, description="Slippage, basis points of traded notional."
    )
    execution: Execution = Field(D.EXECUTION, description="Fill at the signal's close or next open.")
    start: dt.date | None = Field(
        None, description="First date of the study (default: first date in the store)."
    )
    end: dt.date | None = Field(None, description="Last date of the study (default: last date in the store).")
    pbo_blocks: int = Field(
        D.PBO_BLOCKS,
        ge=2,
        le=D.MAX_PBO_BLOCKS,
        multiple_of=2,
        description="Blocks the trials' history is cut into for the probability of backtest overfitting "
        "(CSCV: every half of them in sample once).",
    )
    symbols: list[str] | None = Field(None, description="Symbols to study (default: all in the store).")
    # -- cross-sectional studies (a ranking strategy): how the scores become a portfolio (docs/cross_sectional.md)
    top: int | None = Field(
        None,
        ge=1,
        description="Ranking strategies: hold the N best scores (default 50 unless quantile is given).",
    )
    quantile: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Ranking strategies: hold the best share of the eligible symbols instead.",
    )
    side: Side = Field("long", description="Ranking strategies: long, or long_short (the worst shorted).")
    weighting: Weighting = Field(
        "equal", description="Ranking strategies: equal, score (by rank) or inverse_vol."
    )
    max_weight: float = Field(
        1.0, gt=0, le=1, description="Ranking strategies: largest weight of one symbol."
    )
    rebalance: int = Field(
        DEFAULT_REBALANCE, ge=1, description="Ranking strategies: trading days between rebalances."
    )
    universe: str | None = Field(
        None,
        description="Ranking strategies: a point-in-time membership file (CSV symbol,start,end; end empty = "
        "still a member).",
    )
    runner: Runner = Field(D.RUNNER, description="Task runner: threads, processes, or dask.")
    workers: int | None = Field(None, ge=1, description="Concurrent chunks (default: the number of CPUs).")
    dask_address: str | None = Field(None, description="Address of an existing Dask scheduler (runner dask).")
    db: str | None = Field(
        None,
        description="Database URL (sqlite:///file.db or postgresql+psycopg://user:pw@host/db): read the prices "
        "from it and write the results into it. Default: prices from the store, results to <store>/backtest.db.",
    )
    persist: bool = Field(True, description="Write the run's results into the database.")
    report: bool = Field(
        True,
        description="Draw the plots and write report.html at the end (summary.json, profile.json and the "
        "artifacts are written either way; `backtest report OUT` builds the report later).",
    )
    persist_oos: bool = Field(
        False, description="Also write every out-of-sample daily return into the database (large: slow)."
    )
    chunk_size: int | None = Field(
        None, ge=1, description="Symbols per chunk (default: chosen from the workload)."
    )
    cache_max_gb: float = Field(D.CACHE_MAX_GB, gt=0, description="Size limit of the result cache.")
    cache_max_age_days: float = Field(
        D.CACHE_MAX_AGE_DAYS, gt=0, description="Cached results older than this are removed."
    )
    monitor_interval: float = Field(
        D.MONITOR_INTERVAL,
        gt=0,
        le=D.MAX_MONITOR_INTERVAL,
        description="Seconds between resource samples of the run's processes.",
    )
    alerts: AlertThresholds = Field(
        default_factory=AlertThresholds, description="Alert thresholds (each alert is raised once per run)."
    )

    @model_validator(mode="after")
    def _check(self) -> StudyParams:
        try:
            strategy = get_strategy(self.strategy)
            config = self.to_config()
            if strategy.kind == "ranking":
                from backtest.ranking.study import construction_rows, split_grid

                score_axes, build_axes = split_grid(strategy, self.grid_spec())
                _, combos = strategy.combinations(ParamGrid(score_axes) if score_axes else None)
                construction_rows(self.construction(), build_axes)
            else:
                _, combos = strategy.combinations(self.grid_spec())
                given = [n for n in RANKING_ONLY if getattr(self, n) != StudyParams.model_fields[n].default]
                if given:
                    raise ValueError(
                        f"{', '.join(given)} apply to ranking strategies only (momentum_rank, ...); "
                        f"{strategy.name} is a timing strategy"
                    )
        except BacktestError as exc:
            raise ValueError(str(exc)) from None
        # The exact check needs the data's calendar (backtest.engine.folds.check_warmup, at plan time); the same rule
        # on a nominal calendar refuses hopeless windows here, before a deployment's run starts any work.
        train_months = config.folds.months()[0]
        warmup = strategy.warmup(combos)
        bars = int(
            np.busday_count(_NOMINAL_START, (_NOMINAL_START + pd.DateOffset(months=train_months)).date())
        )
        if warmup > 0 and bars <= warmup:
            raise ValueError(
                f"train_years={self.train_years:g} is about {bars} trading days, not longer than the slowest "
                f"indicator of {strategy.name} ({warmup} bars): lengthen train_years or shorten the indicator "
                "windows"
            )
        return self

    def grid_spec(self) -> ParamGrid | None:
        return ParamGrid.from_mapping(self.grid) if self.grid else None

    def to_config(self) -> StudyConfig:
        return StudyConfig(
            strategy=self.strategy,
            grid=self.grid_spec(),
            folds=FoldSpec(self.train_years, self.validate_years, self.test_years, self.anchored),
            top_k=self.top_k,
            objective=self.objective,
            min_trades=self.min_trades,
            fees_bps=self.fees_bps,
            slippage_bps=self.slippage_bps,
            execution=self.execution,
            start=self.start,
            end=self.end,
            pbo_blocks=self.pbo_blocks,
        )

    def kind(self) -> str:
        """``ranking`` for a cross-sectional study, ``timing`` otherwise (the strategy says which)."""
        return get_strategy(self.strategy).kind

    def construction(self) -> Construction:
        """The portfolio options of a ranking strategy (each one also a possible grid parameter)."""
        return Construction(
            top=self.top if self.top is not None else (0 if self.quantile else DEFAULT_TOP),
            quantile=self.quantile or 0.0,
            side=self.side,
            weighting=self.weighting,
            max_weight=self.max_weight,
            rebalance=self.rebalance,
        )

    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1

    @field_validator("db")
    @classmethod
    def _check_db(cls, value: str | None) -> str | None:
        if value is not None:
            from backtest.db.engine import DatabaseError, parse_url

            try:
                parse_url(value)
            except DatabaseError as exc:
                raise ValueError(str(exc)) from None
        return value

    def public_dump(self) -> dict[str, Any]:
        """The parameters as JSON for summary.json, artifacts and the database: a password in ``db`` masked."""
        from backtest.db.engine import describe_url

        values = self.model_dump(mode="json")
        if values.get("db"):
            values["db"] = describe_url(values["db"])
        return values

    def results_db(self) -> str:
        """Where the run's results go: ``db``, or the SQLite file beside the store's catalog."""
        return self.db or f"sqlite:///{Path(self.store).resolve() / 'backtest.db'}"
