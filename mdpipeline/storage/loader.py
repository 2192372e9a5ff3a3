"""Idempotent partition replacement: a date range of one provider's rows is swapped in one transaction.

Re-running a range never duplicates rows; a failure anywhere rolls back to the previous rows. A row
that comes back with the same values keeps its `ingested_at` (when the pipeline first learnt it), so
point-in-time reads are not disturbed by re-runs; a corrected row gets the new time.
"""

from __future__ import annotations

from datetime import date

import polars as pl
import psycopg
from psycopg import sql

from mdpipeline.storage.binary_copy import copy_frame
from mdpipeline.storage.partitions import ensure_partitions

# Primary keys of the time-partitioned tables; everything else but lineage is a compared value.
TABLE_KEYS: dict[str, tuple[str, ...]] = {
    "md.bars_1d": ("instrument_id", "provider", "session_date"),
    "md.bars_1m": ("instrument_id", "provider", "session_date", "ts"),
    "md.ticks": ("instrument_id", "provider", "session_date", "ts", "sequence"),
}
LINEAGE_COLUMNS = ("ingested_at", "run_id", "raw_payload_id")


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
    target = sql.Identifier(schema, name)
    in_range = sql.SQL("provider = %s and session_date between %s and %s")
    with conn.transaction():
        ensure_partitions(conn, table, start, end)
        if "ingested_at" not in frame.columns or table not in TABLE_KEYS:
            conn.execute(sql.SQL("delete from {} where {}").format(target, in_range), (provider, start, end))
            with conn.cursor() as cur:
                return copy_frame(cur, table, frame)
        staging = sql.Identifier(f"_load_{name}")
        conn.execute(sql.SQL("create temporary table {} (like {}) on commit drop").format(staging, target))
        with conn.cursor() as cur:
            copy_frame(cur, f"_load_{name}", frame)
        existing = conn.execute(sql.SQL("select exists (select 1 from {} where {})").format(target, in_range),
                                (provider, start, end)).fetchone()
        if existing and existing[0]:  # a re-load: unchanged rows keep when they were first learnt
            conn.execute(sql.SQL("analyze {}").format(staging))  # temp tables get no statistics otherwise
            conn.execute(_keep_learned_sql(table, frame.columns, staging, target), (provider, start, end))
        conn.execute(sql.SQL("delete from {} where {}").format(target, in_range), (provider, start, end))
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in frame.columns)
        loaded = conn.execute(sql.SQL("insert into {} ({}) select {} from {}").format(
            target, columns, columns, staging)).rowcount
        conn.execute(sql.SQL("drop table {}").format(staging))
        return loaded


def _keep_learned_sql(table: str, columns: list[str], staging: sql.Identifier, target: sql.Identifier) -> sql.Composed:
    """UPDATE staging rows to the stored `ingested_at` where key and values are unchanged."""
    keys = TABLE_KEYS[table]
    values = [c for c in columns if c not in keys and c not in LINEAGE_COLUMNS]
    return sql.SQL(
        "update {s} n set ingested_at = o.ingested_at from {t} o "
        "where o.provider = %s and o.session_date between %s and %s and ({ok}) = ({nk}) "
        "and ({ov}) is not distinct from ({nv})"
    ).format(
        s=staging, t=target,
        ok=sql.SQL(", ").join(sql.Identifier("o", c) for c in keys),
        nk=sql.SQL(", ").join(sql.Identifier("n", c) for c in keys),
        ov=sql.SQL(", ").join(sql.Identifier("o", c) for c in values),
        nv=sql.SQL(", ").join(sql.Identifier("n", c) for c in values),
    )
