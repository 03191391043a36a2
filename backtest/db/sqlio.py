"""Moving columns in and out of the database in bulk, and the dialect-specific SQL constructs this needs.

Row-by-row Python is what makes database I/O slow, so:
- inserts take whole columns (NumPy arrays): PostgreSQL gets them as one CSV stream through ``COPY FROM``
  (written by Arrow's C++ CSV writer); SQLite gets one ``executemany`` of the statement SQLAlchemy compiles,
  with the values converted column-wise (dates to day numbers in one vectorised call), not per value;
- reads come back as NumPy/Arrow columns: PostgreSQL streams ``COPY (SELECT ...) TO STDOUT`` into Arrow's CSV
  parser; SQLite is fetched in batches of rows of plain numbers flattened with ``np.fromiter``, on the
  driver's cursor (no SQLAlchemy ``Row`` per row).
Both paths are timed into the process's ``QueryLog`` (they bypass SQLAlchemy's cursor events).

Undefined floats (NaN) become NULL on both backends; ``epoch_day`` turns a DATE into days since 1970 in SQL,
so no date object is ever built per row.
"""

from __future__ import annotations

import datetime as dt
import io
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ClauseElement, Executable, FunctionElement

from backtest.db import adbc
from backtest.db.adbc import use_arrow_sqlite
from backtest.db.engine import SQLITE_BUSY_TIMEOUT_MS, one_sqlite_library, query_log
from backtest.db.schema import EPOCH_ORDINAL

__all__ = [
    "Explain",
    "bulk_insert",
    "epoch_day",
    "fetch_numeric",
    "pg_copy_out",
    "sqlite_arrow",
    "use_arrow_sqlite",
]

_SQLITE_BATCH = 50_000


class epoch_day(FunctionElement):
    """Days since 1970-01-01 of a DATE column, as an integer, computed by the database."""

    type = sa.Integer()
    inherit_cache = True


@compiles(epoch_day, "sqlite")
def _epoch_day_sqlite(element: epoch_day, compiler: Any, **kw: Any) -> str:
    # dates are stored as days since 1970 on SQLite (schema.EpochDay)
    return compiler.process(element.clauses, **kw)


@compiles(epoch_day, "postgresql")
def _epoch_day_pg(element: epoch_day, compiler: Any, **kw: Any) -> str:
    # date - date is an integer number of days in PostgreSQL
    return f"({compiler.process(element.clauses, **kw)} - DATE '1970-01-01')"


class Explain(Executable, ClauseElement):
    """``EXPLAIN QUERY PLAN`` (SQLite) / ``EXPLAIN (FORMAT JSON)`` (PostgreSQL) of a statement with its values."""

    inherit_cache = False

    def __init__(self, statement: sa.Executable) -> None:
        self.statement = statement


@compiles(Explain, "sqlite")
def _explain_sqlite(element: Explain, compiler: Any, **kw: Any) -> str:
    return "EXPLAIN QUERY PLAN " + compiler.process(element.statement, **kw)


@compiles(Explain, "postgresql")
def _explain_pg(element: Explain, compiler: Any, **kw: Any) -> str:
    return "EXPLAIN (FORMAT JSON) " + compiler.process(element.statement, **kw)


def _qualified(conn: Connection, table: sa.Table, names: Sequence[str]) -> str:
    prep = conn.dialect.identifier_preparer
    return f"{prep.format_table(table)} ({', '.join(prep.quote(n) for n in names)})"


