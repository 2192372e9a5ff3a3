"""Roll-ups of minute bars at 5 minutes, 15 minutes and 1 hour: one definition, both layouts.

`md.bars_5m`, `md.bars_15m` and `md.bars_1h` aggregate `md.bars_1m` per instrument, provider and
session into buckets on the exchange's clock, aligned so that a bucket starts at the session open
(09:30 New York: 09:30-10:30, 10:30-11:30, ...). OHLCV: open of the first bar, highest high, lowest
low, close of the last bar, summed volume, volume-weighted vwap (Σ vwap·volume / Σ volume, null
unless every bar has a vwap), summed trades (null unless every bar has them); `ingested_at` is the
latest of the bars', `bars` how many minute bars the bucket holds.

On TimescaleDB they are continuous aggregates (real-time: the part newer than the last refresh is
aggregated at read time), refreshed by policies and, after a load, for the loaded range
(`refresh_rollups`). On plain PostgreSQL they are views that aggregate at read time. As-of reads
aggregate the minute bars known at that time with the same SQL on both layouts (`rollup_query`).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime
from zoneinfo import ZoneInfo

import psycopg
from psycopg import sql

from mdpipeline.storage.database import connect
from mdpipeline.storage.partitions import time_bounds
from mdpipeline.storage.storage_config import RollupConfig, load_storage_config

# interval name -> (PostgreSQL interval, minutes)
ROLLUPS: dict[str, tuple[str, int]] = {"5m": ("5 minutes", 5), "15m": ("15 minutes", 15), "1h": ("1 hour", 60)}


def rollup_view(interval: str) -> str:
    """The relation holding the roll-up of `interval` (e.g. md.bars_5m)."""
    if interval not in ROLLUPS:
        raise ValueError(f"no roll-up {interval!r} (one of {', '.join(ROLLUPS)})")
    return f"md.bars_{interval}"


def bucket_offset(interval: str, config: RollupConfig) -> int:
    """Minutes after local midnight (modulo the bucket width) at which buckets start: one starts at the open."""
    minutes = ROLLUPS[interval][1]
    return (config.session_open.hour * 60 + config.session_open.minute) % minutes


def utc_bucket_offset(interval: str, config: RollupConfig) -> int | None:
    """The offset (minutes) of UTC buckets equal to the exchange-clock buckets, when there are such.

    That is when every UTC offset the time zone ever uses is the same modulo the bucket width (New
    York's -5 h and -4 h are whole hours, so its 09:30-aligned hourly buckets are the UTC hours
    from :30). Bucketing in UTC then gives the same buckets without a time-zone conversion per row,
    which makes refreshes and reads markedly faster. None when the zone's offsets differ within the
    width (e.g. a 30-minute DST shift).
    """
    width = ROLLUPS[interval][1]
    zone = ZoneInfo(config.timezone)
    offsets = {int(datetime(year, month, 1, 12, tzinfo=zone).utcoffset().total_seconds()) // 60 % width  # type: ignore[union-attr]
               for year in range(1990, 2051) for month in range(1, 13)}
    if len(offsets) != 1:
        return None
    return (bucket_offset(interval, config) - offsets.pop()) % width


def bucket_expression(interval: str, config: RollupConfig, cagg: bool, in_zone: bool = False) -> sql.Composable:
    """The bucket start of `ts` on the exchange's clock: time_bucket (continuous aggregates) or date_bin.

    In UTC when that gives the same buckets (`utc_bucket_offset`), else (or with `in_zone`) in the
    exchange's time zone.
    """
    width = sql.Literal(ROLLUPS[interval][0])
    utc = None if in_zone else utc_bucket_offset(interval, config)
    if utc is not None:
        offset = sql.Literal(f"{utc} minutes")
        if cagg:
            return sql.SQL("time_bucket({w}::interval, ts, \"offset\" => {o}::interval)").format(w=width, o=offset)
        return sql.SQL("date_bin({w}::interval, ts, timestamptz '2000-01-03 00:00+00' + {o}::interval)").format(
            w=width, o=offset)
    offset, tz = sql.Literal(f"{bucket_offset(interval, config)} minutes"), sql.Literal(config.timezone)
    if cagg:
        return sql.SQL("time_bucket({w}::interval, ts, {tz}, \"offset\" => {o}::interval)").format(
            w=width, tz=tz, o=offset)
    return sql.SQL("date_bin({w}::interval, ts at time zone {tz}, timestamp '2000-01-03' + {o}::interval)"
                   " at time zone {tz}").format(w=width, tz=tz, o=offset)


def rollup_query(interval: str, config: RollupConfig, source: sql.Composable, cagg: bool = False) -> sql.Composed:
    """The roll-up of the minute bars in `source` (a table or a parenthesized subquery with an alias).

    `cagg`: the form a continuous aggregate accepts (first/last, time_bucket); otherwise plain SQL
    (ordered array_agg, date_bin) that gives the same values on any PostgreSQL 14+.
    """
    first, last = ((sql.SQL("first(open, ts)"), sql.SQL("last(close, ts)")) if cagg else
                   (sql.SQL("(array_agg(open order by ts))[1]"), sql.SQL("(array_agg(close order by ts desc))[1]")))
    return sql.SQL(
        "select instrument_id, symbol, session_date, provider, {bucket} as ts,"
        " {first} as open, max(high) as high, min(low) as low, {last} as close, sum(volume) as volume,"
        " case when count(vwap) = count(*) and sum(volume) > 0 then sum(vwap * volume) / sum(volume) end as vwap,"
        " (case when count(trades) = count(*) then sum(trades) end)::bigint as trades,"
        " max(ingested_at) as ingested_at, count(*) as bars"
        " from {source} group by instrument_id, symbol, session_date, provider, 5"
    ).format(bucket=bucket_expression(interval, config, cagg), first=first, last=last, source=source)


def _signature(interval: str, config: RollupConfig, cagg: bool) -> str:
    """What a roll-up's definition depends on, stored as its comment (a change rebuilds it)."""
    kind = "continuous aggregate" if cagg else "view"
    utc = utc_bucket_offset(interval, config)
    where = f"UTC, offset {utc}" if utc is not None else f"{config.timezone}, offset {bucket_offset(interval, config)}"
    return (f"mdpipeline roll-up of md.bars_1m: {ROLLUPS[interval][0]} buckets aligned on the open at"
            f" {config.session_open:%H:%M} {config.timezone} ({where} minutes; {kind}, v2)")


