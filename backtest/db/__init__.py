"""The SQL layer: prices and study results in SQLite (default) or PostgreSQL, through SQLAlchemy 2 Core.

Modules: ``engine`` (URLs, one engine per process, SQLite settings, query timing), ``schema`` and
``migrations`` (versioned tables), ``connect`` (opening a database safely), ``sqlio`` (bulk columnar I/O),
``prices`` (the price source and sink), ``results`` (a run's results), ``optimize`` (indexes, query plans,
maintenance, statistics). The core imports none of Prefect.
"""

from backtest.db.connect import open_db
from backtest.db.engine import DatabaseError, describe_url, get_engine, parse_url, query_log

__all__ = ["DatabaseError", "describe_url", "get_engine", "open_db", "parse_url", "query_log"]
