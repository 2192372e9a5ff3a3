"""First loads into TimescaleDB time slices that have no chunk yet: each slice built apart, then attached.

A COPY into a hypertable maintains every index of the chunk row by row. A chunk built apart, COPY into
a table without indexes and then `attach_chunk` (TimescaleDB 2.21+), which builds the hypertable's
indexes on it with one sort each, takes about half the time (docs/performance.md). Only slices that
no chunk overlaps are built this way, so stored rows never move; the rest of a frame is copied into
the hypertable as before. The built tables live in the schema `md_chunks` (migration 14; TimescaleDB's
own chunk schema is not writable by the tables' owner), named for the table and the slice's first day.

Two rules keep the result equal to a plain COPY:

- rows written into a table that is not yet a chunk bypass TimescaleDB's continuous-aggregate
  invalidation, so the span of each attached chunk is recorded afterwards by a no-op update of its
  first and last row through the hypertable; refreshes (explicit or by policy) then recompute it;
- a slice that cannot be attached (a chunk for it appeared meanwhile: a concurrent load of another
  provider, a live-bar writer) rolls back to a savepoint and its rows are copied into the hypertable.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime

import polars as pl
import psycopg
from psycopg import sql

from mdpipeline.storage.binary_copy import copy_frame
from mdpipeline.storage.migrations import HYPERTABLES

SCHEMA = "md_chunks"
# Below this many rows in a slice the DDL (create, attach, two index builds) costs about what it saves.
MIN_ROWS = 10_000
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Slicing:
    """How a hypertable cuts time: its time column and the fixed width of a slice, in microseconds
    since the Unix epoch (TimescaleDB aligns slices on multiples of the width)."""

    column: str
    width_us: int

    def index(self) -> pl.Expr:
        """The slice number of each row."""
        return pl.col(self.column).dt.epoch("us") // self.width_us


_EPOCH = date(1970, 1, 1)


def session_slices(table: str) -> Callable[[date], int] | None:
    """The slice number a session's rows of `table` fall into, by session date, for planning chunks
    (`chunks.plan_chunks(period=...)`); None when the table is not sliced by days.

    A chain that hands a slice's rows to the store step in one chunk lets a first load build the
    slice apart whole; a slice whose rows come in two chunks is built from the first and the rest is
    written into it row by row. By session date, not `ts`: the bars of a session in the Americas and
    Asia fall on its own UTC date (elsewhere a slice edge may be a day off, which costs speed only).
    """
    spec = HYPERTABLES.get(table)
    match = re.fullmatch(r"(\d+) days?", spec[1]) if spec is not None and spec[0] == "ts" else None
    if match is None:
        return None
    days = int(match.group(1))
    return lambda day: (day - _EPOCH).days // days


def slicing(conn: psycopg.Connection, table: str) -> Slicing | None:
    """`table`'s slicing when new slices can be built apart: one time dimension on a timestamptz column
    with a fixed interval (None for other tables, and on plain PostgreSQL)."""
    schema, name = table.split(".")
    if conn.execute("select to_regclass('timescaledb_information.dimensions')").fetchone()[0] is None:  # type: ignore[index]
        return None
    rows = conn.execute(
        "select column_name, column_type::text, (extract(epoch from time_interval) * 1000000)::bigint,"
        " extract(year from time_interval) * 12 + extract(month from time_interval)"
        " from timescaledb_information.dimensions where hypertable_schema = %s and hypertable_name = %s",
        (schema, name)).fetchall()
    if len(rows) != 1:
        return None
    column, kind, width, months = rows[0]
    if kind != "timestamp with time zone" or not width or months:
        return None
    return Slicing(str(column), int(width))


def copy_first_load(conn: psycopg.Connection, table: str, frame: pl.DataFrame, keys: tuple[str, ...]) -> int:
    """COPY `frame` (rows nothing stored collides with) into `table` inside the caller's transaction,
    building the slices that have no chunk yet apart; returns the rows written. `keys`: the table's
    primary key.

    Each slice's rows are picked from the frame piece by piece while they are encoded: no copy of a
    slice is made (memory stays that of the frame).
    """
    cut = slicing(conn, table) if frame.height >= MIN_ROWS else None
    built: list[int] = []
    if cut is not None:
        for slice_no, rows in _new_slices(conn, table, cut, frame):
            if _attach(conn, table, cut, keys, slice_no, frame, rows):
                built.append(slice_no)
    with conn.cursor() as cur:
        if not built:
            return copy_frame(cur, table, frame)
        rest = ~cut.index().is_in(built)  # type: ignore[union-attr]
        written = frame.height - int(frame.select(rest.sum()).item())
        return written + copy_frame(cur, table, frame, where=rest)


def _new_slices(conn: psycopg.Connection, table: str, cut: Slicing,
                frame: pl.DataFrame) -> list[tuple[int, pl.Series]]:
    """Slices of `frame` with at least MIN_ROWS rows that no existing chunk overlaps, each with the
    positions of its rows in `frame` (found in one pass over the frame)."""
    slices = (frame.select(cut.index().alias("slice")).with_row_index("row").group_by("slice")
              .agg(pl.col("row")).filter(pl.col("row").list.len() >= MIN_ROWS).sort("slice"))
    if not slices.height:
        return []
    schema, name = table.split(".")
    lower, upper = slices["slice"].min() * cut.width_us, (slices["slice"].max() + 1) * cut.width_us  # type: ignore[operator]
    chunks = conn.execute(
        "select (extract(epoch from range_start) * 1000000)::bigint, (extract(epoch from range_end) * 1000000)::bigint"
        " from timescaledb_information.chunks where hypertable_schema = %s and hypertable_name = %s"
        " and range_end > to_timestamp(%s / 1000000.0) and range_start < to_timestamp(%s / 1000000.0)",
        (schema, name, lower, upper)).fetchall()
    return [(s, rows) for s, rows in zip(slices["slice"].to_list(), slices["row"], strict=True)
            if not any(lo < (s + 1) * cut.width_us and hi > s * cut.width_us for lo, hi in chunks)]


def _attach(conn: psycopg.Connection, table: str, cut: Slicing, keys: tuple[str, ...], slice_no: int,
            frame: pl.DataFrame, rows: pl.Series) -> bool:
    """Build slice `slice_no` from its rows in `frame` (at the positions `rows`) and attach it to
    `table`; False (and nothing changed) when TimescaleDB refuses it."""
    start = slice_no * cut.width_us
    day = datetime.fromtimestamp(start / 1_000_000, UTC).strftime("%Y%m%d")
    chunk = f"{SCHEMA}.{table.split('.')[1]}_{day}"
    try:
        with conn.transaction():  # a savepoint: a refused slice leaves nothing behind
            conn.execute(sql.SQL("create table {} (like {} including defaults including constraints)").format(
                sql.Identifier(*chunk.split(".")), sql.Identifier(*table.split("."))))
            with conn.cursor() as cur:
                copy_frame(cur, chunk, frame, at=rows)
            conn.execute("call attach_chunk(%s::regclass, %s::regclass, %s::jsonb)",
                         (table, chunk, f'{{"{cut.column}": [{start}, {start + cut.width_us}]}}'))
            times = frame[cut.column].gather(rows)
            ends = frame.select(keys)[rows.gather([times.arg_min(), times.arg_max()])]
            _record_invalidation(conn, table, ends, next(c for c in frame.columns if c not in keys))
    except psycopg.errors.OperationalError:
        raise
    except psycopg.Error as exc:  # e.g. a chunk for the slice committed since it was looked up
        log.info("slice %s of %s not built apart (%s); its rows are copied into the hypertable",
                 day, table, str(exc).strip().splitlines()[0])
        return False
    return True


def _record_invalidation(conn: psycopg.Connection, table: str, ends: pl.DataFrame, column: str) -> None:
    """Record the span of a chunk's rows written outside TimescaleDB's insert path as changed for the
    continuous aggregates: a no-op update (of `column`, not a key) of `ends`, the key columns of its
    first and last row in time, through the hypertable.

    One statement per chunk: TimescaleDB records the lowest and highest time a statement modified in a
    chunk as one range (two statements, or two chunks, would record single buckets)."""
    keys = ends.columns
    row_key = sql.SQL("({})").format(sql.SQL(", ").join(sql.Placeholder() * len(keys)))
    conn.execute(sql.SQL("update {t} set {c} = {c} where ({k}) in ({a}, {b})").format(
        t=sql.Identifier(*table.split(".")), c=sql.Identifier(column),
        k=sql.SQL(", ").join(sql.Identifier(k) for k in keys),
        a=row_key, b=row_key), [v for row in ends.iter_rows() for v in row])
