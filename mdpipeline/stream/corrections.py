"""Cancels and corrections of stored trades: event ids that name the trade's original event, and revisions.

Every stored trade keeps the `event_id` of the `md.ticks.v1` event that announced it. A cancel, and the
`new` trade of a correction (`corrects` set), carry `original_event_id`: the event id of the trade they
cancel or replace, found among the earlier trades of the same range or else in `md.ticks`. A trade that
corrects a correction names that correction's event, so the chain is followed within a range as well.

Rows a cancel, a correction or a changed resend supersede are moved to `md.ticks_revisions` (with when,
how and by which run) before they leave or change `md.ticks`: nothing stored is lost, and what was
known at any time can be read back.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl
import psycopg

from mdpipeline.contracts.events import TICKS_EVENT_FIELDS, TICKS_OPTIONAL_FIELDS
from mdpipeline.distribute.events import json_events
from mdpipeline.distribute.topics import TICKS
from mdpipeline.storage.binary_copy import copy_frame

ORIGINAL = "original_event_id"
TRADE_KEY = ["instrument_id", "provider", "session_date", "sequence"]
TICK_COLUMNS = ("instrument_id", "symbol", "session_date", "ts", "provider", "price", "size", "exchange",
                "conditions", "sequence", "raw_payload_id", "run_id", "ingested_at", "event_id", "corrects")
_KEY_SCHEMA: dict[str, pl.DataType] = {"instrument_id": pl.Int64(), "provider": pl.String(),
                                       "session_date": pl.Date(), "sequence": pl.Int64()}
_REFERS = pl.when(pl.col("action") == "cancel").then(pl.col("sequence")).otherwise(pl.col("corrects"))


def tick_event_ids(ticks: pl.DataFrame) -> pl.Series:
    """The `md.ticks.v1` event id of each row (needs the event fields and `original_event_id`)."""
    return json_events(ticks, TICKS.name, TICKS_EVENT_FIELDS, TICKS_OPTIONAL_FIELDS)["event_id"]


def stored_event_ids(conn: psycopg.Connection, keys: pl.DataFrame) -> pl.DataFrame:
    """`TRADE_KEY` + `event_id` of the md.ticks rows with these keys (within the caller's transaction)."""
    keys = keys.select(list(_KEY_SCHEMA)).unique()
    if not keys.height:
        return pl.DataFrame(schema={**_KEY_SCHEMA, "event_id": pl.String()})
    conn.execute("create temporary table _tick_refs (instrument_id bigint, provider text, session_date date,"
                 " sequence bigint) on commit drop")
    with conn.cursor() as cur:
        copy_frame(cur, "_tick_refs", keys)
    rows = conn.execute(
        "select t.instrument_id, t.provider, t.session_date, t.sequence, t.event_id from md.ticks t join _tick_refs r"
        " using (instrument_id, provider, session_date, sequence)").fetchall()
    conn.execute("drop table _tick_refs")
    return pl.DataFrame(rows, schema={**_KEY_SCHEMA, "event_id": pl.String()}, orient="row")


def with_event_ids(conn: psycopg.Connection, ticks: pl.DataFrame) -> pl.DataFrame:
    """`ticks` (canonical, raw order) + `original_event_id` and `event_id`.

    The original of a cancel is its own trade id, of a correction the id it `corrects`: the last `new` of
    that id earlier in this frame, else the stored row. Resolved in rounds so that a correction of a
    trade corrected in the same frame names that correction's event (chains are short: a round each).
    """
    frame = ticks.with_row_index("_row").with_columns(_REFERS.alias("_refers"))
    refs = frame.filter(pl.col("_refers").is_not_null()).select(
        "instrument_id", "provider", "session_date", pl.col("_refers").alias("sequence"))
    known = stored_event_ids(conn, refs).with_columns(pl.lit(-1, pl.Int64).alias("_at"))
    done = pl.DataFrame(schema={"_row": pl.UInt32(), ORIGINAL: pl.String(), "event_id": pl.String()})
    todo = frame
    while todo.height:
        # A row can be resolved when no `new` of the id it refers to, earlier in the frame, is still unresolved.
        waiting = todo.filter(pl.col("action") == "new").select(*TRADE_KEY[:3], "sequence", pl.col("_row").alias("_w"))
        blocked = todo.join(waiting, left_on=[*TRADE_KEY[:3], "_refers"], right_on=TRADE_KEY, how="inner") \
            .filter(pl.col("_w") < pl.col("_row"))["_row"]
        ready = todo.filter(~pl.col("_row").is_in(blocked.implode()))
        if not ready.height:  # a cycle (a trade correcting a later one): resolve from what is known
            ready = todo
        resolved = _originals(ready, known).with_columns(
            pl.when(pl.col("_refers").is_not_null()).then(pl.col("_original")).alias(ORIGINAL)).drop("_original")
        resolved = resolved.with_columns(tick_event_ids(resolved).alias("event_id"))
        done = pl.concat([done, resolved.select("_row", ORIGINAL, "event_id")])
        known = pl.concat([known, resolved.filter(pl.col("action") == "new").select(
            *TRADE_KEY, "event_id", pl.col("_row").cast(pl.Int64).alias("_at"))])
        todo = todo.join(resolved.select("_row"), on="_row", how="anti")
    return frame.join(done, on="_row", how="left").sort("_row").drop("_row", "_refers")


def _originals(rows: pl.DataFrame, known: pl.DataFrame) -> pl.DataFrame:
    """`rows` + `_original`: the event id of the latest known `new` of the id each row refers to, before it."""
    candidates = rows.select("_row", *TRADE_KEY[:3], "_refers").join(
        known, left_on=[*TRADE_KEY[:3], "_refers"], right_on=TRADE_KEY, how="inner",
    ).filter(pl.col("_at") < pl.col("_row").cast(pl.Int64)).sort("_at").group_by("_row").agg(
        pl.col("event_id").last().alias("_original"))
    return rows.join(candidates, on="_row", how="left")


def keep_changed_versions(conn: psycopg.Connection, staged: str, run_id: str, at: datetime) -> int:
    """Before an upsert from `staged` (a table like md.ticks): stored rows it would change -> revisions
    (`update`); returns how many."""
    columns = ", ".join(TICK_COLUMNS)
    stored = ", ".join(f"t.{c}" for c in TICK_COLUMNS)
    return conn.execute(
        f"insert into md.ticks_revisions ({columns}, superseded_at, change, superseded_run_id)"
        f" select {stored}, %s, 'update', %s from md.ticks t join {staged} n"
        " using (instrument_id, provider, session_date, ts, sequence)"
        " where (t.price, t.size, t.exchange, t.conditions, t.corrects)"
        " is distinct from (n.price, n.size, n.exchange, n.conditions, n.corrects)", (at, run_id)).rowcount


def retire_ticks(conn: psycopg.Connection, gone: pl.DataFrame, run_id: str, at: datetime) -> int:
    """Delete the md.ticks rows of `gone` (`TRADE_KEY`, `change` cancel|correct, `superseded_by`), keeping each
    in md.ticks_revisions; returns the rows retired (a trade never stored retires nothing)."""
    if not gone.height:
        return 0
    conn.execute("create temporary table _retire (instrument_id bigint, provider text, session_date date,"
                 " sequence bigint, change text, superseded_by bigint) on commit drop")
    with conn.cursor() as cur:
        copy_frame(cur, "_retire", gone.select(*TRADE_KEY, "change", pl.col("superseded_by").cast(pl.Int64)))
    columns = ", ".join(TICK_COLUMNS)
    retired = conn.execute(
        f"with gone as (delete from md.ticks t using _retire r where t.instrument_id = r.instrument_id"
        " and t.provider = r.provider and t.session_date = r.session_date and t.sequence = r.sequence"
        f" returning t.*, r.change, r.superseded_by)"
        f" insert into md.ticks_revisions ({columns}, superseded_at, change, superseded_by, superseded_run_id)"
        f" select distinct on (instrument_id, provider, session_date, ts, sequence) {columns}, %s, change,"
        " superseded_by, %s from gone", (at, run_id)).rowcount
    conn.execute("drop table _retire")
    return retired
