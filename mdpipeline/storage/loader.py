"""Idempotent range loads: one provider's rows of a session range (and some symbols) made equal to a frame.

Two paths, both in one transaction (a savepoint when the caller has one open):

- first load (nothing stored in the scope yet): binary COPY straight into the table; on TimescaleDB
  the time slices that have no chunk yet are built apart and attached (`new_chunks`);
- re-load: binary COPY into an unindexed staging table, then a set-based diff against what is
  stored: rows whose values changed are updated, new rows inserted, unchanged rows not touched (they
  keep the run and the time they were first learnt, so point-in-time reads are not disturbed), and
  stored rows missing from the frame are deleted only when the caller allows deletions.

A provider answer with fewer rows than stored is never applied silently: without `allow_deletes`
the load fails with `ShrinkError` naming what would disappear, and nothing changes. Loads of the same
table and provider take a transaction-level advisory lock, so overlapping runs serialize instead of
failing on each other's rows.

Bars keep their history: before a re-load updates or deletes a bar, the stored version is copied to
the table's revision table (`md.bars_1d_revisions`, `md.bars_1m_revisions`) with the time it was
superseded, so as-of reads return what was known then.

On TimescaleDB the re-load works on compressed chunks: what changes is found by reads alone (which
never decompress), and the UPDATE/DELETE carry constant bounds (the instruments and time span of the
changed rows) so that only the compressed batches inside them are decompressed; the limit on
decompressed tuples per transaction is lifted for the load, since a correction may touch more than
its default of 100,000 (the compression policy recompresses the chunks later).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

import polars as pl
import psycopg
from psycopg import sql

from mdpipeline.storage.binary_copy import copy_frame
from mdpipeline.storage.migrations import HYPERTABLES, TIMESCALEDB, storage_layout
from mdpipeline.storage.new_chunks import copy_first_load
from mdpipeline.storage.partitions import ensure_partitions, time_bounds

# Primary keys of the time-partitioned tables; every other column but lineage is a compared value.
TABLE_KEYS: dict[str, tuple[str, ...]] = {
    "md.bars_1d": ("instrument_id", "provider", "session_date"),
    "md.bars_1m": ("instrument_id", "provider", "session_date", "ts"),
    "md.ticks": ("instrument_id", "provider", "session_date", "ts", "sequence"),
}
LINEAGE_COLUMNS = ("ingested_at", "run_id", "raw_payload_id")
# Tables whose superseded rows are kept, and where.
REVISIONS: dict[str, str] = {"md.bars_1d": "md.bars_1d_revisions", "md.bars_1m": "md.bars_1m_revisions"}
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

    def where(self, alias: str = "", ts: bool = False) -> sql.Composed:
        """The scope as a SQL predicate (columns qualified by `alias` when given).

        `ts`: also bound the bar start (`ts`) by the session range (`partitions.time_bounds`), for
        tables chunked on `ts`: the predicate TimescaleDB needs to exclude chunks.
        """
        def col(name: str) -> sql.Composable:
            return sql.Identifier(alias, name) if alias else sql.Identifier(name)

        parts = [sql.SQL("{} = {}").format(col("provider"), sql.Literal(self.provider)),
                 sql.SQL("{} between {} and {}").format(col("session_date"), sql.Literal(self.start),
                                                       sql.Literal(self.end))]
        if ts:
            lower, upper = time_bounds(self.start, self.end)
            parts.append(sql.SQL("{c} >= {lo}::timestamptz and {c} < {hi}::timestamptz").format(
                c=col("ts"), lo=sql.Literal(lower.isoformat()), hi=sql.Literal(upper.isoformat())))
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
    with_ts = "ts" in TABLE_KEYS[table]
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(hashtext(%s))", (f"mdpipeline.load:{table}:{provider}",))
        ensure_partitions(conn, table, start, end)  # no-op when they exist (the common case)
        stored = conn.execute(sql.SQL("select exists (select 1 from {} where {})").format(
            target, scope.where(ts=with_ts)))
        if not stored.fetchone()[0]:  # type: ignore[index]
            # in key order: the primary-key index grows at its ends, not everywhere
            loaded = copy_first_load(conn, table, in_key_order(table, frame), TABLE_KEYS[table]) if frame.height else 0
            return LoadResult(rows=frame.height, inserted=loaded, updated=0, deleted=0, first_load=True,
                              changed=_sessions(frame))
        return _reload(conn, table, target, frame, scope, allow_deletes)


def in_key_order(table: str, frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` (one provider's rows) sorted by `table`'s primary key, as a first load writes it
    (as it is for a table `replace_range` does not load).

    The provider is left out of the sort (one value in a load's scope) and the sort is cheap on a
    frame already in order, so a caller can sort ahead of the load (off the critical path).
    """
    keys = [k for k in TABLE_KEYS.get(table, ()) if k != "provider"]
    return frame.sort(keys) if keys else frame


