"""Reads out of PostgreSQL into polars through COPY, with explicit column types."""

from __future__ import annotations

import io
from typing import Any

import polars as pl
import psycopg
from psycopg import sql


def read_frame(
    conn: psycopg.Connection,
    query: sql.Composable | str,
    params: tuple[Any, ...] | None,
    schema: dict[str, pl.DataType],
) -> pl.DataFrame:
    """Run `query` through `COPY (...) TO STDOUT` and parse it columnar with the given schema.

    Connections from `mdpipeline.storage.database.connect` run in UTC, so timestamps parse as UTC.
    """
    query_sql = sql.SQL(query) if isinstance(query, str) else query
    bound = query_sql.as_string(conn) if params is None else _bind(conn, query_sql, params)
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
