"""The database schema (SQLAlchemy Core): prices and their catalog, runs and their results.

Design choices:
- ``prices`` is keyed by (symbol, date) and, on SQLite, stored ``WITHOUT ROWID``: the table *is* its
  primary-key b-tree, so a chunk's rows for a date range are one contiguous range read per symbol.
- ``symbols`` is the catalog a study plans from. ``data_fingerprint`` is the same value-based hash the
  Parquet store computes (``backtest.data.store.table_fingerprint``), written in the same transaction as the
  symbol's rows, so identical data has identical cache keys whichever source it comes from, and changing one
  symbol's rows changes only its chunk's key.
- Results are keyed by an integer run id (not the 36-character flow run id) because the out-of-sample table
  can hold tens of millions of rows. Child rows cascade when a run is pruned.
- Floating-point results that are undefined (NaN) are stored as NULL on every backend.
- Dates are ``DATE`` on PostgreSQL and whole days since 1970-01-01 (``INTEGER``) on SQLite, where
  SQLAlchemy's default would be ISO text: a chunk load then reads plain integers instead of parsing text per
  row (about a fifth of its time). Through SQLAlchemy both read back as ``datetime.date``; in the sqlite3
  shell, ``date(date * 86400, 'unixepoch')`` shows them.
- Indexes beyond the primary keys serve the look-ups the system makes (see ``backtest.db.optimize``); they
  are created by migration 2, so the tables here carry none.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from backtest.engine.metrics import METRIC_NAMES

__all__ = [
    "EPOCH_ORDINAL",
    "INDEXES",
    "RESULT_INDEXES",
    "Day",
    "EpochDay",
    "chunks",
    "metadata",
    "oos_returns",
    "portfolio",
    "prices",
    "run_overfitting",
    "runs",
    "schema_version",
    "selections",
    "symbol_metrics",
    "symbols",
]


class EpochDay(sa.types.TypeDecorator[dt.date]):
    """A date stored as days since 1970-01-01 (SQLite's variant of ``Day``)."""

    impl = sa.Integer
    cache_ok = True

    def process_bind_param(self, value: dt.date | None, dialect: sa.Dialect) -> int | None:
        if value is None:
            return None
        if isinstance(value, dt.datetime):
            value = value.date()
        return value.toordinal() - EPOCH_ORDINAL

    def process_result_value(self, value: int | None, dialect: sa.Dialect) -> dt.date | None:
        return None if value is None else dt.date.fromordinal(int(value) + EPOCH_ORDINAL)


EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
#: the type of every date column: DATE, or whole days on SQLite
Day = sa.Date().with_variant(EpochDay(), "sqlite")

metadata = sa.MetaData()

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
)