def _reload(conn: psycopg.Connection, table: str, target: sql.Identifier, frame: pl.DataFrame, scope: Scope,
            allow_deletes: bool) -> LoadResult:
    """The set-based diff of a re-load, inside the caller's transaction.

    What changes is found first by reads alone (into temporary tables of the changed and the vanished
    keys); the writes then touch only those rows, bounded by constants that TimescaleDB can use to
    leave the other compressed batches alone.
    """
    keys = TABLE_KEYS[table]
    values = [c for c in frame.columns if c not in keys and c not in LINEAGE_COLUMNS]
    short = table.split(".")[1]
    staging_name, changed_name, gone_name = f"_load_{short}", f"_changed_{short}", f"_gone_{short}"
    staging, changed_t, gone_t = (sql.Identifier(n) for n in (staging_name, changed_name, gone_name))
    conn.execute(sql.SQL("create temporary table {} (like {}) on commit drop").format(staging, target))
    with conn.cursor() as cur:
        copy_frame(cur, staging_name, frame)
    conn.execute(sql.SQL("analyze {}").format(staging))  # temp tables get no statistics otherwise
    # The target's statistics lag behind bulk loads (autovacuum analyzes later): a planner that thinks
    # the scope holds one row picks a nested loop over the staging table, quadratic in the chunk size.
    conn.execute("set local enable_nestloop = off")
    conn.execute("set local work_mem = '64MB'")
    timescale = storage_layout(conn) == TIMESCALEDB
    if timescale:  # a correction may decompress more rows of compressed chunks than the default 100k
        conn.execute("set local timescaledb.max_tuples_decompressed_per_dml_transaction = 0")
    in_scope = scope.where("t", ts="ts" in keys)

    def same(alias: str) -> sql.Composed:
        return sql.SQL(" and ").join(sql.SQL("{a}.{c} = t.{c}").format(a=sql.Identifier(alias), c=sql.Identifier(c))
                                     for c in keys)

    old = sql.SQL(", ").join(sql.Identifier("t", c) for c in values)
    new = sql.SQL(", ").join(sql.Identifier("s", c) for c in values)
    key_cols = sql.SQL(", ").join(sql.Identifier("t", c) for c in keys)
    # Reads only: a compressed chunk is read without being decompressed.
    conn.execute(sql.SQL(
        "create temporary table {c} on commit drop as select s.* from {s} s join {t} t on {same}"
        " where {scope} and ({old}) is distinct from ({new})"
    ).format(c=changed_t, s=staging, t=target, same=same("s"), scope=in_scope, old=old, new=new))
    conn.execute(sql.SQL(
        "create temporary table {g} on commit drop as select {keys}, t.symbol from {t} t where {scope}"
        " and not exists (select 1 from {s} s where {same})"
    ).format(g=gone_t, keys=key_cols, t=target, scope=in_scope, s=staging, same=same("s")))
    gone = conn.execute(sql.SQL("select instrument_id, symbol, session_date, count(*) from {} group by 1, 2, 3"
                                " order by 3, 2").format(gone_t)).fetchall()
    deleted = sum(int(r[3]) for r in gone)
    if deleted and not allow_deletes:
        shown = ", ".join(f"{r[1]} {r[2]} ({r[3]})" for r in gone[:10])
        raise ShrinkError(
            f"{table}: the new data of provider {scope.provider} for {scope.start}..{scope.end} lacks {deleted} stored"
            f" rows ({len(gone)} symbol-sessions: {shown}{', ...' if len(gone) > 10 else ''}); nothing was changed."
            " If the provider really withdrew them, re-run with deletions allowed (--allow-deletes, or the run tag"
            " mdpipeline/allow_deletes=true)")
    revisions = REVISIONS.get(table)
    stored_cols = _columns(conn, table) if revisions else []
    if deleted:
        box = _changed_box(conn, table, gone_t)
        if revisions:
            _keep_versions(conn, revisions, stored_cols, target, gone_t, same("g"), in_scope, box,
                           sql.SQL("coalesce((select max(ingested_at) from {}), now())").format(staging), "delete")
        conn.execute(sql.SQL("delete from {t} t using {g} g where {same} and {scope} and {box}")
                     .format(t=target, g=gone_t, same=same("g"), scope=in_scope, box=box))
    updated: list[tuple] = []
    if conn.execute(sql.SQL("select exists (select 1 from {})").format(changed_t)).fetchone()[0]:  # type: ignore[index]
        box = _changed_box(conn, table, changed_t)
        if revisions:
            _keep_versions(conn, revisions, stored_cols, target, changed_t, same("g"), in_scope, box,
                           sql.SQL("g.ingested_at"), "update")
        updates = sql.SQL(", ").join(sql.SQL("{c} = s.{c}").format(c=sql.Identifier(c))
                                     for c in frame.columns if c not in keys)
        updated = conn.execute(sql.SQL(
            "update {t} t set {updates} from {c} s where {same} and {scope} and {box}"
            " returning t.instrument_id, t.session_date"
        ).format(t=target, updates=updates, c=changed_t, same=same("s"), scope=in_scope, box=box)).fetchall()
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in frame.columns)
    inserted = conn.execute(sql.SQL(
        "insert into {t} ({cols}) select {cols} from {s} s where not exists (select 1 from {t} t where {same}"
        " and {scope}) returning instrument_id, session_date"
    ).format(t=target, cols=columns, s=staging, same=same("s"), scope=in_scope)).fetchall()
    changed = pl.DataFrame([(r[0], r[1]) for r in (*updated, *inserted)] + [(r[0], r[2]) for r in gone],
                           schema=_CHANGED_SCHEMA, orient="row").unique().sort("instrument_id", "session_date")
    conn.execute(sql.SQL("drop table {}, {}, {}").format(staging, changed_t, gone_t))
    conn.execute("reset enable_nestloop; reset work_mem")
    if timescale:
        conn.execute("reset timescaledb.max_tuples_decompressed_per_dml_transaction")
    return LoadResult(rows=frame.height, inserted=len(inserted), updated=len(updated), deleted=deleted,
                      first_load=False, changed=changed)


