"""Idempotent partition replacement: a date range of one provider's rows is swapped in one transaction.

Re-running a range never duplicates rows; a failure anywhere rolls back to the previous rows.
"""

from __future__ import annotations

from datetime import date

import polars as pl
import psycopg
from psycopg import sql

from mdpipeline.storage.binary_copy import copy_frame
from mdpipeline.storage.partitions import ensure_partitions


def replace_range(
    conn: psycopg.Connection,
    table: str,
    frame: pl.DataFrame,
    *,
    provider: str,
    start: date,
    end: date,
) -> int:
    """Replace `table`'s rows of `provider` with session_date in [start, end] by `frame`.

    Runs in its own transaction (or a savepoint when the caller already opened one). Rows of
    `frame` outside the range are a programming error and rejected before anything is deleted.
    """
    if frame.height:
        outside = frame.filter(
            (pl.col("session_date") < start) | (pl.col("session_date") > end)
            | (pl.col("provider") != provider)
        )
        if outside.height:
            raise ValueError(
                f"{outside.height} rows for {table} fall outside provider={provider} "
                f"[{start}, {end}]; refusing to load"
            )
    schema, name = table.split(".")
    with conn.transaction():
        ensure_partitions(conn, table, start, end)
        conn.execute(
            sql.SQL("delete from {} where provider = %s and session_date between %s and %s").format(
                sql.Identifier(schema, name)
            ),
            (provider, start, end),
        )
        with conn.cursor() as cur:
            return copy_frame(cur, table, frame)
