"""Reads out of PostgreSQL into polars, with explicit column types.

Outside a transaction a read goes through Apache Arrow's ADBC PostgreSQL driver: binary COPY decoded
into Arrow columns in C++, no Python per row (a few times faster than text, on both ends). Inside a
transaction (the read must see that transaction's work, e.g. a temporary table) it is a text COPY on
the same connection, parsed column by column.
"""

from __future__ import annotations

import io
from typing import Any
from urllib.parse import quote, urlencode

import adbc_driver_postgresql.dbapi as adbc
import polars as pl
import psycopg
import pyarrow as pa
from psycopg import sql


def read_frame(
    conn: psycopg.Connection,
    query: sql.Composable | str,
    params: tuple[Any, ...] | None,
    schema: dict[str, pl.DataType],
    reader: ArrowReader | None = None,
) -> pl.DataFrame:
    """Run `query` and return its rows as a frame of exactly `schema` (names, order and types).

    Connections from `mdpipeline.storage.database.connect` run in UTC, so timestamps parse as UTC.
    `reader`: an open ADBC session to read through (a caller making many reads spares a connection
    per read); used only when `conn` has no transaction open, like the session a read opens itself.
    """
    query_sql = sql.SQL(query) if isinstance(query, str) else query
    bound = query_sql.as_string(conn) if params is None else _bind(conn, query_sql, params)
    if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        frame = reader.read_bound(bound, schema) if reader is not None else _read_arrow(conn, bound, schema)
        if frame is not None:
            return frame
    buf = io.BytesIO()
    copy_sql = sql.SQL("copy ({}) to stdout (format csv, header true)").format(sql.SQL(bound))
    with conn.cursor() as cur, cur.copy(copy_sql) as cp:
        for chunk in cp:
            buf.write(chunk)
    if buf.tell() == 0:
        return pl.DataFrame(schema=schema)
    buf.seek(0)
    string_schema = dict.fromkeys(schema, pl.String)
    raw = pl.read_csv(buf, schema_overrides=string_schema, infer_schema=False)
    return raw.select(_cast(name, dtype) for name, dtype in schema.items())


def _read_arrow(conn: psycopg.Connection, query: str, schema: dict[str, pl.DataType]) -> pl.DataFrame | None:
    """`query` (parameters already bound) read through ADBC on a connection to the same database; None
    when a column comes back in a type Arrow only carries opaquely (e.g. jsonb): the text path reads it."""
    with ArrowReader(conn) as reader:
        return reader.read_bound(query, schema)


class ArrowReader:
    """One ADBC connection to the database `conn` is connected to, kept open for many columnar reads
    (a relay's batches): a connection per read costs more than reading 20,000 rows.

    It is a session of its own: it sees what other sessions committed, never `conn`'s open transaction.
    Each read is a transaction of its own (autocommit), so no lock outlives a read.
    """

    def __init__(self, conn: psycopg.Connection) -> None:
        self._conn = conn
        self._adbc = adbc.connect(_uri(conn), autocommit=True)

    def read(self, query: sql.Composable | str, params: tuple[Any, ...] | None,
             schema: dict[str, pl.DataType]) -> pl.DataFrame | None:
        """Rows of `query` as a frame of exactly `schema`; None when a column is of a type Arrow carries opaquely."""
        query_sql = sql.SQL(query) if isinstance(query, str) else query
        bound = query_sql.as_string(self._conn) if params is None else _bind(self._conn, query_sql, params)
        return self.read_bound(bound, schema)

    def read_bound(self, query: str, schema: dict[str, pl.DataType]) -> pl.DataFrame | None:
        """`read` of a query whose parameters are already bound."""
        with self._adbc.cursor() as cur:
            cur.execute(query)
            table = cur.fetch_arrow_table()
        if any(isinstance(field.type, pa.BaseExtensionType) for field in table.schema):
            return None
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        if frame.is_empty():
            return pl.DataFrame(schema=schema)
        return frame.select(pl.col(name).cast(dtype) for name, dtype in schema.items())

    def close(self) -> None:
        """Close the ADBC connection."""
        self._adbc.close()

    def __enter__(self) -> ArrowReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _uri(conn: psycopg.Connection) -> str:
    """A libpq URI of the database `conn` is connected to, with the same credentials."""
    info = conn.info
    params = {k: v for k, v in info.get_parameters().items() if k not in ("user", "dbname", "host", "port")}
    if info.password:
        params["password"] = info.password
    query = urlencode(params, quote_via=quote)
    host = info.host if not info.host.startswith("/") else ""
    if not host:
        params["host"] = info.host
        query = urlencode(params, quote_via=quote)
    return f"postgresql://{quote(info.user, safe='')}@{host}:{info.port}/{quote(info.dbname, safe='')}" + (
        f"?{query}" if query else "")


def _cast(name: str, dtype: pl.DataType) -> pl.Expr:
    col = pl.col(name)
    if isinstance(dtype, pl.Datetime):
        return col.str.to_datetime("%Y-%m-%d %H:%M:%S%.f%#z", time_zone="UTC").dt.cast_time_unit("us").alias(name)
    if isinstance(dtype, pl.Date):
        return col.str.to_date("%Y-%m-%d").alias(name)
    if isinstance(dtype, pl.Boolean):
        return (col == "t").alias(name)
    return col.cast(dtype).alias(name)


def _bind(conn: psycopg.Connection, query: sql.Composable, params: tuple[Any, ...]) -> str:
    """Client-side binding: COPY cannot take server-side parameters."""
    with psycopg.ClientCursor(conn) as cur:
        return cur.mogrify(query.as_string(conn), params)