def _columns(conn: psycopg.Connection, table: str) -> list[str]:
    """The stored columns of `table`, in order."""
    schema, name = table.split(".")
    return [r[0] for r in conn.execute("select column_name from information_schema.columns where table_schema = %s"
                                       " and table_name = %s order by ordinal_position", (schema, name))]


def _changed_box(conn: psycopg.Connection, table: str, keys: sql.Identifier) -> sql.Composed:
    """Constant bounds around the rows in the temporary table `keys`: their instruments and time span.

    On TimescaleDB these select the compressed batches (segmented by instrument, ordered by the time
    dimension) that a write has to decompress; the join on the key does the exact matching.
    """
    column = HYPERTABLES[table][0]
    ids, lower, upper = conn.execute(sql.SQL("select array_agg(distinct instrument_id), min({c}), max({c}) from {k}")
                                     .format(c=sql.Identifier(column), k=keys)).fetchone()  # type: ignore[misc]
    return sql.SQL("t.instrument_id = any({ids}) and t.{c} between {lo} and {hi}").format(
        ids=sql.Literal(sorted(ids)), c=sql.Identifier(column), lo=sql.Literal(lower), hi=sql.Literal(upper))


def _keep_versions(conn: psycopg.Connection, revisions: str, columns: list[str], target: sql.Identifier,
                   keys: sql.Identifier, same: sql.Composable, in_scope: sql.Composable, box: sql.Composable,
                   superseded_at: sql.Composable, change: str) -> None:
    """Copy the stored versions of the rows in `keys` (about to change) into the revision table."""
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    conn.execute(sql.SQL(
        "insert into {r} ({cols}, superseded_at, change) select {tcols}, {at}, {change} from {t} t"
        " join {k} g on {same} where {scope} and {box}"
    ).format(r=sql.Identifier(*revisions.split(".")), cols=cols,
             tcols=sql.SQL(", ").join(sql.Identifier("t", c) for c in columns), at=superseded_at,
             change=sql.Literal(change), t=target, k=keys, same=same, scope=in_scope, box=box))


def _sessions(frame: pl.DataFrame) -> pl.DataFrame:
    """(instrument_id, session_date) pairs of a frame."""
    if not frame.height:
        return pl.DataFrame(schema=_CHANGED_SCHEMA)
    return frame.select("instrument_id", "session_date").unique().sort("instrument_id", "session_date")
