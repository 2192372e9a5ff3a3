"""Idempotent range loads: one provider's rows of a session range (and some symbols) made equal to a frame.

Two paths, both in one transaction (a savepoint when the caller has one open):

- first load (nothing stored in the scope yet): binary COPY straight into the table;
- re-load: binary COPY into an unindexed staging table, then a set-based diff against what is
  stored: rows whose values changed are updated, new rows inserted, unchanged rows not touched (they
  keep the run and the time they were first learnt, so point-in-time reads are not disturbed), and
  stored rows missing from the frame are deleted only when the caller allows deletions.

A provider answer with fewer rows than stored is never applied silently: without `allow_deletes`
the load fails with `ShrinkError` naming what would disappear, and nothing changes. Loads of the same
table and provider take a transaction-level advisory lock, so overlapping runs serialize instead of
failing on each other's rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

import polars as pl
import psycopg
from psycopg import sql

from mdpipeline.storage.binary_copy import copy_frame
from mdpipeline.storage.partitions import ensure_partitions

# Primary keys of the time-partitioned tables; every other column but lineage is a compared value.
TABLE_KEYS: dict[str, tuple[str, ...]] = {
    "md.bars_1d": ("instrument_id", "provider", "session_date"),
    "md.bars_1m": ("instrument_id", "provider", "session_date", "ts"),
    "md.ticks": ("instrument_id", "provider", "session_date", "ts", "sequence"),
}
LINEAGE_COLUMNS = ("ingested_at", "run_id", "raw_payload_id")
_CHANGED_SCHEMA = {"instrument_id": pl.Int64, "session_date": pl.Date}


class ShrinkError(ValueError):
    """A load would delete stored rows that the new data no longer holds, and deletions were not allowed."""


@dataclass(frozen=True)
class LoadResult:
    """What a load did. `changed`: (instrument_id, session_date) of every bar inserted, updated or deleted."""

    rows: int
    inserted: int
    updated: int
    deleted: int
    first_load: bool
    changed: pl.DataFrame

    @property
    def unchanged(self) -> int:
        """Rows of the frame that were already stored with the same values."""
        return self.rows - self.inserted - self.updated


@dataclass(frozen=True)
class Scope:
    """The stored rows a load replaces: one provider, a session range, optionally some symbols.

    `instruments` (ids that hold `symbols` in the range) only narrows the search to the primary-key
    index; `symbols` is what defines the scope.
    """

    provider: str
    start: date
    end: date
    symbols: tuple[str, ...] | None = None
    instruments: tuple[int, ...] | None = None

    def where(self, alias: str = "") -> sql.Composed:
        """The scope as a SQL predicate (columns qualified by `alias` when given)."""
        def col(name: str) -> sql.Composable:
            return sql.Identifier(alias, name) if alias else sql.Identifier(name)

        parts = [sql.SQL("{} = {}").format(col("provider"), sql.Literal(self.provider)),
                 sql.SQL("{} between {} and {}").format(col("session_date"), sql.Literal(self.start),
                                                       sql.Literal(self.end))]
        if self.instruments is not None:
            parts.append(sql.SQL("{} = any({})").format(col("instrument_id"), sql.Literal(list(self.instruments))))
        if self.symbols is not None:
            parts.append(sql.SQL("{} = any({})").format(col("symbol"), sql.Literal(list(self.symbols))))
        return sql.SQL(" and ").join(parts)

    def holds(self) -> pl.Expr:
        """The scope as a polars predicate over a frame's rows."""
        inside = (pl.col("provider") == self.provider) & pl.col("session_date").is_between(self.start, self.end)
        if self.symbols is not None:
            inside = inside & pl.col("symbol").is_in(list(self.symbols))
        return inside


def replace_range(
    conn: psycopg.Connection,
    table: str,
    frame: pl.DataFrame,
    *,
    provider: str,
    start: date,
    end: date,
    symbols: Sequence[str] | None = None,
    instruments: Sequence[int] | None = None,
    allow_deletes: bool = False,
) -> LoadResult:
    """Make `table`'s rows of `provider`, sessions [start, end] (and `symbols`, when given) equal `frame`.

    Rows of `frame` outside that scope are a programming error, rejected before anything changes.
    """
    scope = Scope(provider, start, end, tuple(symbols) if symbols is not None else None,
                  tuple(instruments) if instruments is not None else None)
    if frame.height:
        outside = frame.filter(~scope.holds())
        if outside.height:
            raise ValueError(f"{outside.height} rows for {table} fall outside provider={provider} "
                             f"[{start}, {end}]{' and the chunk symbols' if symbols is not None else ''};"
                             " refusing to load")
    if table not in TABLE_KEYS or "ingested_at" not in frame.columns:
        raise ValueError(f"{table} has no known key or the frame carries no ingested_at: cannot diff it")
    if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        ensure_partitions(conn, table, start, end)  # own short transaction, outside the load's
    target = sql.Identifier(*table.split("."))
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(hashtext(%s))", (f"mdpipeline.load:{table}:{provider}",))
        ensure_partitions(conn, table, start, end)  # no-op when they exist (the common case)
        stored = conn.execute(sql.SQL("select exists (select 1 from {} where {})").format(target, scope.where()))
        if not stored.fetchone()[0]:  # type: ignore[index]
            keys = list(TABLE_KEYS[table])
            with conn.cursor() as cur:  # in key order: the primary-key index grows at its ends, not everywhere
                loaded = copy_frame(cur, table, frame.sort(keys)) if frame.height else 0
            return LoadResult(rows=frame.height, inserted=loaded, updated=0, deleted=0, first_load=True,
                              changed=_sessions(frame))
        return _reload(conn, table, target, frame, scope, allow_deletes)