def _column_values(column: sa.Column, values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if isinstance(column.type, sa.Date):
        return arr.astype("datetime64[D]")
    return arr


def bulk_insert(conn: Connection, table: sa.Table, columns: Mapping[str, Any]) -> int:
    """Insert equal-length columns (NumPy arrays or lists) into ``table`` inside ``conn``'s transaction."""
    names = list(columns)
    arrays = [_column_values(table.c[n], columns[n]) for n in names]
    n_rows = len(arrays[0]) if arrays else 0
    if n_rows == 0:
        return 0
    if conn.dialect.name == "postgresql":
        _copy_in(conn, table, names, arrays)
    else:
        _sqlite_insert(conn, table, names, arrays)
    return n_rows


def _copy_in(conn: Connection, table: sa.Table, names: list[str], arrays: list[np.ndarray]) -> None:
    data = pa.table({n: _arrow(a) for n, a in zip(names, arrays, strict=True)})
    sink = io.BytesIO()
    pacsv.write_csv(data, sink, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
    statement = f"COPY {_qualified(conn, table, names)} FROM STDIN WITH (FORMAT csv)"
    dbapi = conn.connection.driver_connection
    with query_log().timed(statement), dbapi.cursor() as cursor, cursor.copy(statement) as copy:
        copy.write(sink.getvalue())


def _arrow(arr: np.ndarray) -> pa.Array:
    if arr.dtype.kind == "f":
        return pa.array(arr, from_pandas=True)  # NaN -> null -> NULL
    if arr.dtype.kind == "M":
        return pa.array(arr.astype("datetime64[D]"), pa.date32())
    if arr.dtype.kind == "O":
        return pa.array(arr.tolist(), pa.string())
    return pa.array(arr)


def _sqlite_values(arr: np.ndarray) -> list[Any]:
    if arr.dtype.kind == "M":
        return arr.astype("datetime64[D]").astype(np.int64).tolist()  # schema.EpochDay
    # tolist() gives Python floats; sqlite3 binds NaN as NULL
    return arr.tolist()


def _sqlite_insert(conn: Connection, table: sa.Table, names: list[str], arrays: list[np.ndarray]) -> None:
    compiled = sa.insert(table).compile(dialect=conn.dialect, column_keys=names)
    order = compiled.positiontup or []
    by_name = dict(zip(names, arrays, strict=True))
    values = [_sqlite_values(by_name[name]) for name in order]
    statement = str(compiled)
    cursor = conn.connection.driver_connection.cursor()
    try:
        with query_log().timed(statement):
            cursor.executemany(statement, zip(*values, strict=True))
    finally:
        cursor.close()


def fetch_numeric(conn: Connection, statement: sa.Select, width: int) -> np.ndarray:
    """A query whose ``width`` columns are all numbers, as one float64 array of shape (rows, width).

    The statement SQLAlchemy compiles runs on the driver's own cursor: its plain tuples are flattened in C
    (``np.fromiter``) batch by batch, without building a SQLAlchemy ``Row`` per row (which would double the
    time of a chunk load).
    """
    compiled = statement.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    values = compiled.construct_params()
    params = [_driver_value(values[name]) for name in compiled.positiontup or []]
    sql = str(compiled)
    parts = []
    cursor = conn.connection.driver_connection.cursor()
    try:
        with query_log().timed(sql):
            cursor.execute(sql, params)
            while batch := cursor.fetchmany(_SQLITE_BATCH):
                flat = np.fromiter(itertools.chain.from_iterable(batch), np.float64, count=len(batch) * width)
                parts.append(flat.reshape(len(batch), width))
    finally:
        cursor.close()
    if not parts:
        return np.empty((0, width))
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _driver_value(value: Any) -> Any:
    # the only typed values our numeric queries bind are dates: days since 1970 on SQLite (schema.EpochDay)
    return value.toordinal() - EPOCH_ORDINAL if isinstance(value, dt.date) else value


def sqlite_arrow(engine: Engine, statement: sa.Select) -> pa.Table:
    """A SQLite query compiled by SQLAlchemy, run by Arrow's ADBC SQLite driver into an Arrow table.

    Python's sqlite3 builds a tuple per row; ADBC decodes the rows in C, several times faster, which is what
    brings a cold chunk load near the Parquet store's. It opens its own short-lived connection to the same
    file (WAL: it reads the last committed state without blocking writers), with the same busy timeout.
    """
    assert adbc.driver is not None
    compiled = statement.compile(dialect=engine.dialect, compile_kwargs={"render_postcompile": True})
    values = compiled.construct_params()
    params = [_driver_value(values[name]) for name in compiled.positiontup or []]
    sql = str(compiled)
    database = str(engine.url.database)
    with one_sqlite_library(database), query_log().timed(sql), adbc.driver.connect(database) as connection:
        with connection.cursor() as cursor:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute(sql, params)
            table = cursor.fetch_arrow_table()
        connection.rollback()
    return table


def pg_copy_out(conn: Connection, statement: sa.Select, schema: pa.Schema) -> pa.Table:
    """Stream a PostgreSQL query through ``COPY ... TO STDOUT`` into an Arrow table of ``schema``."""
    compiled = statement.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    sql = f"COPY ({compiled}) TO STDOUT WITH (FORMAT csv)"
    dbapi = conn.connection.driver_connection
    buffer = io.BytesIO()
    with query_log().timed(sql), dbapi.cursor() as cursor, cursor.copy(sql, compiled.params) as copy:
        for block in copy:
            buffer.write(block)
    if buffer.tell() == 0:
        return schema.empty_table()
    buffer.seek(0)
    return pacsv.read_csv(
        buffer,
        read_options=pacsv.ReadOptions(column_names=schema.names),
        convert_options=pacsv.ConvertOptions(column_types=schema),
    )