def create_rollups(conn: psycopg.Connection, config: RollupConfig, timescale: bool) -> list[str]:
    """Create the roll-ups, or rebuild those whose bucketing changed; returns the ones (re)created.

    Continuous aggregates are created empty (`with no data`): real-time aggregation serves them
    correctly from the start and the refresh policy materializes them.
    """
    made: list[str] = []
    for interval in ROLLUPS:
        view = rollup_view(interval)
        wanted = _signature(interval, config, timescale)
        row = conn.execute("select obj_description(to_regclass(%s), 'pg_class')", (view,)).fetchone()
        if row is not None and row[0] == wanted:
            continue
        if conn.execute("select to_regclass(%s)", (view,)).fetchone()[0] is not None:  # type: ignore[index]
            kind = "materialized view" if _is_cagg(conn, view) else "view"
            conn.execute(sql.SQL(f"drop {kind} {{}} cascade").format(sql.Identifier(*view.split("."))))
        name = sql.Identifier(*view.split("."))
        body = rollup_query(interval, config, sql.SQL("md.bars_1m"), cagg=timescale)
        if timescale:
            # One index for the reads (instrument, bucket) instead of one per grouping column: refreshes
            # insert into the materialization, and every index slows them down.
            conn.execute(sql.SQL("create materialized view {} with (timescaledb.continuous,"
                                 " timescaledb.materialized_only = false, timescaledb.create_group_indexes = false)"
                                 " as {} with no data").format(name, body))
            conn.execute(sql.SQL("create index on {} (instrument_id, ts)").format(name))
        else:
            conn.execute(sql.SQL("create view {} as {}").format(name, body))
        conn.execute(sql.SQL("comment on view {} is {}").format(name, sql.Literal(wanted)))
        made.append(view)
    return made


def _is_cagg(conn: psycopg.Connection, view: str) -> bool:
    schema, name = view.split(".")
    row = conn.execute("select 1 from pg_extension where extname = 'timescaledb'").fetchone()
    if row is None:
        return False
    return conn.execute("select 1 from timescaledb_information.continuous_aggregates where view_schema = %s"
                        " and view_name = %s", (schema, name)).fetchone() is not None