def _reload(conn: psycopg.Connection, table: str, target: sql.Identifier, frame: pl.DataFrame, scope: Scope,
            allow_deletes: bool) -> LoadResult:
    """The set-based diff of a re-load, inside the caller's transaction."""
    keys = TABLE_KEYS[table]
    values = [c for c in frame.columns if c not in keys and c not in LINEAGE_COLUMNS]
    staging_name = f"_load_{table.split('.')[1]}"
    staging = sql.Identifier(staging_name)
    conn.execute(sql.SQL("create temporary table {} (like {}) on commit drop").format(staging, target))
    with conn.cursor() as cur:
        copy_frame(cur, staging_name, frame)
    conn.execute(sql.SQL("analyze {}").format(staging))  # temp tables get no statistics otherwise
    # The target's statistics lag behind bulk loads (autovacuum analyzes later): a planner that thinks
    # the scope holds one row picks a nested loop over the staging table, quadratic in the chunk size.
    conn.execute("set local enable_nestloop = off")
    conn.execute("set local work_mem = '64MB'")
    same_key = sql.SQL(" and ").join(sql.SQL("s.{c} = t.{c}").format(c=sql.Identifier(c)) for c in keys)
    gone = conn.execute(sql.SQL(
        "select t.instrument_id, t.symbol, t.session_date, count(*) from {t} t where {scope}"
        " and not exists (select 1 from {s} s where {same}) group by 1, 2, 3 order by 3, 2"
    ).format(t=target, scope=scope.where("t"), s=staging, same=same_key)).fetchall()
    deleted = sum(int(r[3]) for r in gone)
    if deleted and not allow_deletes:
        shown = ", ".join(f"{r[1]} {r[2]} ({r[3]})" for r in gone[:10])
        raise ShrinkError(
            f"{table}: the new data of provider {scope.provider} for {scope.start}..{scope.end} lacks {deleted} stored"
            f" rows ({len(gone)} symbol-sessions: {shown}{', ...' if len(gone) > 10 else ''}); nothing was changed."
            " If the provider really withdrew them, re-run with deletions allowed (--allow-deletes, or the run tag"
            " mdpipeline/allow_deletes=true)")
    if deleted:
        conn.execute(sql.SQL("delete from {t} t where {scope} and not exists (select 1 from {s} s where {same})")
                     .format(t=target, scope=scope.where("t"), s=staging, same=same_key))
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in frame.columns)
    updates = sql.SQL(", ").join(sql.SQL("{c} = s.{c}").format(c=sql.Identifier(c))
                                 for c in frame.columns if c not in keys)
    old = sql.SQL(", ").join(sql.Identifier("t", c) for c in values)
    new = sql.SQL(", ").join(sql.Identifier("s", c) for c in values)
    updated = conn.execute(sql.SQL(
        "update {t} t set {updates} from {s} s where {same} and ({old}) is distinct from ({new})"
        " returning t.instrument_id, t.session_date"
    ).format(t=target, updates=updates, s=staging, same=same_key, old=old, new=new)).fetchall()
    inserted = conn.execute(sql.SQL(
        "insert into {t} ({cols}) select {cols} from {s} s where not exists (select 1 from {t} t where {same})"
        " returning instrument_id, session_date"
    ).format(t=target, cols=columns, s=staging, same=same_key)).fetchall()
    changed = pl.DataFrame([(r[0], r[1]) for r in (*updated, *inserted)] + [(r[0], r[2]) for r in gone],
                           schema=_CHANGED_SCHEMA, orient="row").unique().sort("instrument_id", "session_date")
    conn.execute(sql.SQL("drop table {}").format(staging))
    conn.execute("reset enable_nestloop; reset work_mem")
    return LoadResult(rows=frame.height, inserted=len(inserted), updated=len(updated), deleted=deleted,
                      first_load=False, changed=changed)


def _sessions(frame: pl.DataFrame) -> pl.DataFrame:
    """(instrument_id, session_date) pairs of a frame."""
    if not frame.height:
        return pl.DataFrame(schema=_CHANGED_SCHEMA)
    return frame.select("instrument_id", "session_date").unique().sort("instrument_id", "session_date")
