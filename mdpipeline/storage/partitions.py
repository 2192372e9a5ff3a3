"""Native range partitions on plain PostgreSQL: created on demand before a load, dropped for retention."""

from __future__ import annotations

from datetime import date, timedelta

import psycopg
from psycopg import sql

from mdpipeline.storage.migrations import HYPERTABLES, TIME_PARTITIONED, storage_layout


def time_bounds(start: date, end: date) -> tuple[date, date]:
    """UTC dates [lower, upper) that surely hold every bar start (`ts`) of the sessions [start, end].

    A session date is the exchange's local date, never more than a day away from the UTC date; the
    bounds give TimescaleDB a predicate on the time dimension of tables chunked on `ts` (chunk
    exclusion), while the exact filter stays on `session_date`. Clamped to the dates Python can hold
    (a request for 0001-01-01 must not overflow).
    """
    return (max(start, date.min + timedelta(days=1)) - timedelta(days=1),
            min(end, date.max - timedelta(days=2)) + timedelta(days=2))


def _bounds(interval: str, day: date) -> tuple[date, date, str]:
    """The partition holding `day`: [lower, upper) and a name suffix."""
    if interval == "1 year":
        return date(day.year, 1, 1), date(day.year + 1, 1, 1), f"y{day.year}"
    if interval == "1 month":
        upper = date(day.year + (day.month == 12), day.month % 12 + 1, 1)
        return date(day.year, day.month, 1), upper, f"m{day:%Y%m}"
    if interval == "1 day":
        return day, date.fromordinal(day.toordinal() + 1), f"d{day:%Y%m%d}"
    raise ValueError(f"unsupported partition interval {interval!r}")


def ensure_partitions(conn: psycopg.Connection, table: str, start: date, end: date) -> list[str]:
    """Create the missing partitions of `table` covering [start, end]; no-op on TimescaleDB (chunks are automatic).

    The partitions of the table's revision table (where a re-load keeps superseded bars) are made
    with them, so that a load never has to create one inside its own transaction. Existing
    partitions are looked up first, so the common case (all there) takes no lock at all. Returns the
    names of the partitions of `table` that cover the range.
    """
    if storage_layout(conn) == "timescaledb":
        return []
    if f"{table}_revisions" in TIME_PARTITIONED:
        _ensure(conn, f"{table}_revisions", start, end)
    return _ensure(conn, table, start, end)


def _ensure(conn: psycopg.Connection, table: str, start: date, end: date) -> list[str]:
    _, interval = TIME_PARTITIONED[table]
    schema, name = table.split(".")
    wanted: list[tuple[str, date, date]] = []
    day = start
    while day <= end:
        lower, upper, suffix = _bounds(interval, day)
        wanted.append((f"{name}_{suffix}", lower, upper))
        day = upper
    existing = {r[0] for r in conn.execute(
        "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid"
        " where i.inhparent = %s::regclass and c.relname = any(%s)", (table, [w[0] for w in wanted]))}
    for part, lower, upper in wanted:
        if part not in existing:
            conn.execute(sql.SQL("create table if not exists {} partition of {} for values from ({}) to ({})").format(
                sql.Identifier(schema, part), sql.Identifier(schema, name), sql.Literal(lower), sql.Literal(upper),
            ))
    return [f"{schema}.{part}" for part, _, _ in wanted]


def drop_partitions_before(conn: psycopg.Connection, table: str, cutoff: date) -> list[str]:
    """Drop whole partitions (TimescaleDB: chunks) of `table` that end on or before `cutoff`; returns their names."""
    if storage_layout(conn) == "timescaledb":
        kind = "timestamptz" if HYPERTABLES[table][0] == "ts" else "date"
        rows = conn.execute(f"select drop_chunks(%s, older_than => %s::{kind})", (table, cutoff)).fetchall()
        return [str(r[0]) for r in rows]
    schema, name = table.split(".")
    rows = conn.execute(
        """
        select c.relname, pg_get_expr(c.relpartbound, c.oid)
        from pg_inherits i join pg_class c on c.oid = i.inhrelid
        join pg_class p on p.oid = i.inhparent join pg_namespace n on n.oid = p.relnamespace
        where n.nspname = %s and p.relname = %s
        """,
        (schema, name),
    ).fetchall()
    dropped: list[str] = []
    for relname, bound in rows:
        upper = date.fromisoformat(bound.split("TO ('")[1][:10])
        if upper <= cutoff:
            conn.execute(sql.SQL("drop table {}").format(sql.Identifier(schema, relname)))
            dropped.append(f"{schema}.{relname}")
    return dropped