symbols = sa.Table(
    "symbols",
    metadata,
    sa.Column("symbol", sa.Text, primary_key=True),
    sa.Column("first_date", Day, nullable=False),
    sa.Column("last_date", Day, nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("data_fingerprint", sa.String(64), nullable=False),
    sa.Column("source_file", sa.Text, nullable=False, server_default=""),
    sa.Column("ingested_at", sa.DateTime(timezone=True), nullable=False),
)

prices = sa.Table(
    "prices",
    metadata,
    sa.Column("symbol", sa.Text, sa.ForeignKey("symbols.symbol", ondelete="CASCADE"), primary_key=True),
    sa.Column("date", Day, primary_key=True),
    sa.Column("open", sa.Double, nullable=False),
    sa.Column("high", sa.Double, nullable=False),
    sa.Column("low", sa.Double, nullable=False),
    sa.Column("close", sa.Double, nullable=False),
    sa.Column("volume", sa.Double, nullable=False),
    sqlite_with_rowid=False,
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("flow_run_id", sa.String(64), nullable=True, unique=True),
    sa.Column("strategy", sa.Text, nullable=False),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("wall_seconds", sa.Double, nullable=True),
    sa.Column("price_source", sa.Text, nullable=False, server_default=""),
    sa.Column("config", sa.JSON, nullable=False),
    sa.Column("summary", sa.JSON, nullable=True),
    # migration 3: what the run's results are (the collected key of its chunks, plus "+oos" when its
    # out-of-sample returns were written), and, for a run whose results another run already holds, that
    # run's id: a warm re-run records itself as a pointer instead of rewriting identical rows
    sa.Column("results_key", sa.String(96), nullable=True),
    sa.Column("results_of", sa.Integer, nullable=True),
)

chunks = sa.Table(
    "chunks",
    metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("chunk", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("cache_key", sa.String(80), nullable=False),
    sa.Column("symbols", sa.Integer, nullable=False),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("selections", sa.Integer, nullable=False, server_default="0"),
    sa.Column("oos_rows", sa.Integer, nullable=False, server_default="0"),
    sa.Column("written_at", sa.DateTime(timezone=True), nullable=False),
)

selections = sa.Table(
    "selections",
    metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("symbol", sa.Text, primary_key=True),
    sa.Column("fold", sa.SmallInteger, primary_key=True, autoincrement=False),
    sa.Column("train_start", Day, nullable=False),
    sa.Column("train_end", Day, nullable=False),
    sa.Column("validate_start", Day, nullable=False),
    sa.Column("validate_end", Day, nullable=False),
    sa.Column("test_start", Day, nullable=False),
    sa.Column("test_end", Day, nullable=False),
    sa.Column("combo", sa.Integer, nullable=False),
    sa.Column("params", sa.Text, nullable=False),
    sa.Column("is_score", sa.Double),
    sa.Column("val_score", sa.Double),
    sa.Column("test_score", sa.Double),
    sa.Column("degradation", sa.Double),
    sa.Column("train_rank", sa.SmallInteger, nullable=False),
    sa.Column("basis", sa.String(16), nullable=False),
    sa.Column("test_return", sa.Double),
    sa.Column("test_days", sa.Integer, nullable=False),
    sqlite_with_rowid=False,
)

symbol_metrics = sa.Table(
    "symbol_metrics",
    metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("symbol", sa.Text, primary_key=True),
    *(sa.Column(name, sa.Double) for name in METRIC_NAMES),
    sa.Column("folds", sa.Integer, nullable=False),
    # migration 4: the probabilistic and deflated Sharpe ratio of the symbol's out-of-sample series
    sa.Column("psr", sa.Double),
    sa.Column("dsr", sa.Double),
    sqlite_with_rowid=False,
)

#: migration 4: a run's statistics of luck (docs/design.md section 7), one row per completed run
run_overfitting = sa.Table(
    "run_overfitting",
    metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("trials", sa.Integer, nullable=False),
    sa.Column("sharpe_variance", sa.Double),
    sa.Column("psr", sa.Double),
    sa.Column("dsr", sa.Double),
    sa.Column("pbo", sa.Double),
    sa.Column("degradation_slope", sa.Double),
    sa.Column("spa_pvalue", sa.Double),
    sa.Column("observations", sa.Integer),
    sa.Column("skewness", sa.Double),
    sa.Column("kurtosis", sa.Double),
    sa.Column("daily_sharpe", sa.Double),
    sa.Column("sharpe_star", sa.Double),
    sa.Column("blocks", sa.Integer),
    sa.Column("splits", sa.Integer),
    sa.Column("verdict", sa.Text),
)

oos_returns = sa.Table(
    "oos_returns",
    metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("symbol", sa.Text, primary_key=True),
    sa.Column("date", Day, primary_key=True),
    sa.Column("fold", sa.SmallInteger, nullable=False),
    sa.Column("ret", sa.Double),
    sa.Column("traded", sa.Double),
    sa.Column("held", sa.Double),
    sqlite_with_rowid=False,
)

portfolio = sa.Table(
    "portfolio",
    metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("date", Day, primary_key=True),
    sa.Column("ret", sa.Double),
    sa.Column("n_symbols", sa.Integer, nullable=False),
    sa.Column("turnover", sa.Double),
    sa.Column("gross_exposure", sa.Double),
    sa.Column("benchmark_ret", sa.Double),
    sa.Column("equity", sa.Double),
    sa.Column("benchmark_equity", sa.Double),
    sqlite_with_rowid=False,
)

#: migration 5: a cross-sectional run's target weights, decided on each rebalance day of its test windows (its
#: selections are one row per fold in ``selections``, with the symbol ``PORTFOLIO_SYMBOL``)
holdings = sa.Table(
    "holdings",
    metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("fold", sa.SmallInteger, primary_key=True, autoincrement=False),
    sa.Column("date", Day, primary_key=True),
    sa.Column("symbol", sa.Text, primary_key=True),
    sa.Column("weight", sa.Double, nullable=False),
    sqlite_with_rowid=False,
)
#: the ``selections.symbol`` of a cross-sectional run's rows: its selections are the portfolio's, per fold
PORTFOLIO_SYMBOL = "*"

#: secondary indexes, each for a look-up the system makes (``optimize.SYSTEM_QUERIES`` checks them)
INDEXES: tuple[sa.Index, ...] = (
    # the latest runs, and runs older than the retention (prune)
    sa.Index("ix_runs_started_at", runs.c.started_at),
    # runs of one strategy, newest first
    sa.Index("ix_runs_strategy_started", runs.c.strategy, runs.c.started_at),
    # one symbol's selections and metrics across runs (`backtest results --symbol S` without --run)
    sa.Index("ix_selections_symbol_run", selections.c.symbol, selections.c.run_id),
    sa.Index("ix_symbol_metrics_symbol_run", symbol_metrics.c.symbol, symbol_metrics.c.run_id),
)

#: created by migration 3: the run holding given results (a warm re-run's look-up), the runs pointing at one
RESULT_INDEXES: tuple[sa.Index, ...] = (
    sa.Index("ix_runs_results_key", runs.c.results_key),
    sa.Index("ix_runs_results_of", runs.c.results_of),
)