# Refresh a range in batches of four weeks. Left to its default, TimescaleDB 2.28 refreshed a backfilled
# range in many small batches (a delete and an insert per hour or so of buckets): a year of 6 symbols'
# 5-minute buckets took 20 s instead of 2 s (bench/backfill.py 6 250). One batch for the whole range
# (100,000 buckets, as before) sorts the whole range's minute bars at once, which grows faster than the
# range: three months of 500 symbols refreshed in 51-55 s that way, 40-46 s in batches of one to four
# weeks with chunk-wise aggregation off (below); a year of 6 symbols the same either way
# (docs/performance.md).
BATCH_DAYS = 28


def refresh_options(interval: str) -> str:
    """`refresh_continuous_aggregate`'s options for the roll-up of `interval`: batches of BATCH_DAYS."""
    return json.dumps({"buckets_per_batch": BATCH_DAYS * 24 * 60 // ROLLUPS[interval][1]})


def _refresh_takes_options(conn: psycopg.Connection) -> bool:
    """Whether this TimescaleDB's refresh_continuous_aggregate takes `options` (newer releases do)."""
    row = conn.execute("select bool_or(pg_get_function_arguments(p.oid) like '%%options%%') from pg_proc p"
                       " where p.proname = 'refresh_continuous_aggregate'").fetchone()
    return bool(row and row[0])


def refresh_rollups(conn: psycopg.Connection, start: date, end: date, config: RollupConfig | None = None, *,
                    url: str | None = None) -> list[str]:
    """Bring the continuous aggregates up to date for the sessions [start, end] (after a load changed them).

    Only invalidated buckets are recomputed. A no-op on the plain layout (views aggregate at read
    time), and when the configuration's `refresh_after_load` is off (the refresh policy catches up
    within `refresh_every`). Must run outside a transaction (TimescaleDB refuses a refresh inside one).
    With `url` (the database `conn` is on) the aggregates refresh at the same time, one session each:
    each refresh scans the same minute bars on one server process, so on two cores a range's three
    refreshes take about half the time they take one after the other.
    """
    if not (config or load_storage_config().rollups).refresh_after_load:
        return []
    views = {rollup_view(interval): interval for interval in ROLLUPS if _is_cagg(conn, rollup_view(interval))}
    if not views:
        return []
    lower, upper = time_bounds(start, end)
    takes_options = _refresh_takes_options(conn)
    options = {view: refresh_options(interval) if takes_options else None for view, interval in views.items()}
    if url is None or len(views) == 1:
        for view in views:
            _refresh(conn, view, lower, upper, options[view])
        return list(views)
    with ThreadPoolExecutor(max_workers=len(views), thread_name_prefix="mdp-rollup") as pool:
        done = [pool.submit(_refresh_on_own_session, url, view, lower, upper, options[view]) for view in views]
        for future in done:
            future.result()
    return list(views)


# TimescaleDB aggregates each chunk apart and then merges the partial states; for a refresh of many
# chunks that means a second sort of every bucket's wide partial state (first/last), spilled to disk.
# Aggregating each batch at once is faster for wide ranges (the 5-minute roll-up of 100 x 63 sessions
# alone: 6.3-6.5 s -> 5.0-5.3 s); the buckets and values are the same either way.
CHUNKWISE = "timescaledb.enable_chunkwise_aggregation"


def _refresh(conn: psycopg.Connection, view: str, lower: date, upper: date, options: str | None) -> None:
    was = conn.execute("select current_setting(%s, true)", (CHUNKWISE,)).fetchone()[0]  # type: ignore[index]
    if was is None:  # a TimescaleDB without the setting
        _call_refresh(conn, view, lower, upper, options)
        return
    conn.execute("select set_config(%s, 'off', false)", (CHUNKWISE,))
    try:
        _call_refresh(conn, view, lower, upper, options)
    finally:
        conn.execute("select set_config(%s, %s, false)", (CHUNKWISE, was))


def _call_refresh(conn: psycopg.Connection, view: str, lower: date, upper: date, options: str | None) -> None:
    if options is not None:
        conn.execute("call refresh_continuous_aggregate(%s, %s::timestamptz, %s::timestamptz, options => %s::jsonb)",
                     (view, lower.isoformat(), upper.isoformat(), options))
    else:
        conn.execute("call refresh_continuous_aggregate(%s, %s::timestamptz, %s::timestamptz)",
                     (view, lower.isoformat(), upper.isoformat()))


def _refresh_on_own_session(url: str, view: str, lower: date, upper: date, options: str | None) -> None:
    with connect(url) as conn:
        _refresh(conn, view, lower, upper, options)
