"""The transactional outbox (`ops.outbox`): events written in the same transaction as the data they announce.

A store step writes one row per event (topic, key, event_id, value) next to its data, and the lineage
headers its events share once (`ops.outbox_headers`, referred to by `headers_id`); the
relay (`mdpipeline.distribute.relay`) sends pending rows and moves exactly the broker-confirmed ones
to `ops.outbox_sent` (the history, without the value: it is on the topic; a dead letter keeps it).
`ops.outbox` holds pending events only. A crash between the database commit and the send loses
nothing: the rows stay pending. `ops.outbox_events` shows both, pending ones with no `published_at`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date

import polars as pl
import psycopg

from mdpipeline.contracts.events import BARS_1M_ARRAY_FIELDS
from mdpipeline.distribute.dead_letter import dead_letter_events, text_payload, unserializable_reason
from mdpipeline.distribute.events import json_events, session_events
from mdpipeline.distribute.topics import DEAD_LETTER
from mdpipeline.storage.binary_copy import copy_frame
from mdpipeline.storage.reader import ArrowReader, read_frame

OUTBOX_TABLE = "ops.outbox"
# Columns written by `write_outbox` (the rest have defaults).
OUTBOX_COLUMNS: dict[str, pl.DataType] = {
    "topic": pl.String(), "key": pl.String(), "event_id": pl.String(), "value": pl.String(),
    "headers": pl.String(), "provider": pl.String(), "session_date": pl.Date(), "dead_letter_reason": pl.String(),
}
PENDING_SCHEMA: dict[str, pl.DataType] = {
    "outbox_id": pl.Int64(), "topic": pl.String(), "key": pl.String(), "event_id": pl.String(),
    "value": pl.String(), "headers": pl.String(), "session_date": pl.Date(),
}


def outbox_rows(
    frame: pl.DataFrame,
    topic: str,
    fields: tuple[str, ...],
    headers: dict[str, str],
    optional: tuple[str, ...] = (),
) -> pl.DataFrame:
    """Outbox rows announcing each row of `frame` (needs instrument_id, provider, session_date and `fields`;
    `optional` fields are left out of an event's data when null, see `json_events`).

    Rows that cannot be serialized faithfully become dead-letter rows (topic `md.dead_letter.v1`,
    `dead_letter_reason` set) instead of events on `topic`. Columnar: no Python per row except hashing.
    """
    reasons = frame.select(unserializable_reason(frame, fields).alias("reason")).to_series()
    bad = reasons.is_not_null()
    header_json = json.dumps(headers, separators=(",", ":"), sort_keys=True)
    parts = []
    good = frame.filter(~bad)
    if good.height:
        events = json_events(good, topic, fields, optional)
        parts.append(events.with_columns(
            pl.lit(topic).alias("topic"), good["provider"], good["session_date"],
            pl.lit(None, dtype=pl.String).alias("dead_letter_reason"),
        ))
    if bad.any():
        rejected = frame.filter(bad)
        meant = json_events(rejected, topic, fields, optional)
        letters = dead_letter_events(topic, meant["key"], meant["event_id"], reasons.filter(bad),
                                     text_payload(rejected, fields))
        parts.append(letters.with_columns(
            pl.lit(DEAD_LETTER.name).alias("topic"), rejected["provider"], rejected["session_date"],
            reasons.filter(bad).alias("dead_letter_reason"),
        ))
    if not parts:
        return pl.DataFrame(schema=OUTBOX_COLUMNS)
    return pl.concat(parts).with_columns(pl.lit(header_json).alias("headers")).select(
        pl.col(c).cast(t) for c, t in OUTBOX_COLUMNS.items()
    )


def session_outbox_rows(frame: pl.DataFrame, topic: str, headers: dict[str, str]) -> pl.DataFrame:
    """Outbox rows announcing each instrument's session of minute bars in `frame` (one event per session).

    A session holding a row that cannot be serialized faithfully is dead-lettered as a whole, with
    the reasons and those rows as text.
    """
    reasons = frame.select(unserializable_reason(frame, BARS_1M_ARRAY_FIELDS).alias("reason")).to_series()
    session = ["instrument_id", "provider", "session_date"]
    bad_sessions = frame.filter(reasons.is_not_null()).select(session).unique()
    parts = []
    good = frame.join(bad_sessions, on=session, how="anti") if bad_sessions.height else frame
    if good.height:
        no_reason = pl.lit(None, dtype=pl.String).alias("dead_letter_reason")
        parts.append(session_events(good, topic).with_columns(pl.lit(topic).alias("topic"), no_reason))
    if bad_sessions.height:
        bad = frame.with_columns(reasons).filter(pl.col("reason").is_not_null())
        meant = session_events(frame.join(bad_sessions, on=session, how="semi"), topic)
        grouped = bad.with_columns(text_payload(bad, ("symbol", *BARS_1M_ARRAY_FIELDS))).group_by(
            session, maintain_order=True).agg(
            pl.col("reason").unique(maintain_order=True).str.join("; ").str.slice(0, 1000),
            pl.format("[{}]", pl.col("payload").str.join(",")).alias("payload"))
        letters_in = meant.join(grouped.with_columns(pl.col("instrument_id").cast(pl.String).alias("key")),
                                on=["key", "provider", "session_date"], how="inner", maintain_order="left")
        letters = dead_letter_events(topic, letters_in["key"], letters_in["event_id"], letters_in["reason"],
                                     letters_in["payload"])
        parts.append(letters.with_columns(pl.lit(DEAD_LETTER.name).alias("topic"), letters_in["provider"],
                                          letters_in["session_date"], letters_in["reason"].alias("dead_letter_reason")))
    if not parts:
        return pl.DataFrame(schema=OUTBOX_COLUMNS)
    header_json = json.dumps(headers, separators=(",", ":"), sort_keys=True)
    return pl.concat(parts, how="diagonal_relaxed").with_columns(pl.lit(header_json).alias("headers")).select(
        pl.col(c).cast(t) for c, t in OUTBOX_COLUMNS.items()
    )


def enqueue(conn: psycopg.Connection, rows: pl.DataFrame) -> int:
    """Queue outbox rows inside the caller's transaction, replacing pending rows about the same
    (topic, provider, key, session): the newest version of a bar or session is what goes out; returns
    the rows queued.
    """
    if not rows.height:
        return 0
    about = rows.select("topic", "provider", "key", "session_date").unique()
    with conn.transaction():
        conn.execute(
            "delete from ops.outbox o using unnest(%s::text[], %s::text[], %s::text[], %s::date[])"
            " as n(topic, provider, key, session_date)"
            " where o.topic = n.topic and o.provider = n.provider"
            " and o.key is not distinct from n.key and o.session_date = n.session_date",
            [about[c].to_list() for c in about.columns])
        return write_outbox(conn, rows)


def write_outbox(conn: psycopg.Connection, rows: pl.DataFrame) -> int:
    """Append outbox rows with binary COPY inside the caller's transaction; returns the rows written."""
    if not rows.height:
        return 0
    with conn.cursor() as cur:
        return copy_frame(cur, OUTBOX_TABLE, _with_header_sets(conn, rows))


def append_outbox(conn: psycopg.Connection, rows: pl.DataFrame) -> int:
    """Append rows, skipping events already pending (same topic and event_id); returns the rows added."""
    if not rows.height:
        return 0
    conn.execute("create temporary table _outbox (like ops.outbox including identity including defaults)"
                 " on commit drop")
    encoded = _with_header_sets(conn, rows)
    with conn.cursor() as cur:
        copy_frame(cur, "_outbox", encoded)
    columns = ", ".join(encoded.columns)
    added = conn.execute(
        f"insert into ops.outbox ({columns}) select {columns} from _outbox order by outbox_id"
        " on conflict (topic, event_id) do nothing").rowcount
    conn.execute("drop table _outbox")
    return added


def _with_header_sets(conn: psycopg.Connection, rows: pl.DataFrame) -> pl.DataFrame:
    """`rows` referring to their lineage headers by `headers_id`: one new ops.outbox_headers row per
    distinct headers text (a write usually carries one), inside the caller's transaction."""
    ids: dict[str, int] = {}
    for text in rows["headers"].unique(maintain_order=True).to_list():
        row = conn.execute("insert into ops.outbox_headers (headers) values (%s::jsonb) returning headers_id",
                           (text,)).fetchone()
        assert row is not None
        ids[text] = row[0]
    return rows.with_columns(pl.col("headers").replace_strict(ids, return_dtype=pl.Int64).alias("headers_id")).drop(
        "headers")


def replace_pending(
    conn: psycopg.Connection,
    rows: pl.DataFrame,
    *,
    provider: str,
    start: date,
    end: date,
    topics: tuple[str, ...],
) -> int:
    """Swap the unpublished rows of (provider, topics, session dates in [start, end]) for `rows`.

    Runs in the caller's transaction (a savepoint when one is open), so data and outbox commit
    together. Sent events are history (ops.outbox_sent) and stay.
    """
    with conn.transaction():
        conn.execute(
            "delete from ops.outbox where provider = %s"
            " and session_date between %s and %s and topic = any(%s)",
            (provider, start, end, list(topics)),
        )
        return write_outbox(conn, rows)


@dataclass(frozen=True)
class PendingScope:
    """Which unpublished rows a read or a relay takes: optionally one provider, a session range, some topics."""

    provider: str | None = None
    start: date | None = None
    end: date | None = None
    topics: tuple[str, ...] | None = None

    def where(self) -> tuple[str, list[object]]:
        """SQL conditions and parameters of the unpublished rows in scope."""
        where = ["true"]
        params: list[object] = []
        if self.topics is not None:
            where.append("topic = any(%s)")
            params.append(list(self.topics))
        if self.provider is not None:
            where.append("provider = %s")
            params.append(self.provider)
        if self.start is not None and self.end is not None:
            where.append("session_date between %s and %s")
            params += [self.start, self.end]
        return " and ".join(where), params


def pending(
    conn: psycopg.Connection,
    *,
    provider: str | None = None,
    start: date | None = None,
    end: date | None = None,
    topics: tuple[str, ...] | None = None,
    after_id: int = 0,
    limit: int | None = None,
) -> pl.DataFrame:
    """Unpublished rows in outbox order, optionally of one provider, session range and some topics."""
    return pending_in(conn, PendingScope(provider, start, end, topics), after_id=after_id, limit=limit)


def pending_in(conn: psycopg.Connection, scope: PendingScope, *, after_id: int = 0, limit: int | None = None,
               reader: ArrowReader | None = None) -> pl.DataFrame:
    """Unpublished rows of `scope` after `after_id`, in outbox order (columnar: Arrow when the connection is
    idle; through `reader`'s open connection when given, which sees only committed rows)."""
    where, params = scope.where()
    query = (
        "select outbox_id, topic, key, event_id, value, headers::text as headers, headers_id, session_date"
        f" from ops.outbox where {where} and outbox_id > %s order by outbox_id"
        + (f" limit {int(limit)}" if limit else "")
    )
    schema = {**PENDING_SCHEMA, "headers_id": pl.Int64()}
    rows = _read(conn, query, (*params, after_id), schema, reader)
    sets = rows["headers_id"].drop_nulls().unique()
    if sets.len():
        texts = _read(conn, "select headers_id, headers::text as headers from ops.outbox_headers"
                      " where headers_id = any(%s)", (sets.to_list(),),
                      {"headers_id": pl.Int64(), "headers": pl.String()}, reader)
        shared = pl.col("headers_id").replace_strict(texts["headers_id"], texts["headers"], default=None)
        rows = rows.with_columns(pl.coalesce("headers", shared).alias("headers"))
    return rows.select(list(PENDING_SCHEMA))


def _read(conn: psycopg.Connection, query: str, params: tuple[object, ...], schema: dict[str, pl.DataType],
          reader: ArrowReader | None) -> pl.DataFrame:
    """Rows of `query` through `reader` when given (and able), otherwise through `conn`."""
    if reader is not None:
        frame = reader.read(query, params, schema)
        if frame is not None:
            return frame
    return read_frame(conn, query, params, schema)


def refresh_statistics(conn: psycopg.Connection, *, changed_share: float = 0.1) -> bool:
    """Analyze ops.outbox's ordering columns when many rows changed since the last analyze; True when it did.

    A store step can add a million rows just before the relay reads them, long before autovacuum
    analyzes the table; with statistics of a near-empty table the planner reads pending rows through
    the (topic, event_id) index and sorts all of them for every batch instead of walking the id
    order, which makes a drain quadratic in its rows.
    """
    changed, rows = conn.execute(
        "select coalesce(s.n_mod_since_analyze, 0), greatest(c.reltuples, 0) from pg_class c"
        " left join pg_stat_user_tables s on s.relid = c.oid where c.oid = 'ops.outbox'::regclass").fetchone()
    if changed < max(1_000, changed_share * rows):
        return False
    conn.execute("analyze ops.outbox (outbox_id, topic, provider, session_date)")
    return True


def move_sent(conn: psycopg.Connection, where: str, params: list[object], *,
              dead_letter_reason: str | None = None) -> int:
    """Move the pending rows matching `where` to ops.outbox_sent, published now; returns the rows moved.

    Two set statements in one transaction, however many rows: an INSERT ... SELECT into the
    index-free history, then a DELETE (about half what an UPDATE of each row cost, and a quarter
    less than one DELETE ... RETURNING feeding the INSERT: 100,000 rows in 0.31-0.34 s against
    0.38-0.48 s, docs/performance.md). A row another transaction deletes in between (a store step
    replacing a pending event) stays in the history: it was sent. The value is kept only for a dead
    letter (`dead_letter_reason`, given or already set): other events are on their topic.
    """
    with conn.transaction():
        conn.execute(
            "insert into ops.outbox_sent (outbox_id, topic, key, event_id, value, headers, headers_id, provider,"
            " session_date, created_at, published_at, dead_letter_reason) select outbox_id, topic, key, event_id,"
            " case when coalesce(%s, dead_letter_reason) is null then null else value end, headers, headers_id,"
            " provider, session_date, created_at, now(), coalesce(%s, dead_letter_reason)"
            f" from ops.outbox where {where}",
            (dead_letter_reason, dead_letter_reason, *params))
        return conn.execute(f"delete from ops.outbox where {where}", params).rowcount


def mark_published(
    conn: psycopg.Connection, topic: str, event_ids: list[str], *, dead_letter_reason: str | None = None
) -> int:
    """Mark pending rows of `topic` with these event ids published (now); returns the rows marked."""
    if not event_ids:
        return 0
    return move_sent(conn, "topic = %s and event_id = any(%s)", [topic, event_ids],
                     dead_letter_reason=dead_letter_reason)
