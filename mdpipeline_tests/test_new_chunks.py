"""First loads that build new TimescaleDB chunks apart and attach them (storage/new_chunks.py): the stored
rows, the chunks' slices and indexes, the roll-ups and a concurrent load must be what a plain COPY into
the hypertable gives."""

from __future__ import annotations

import threading
import time
from datetime import UTC, date, datetime, timedelta

import polars as pl
import psycopg
import pytest

from mdpipeline.storage.bars import read_bars_1m
from mdpipeline.storage.database import connect
from mdpipeline.storage.loader import replace_range
from mdpipeline.storage.new_chunks import MIN_ROWS, SCHEMA, session_slices
from mdpipeline.storage.partitions import drop_partitions_before
from mdpipeline.storage.rollups import refresh_rollups
from mdpipeline_tests.pipeline_helpers import stored_minute_bars

pytestmark = pytest.mark.timescaledb

LEARNT = datetime(2024, 3, 1, tzinfo=UTC)


def minute_frame(start: date, end: date, instruments: int, provider: str = "file") -> pl.DataFrame:
    """Every regular-session minute of [start, end] for instruments 1..n, in stored columns."""
    return stored_minute_bars(start, end, instruments, LEARNT, provider=provider)


def chunks(conn: psycopg.Connection) -> list[tuple[str, datetime, datetime]]:
    """(schema, start, end) of md.bars_1m's chunks, in time order."""
    return [(r[0], r[1], r[2]) for r in conn.execute(
        "select chunk_schema, range_start, range_end from timescaledb_information.chunks"
        " where hypertable_name = 'bars_1m' order by range_start").fetchall()]


def stored(conn: psycopg.Connection, provider: str) -> pl.DataFrame:
    """A provider's stored minute bars, in key order."""
    return read_bars_1m(conn, start=date(2000, 1, 1), end=date(2100, 1, 1), provider=provider).sort(
        "instrument_id", "session_date", "ts")


def index_columns(conn: psycopg.Connection, schema: str) -> set[tuple[str, ...]]:
    """The column lists of the indexes on md.bars_1m's chunks in `schema`."""
    rows = conn.execute(
        "select array_agg(a.attname order by k.n) from timescaledb_information.chunks c"
        " join pg_index i on i.indrelid = format('%%I.%%I', c.chunk_schema, c.chunk_name)::regclass"
        " cross join lateral unnest(i.indkey) with ordinality k(attnum, n)"
        " join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum"
        " where c.hypertable_name = 'bars_1m' and c.chunk_schema = %s group by i.indexrelid", (schema,)).fetchall()
    return {tuple(r[0]) for r in rows}


def test_first_load_builds_empty_slices_apart_and_the_table_reads_as_a_plain_copy(conn: psycopg.Connection) -> None:
    # Wed 2024-01-03 .. Fri 2024-01-19: weekly slices start on Thursdays; the first slice (one session
    # of 20 instruments, 7,800 rows) stays under MIN_ROWS and goes through the hypertable.
    frame = minute_frame(date(2024, 1, 3), date(2024, 1, 19), 20)
    result = replace_range(conn, "md.bars_1m", frame, provider="file", start=date(2024, 1, 3), end=date(2024, 1, 19))
    assert (result.first_load, result.inserted) == (True, frame.height)
    assert stored(conn, "file").equals(frame.sort("instrument_id", "session_date", "ts"))

    made = chunks(conn)
    assert [c[0] for c in made] == ["_timescaledb_internal", SCHEMA, SCHEMA, SCHEMA]
    assert [c[1].date() for c in made] == [date(2023, 12, 28), date(2024, 1, 4), date(2024, 1, 11),
                                           date(2024, 1, 18)]
    assert all((c[2] - c[1]).days == 7 for c in made)
    # the chain plans its chunks on the same slices (by session date)
    slice_of = session_slices("md.bars_1m")
    assert slice_of is not None
    assert {date(1970, 1, 1) + timedelta(days=7 * slice_of(d)) for d in frame["session_date"].unique()} == {
        c[1].date() for c in made}
    # the built chunks carry the hypertable's indexes, like the chunk TimescaleDB made itself
    assert index_columns(conn, SCHEMA) == index_columns(conn, "_timescaledb_internal") == {
        ("instrument_id", "provider", "session_date", "ts"), ("ts",)}
    # rows of the same slices loaded later go into the built chunks (no overlapping chunk appears) ...
    other = minute_frame(date(2024, 1, 8), date(2024, 1, 8), 2, provider="polygon")
    replace_range(conn, "md.bars_1m", other, provider="polygon", start=date(2024, 1, 8), end=date(2024, 1, 8))
    assert chunks(conn) == made
    # ... and the next slice TimescaleDB makes itself starts where the last built one ends
    later = minute_frame(date(2024, 1, 25), date(2024, 1, 25), 1, provider="polygon")
    replace_range(conn, "md.bars_1m", later, provider="polygon", start=date(2024, 1, 25), end=date(2024, 1, 25))
    assert chunks(conn)[-1] == ("_timescaledb_internal", made[-1][2], made[-1][2] + (made[-1][2] - made[-1][1]))

    # a re-load of the range takes the set-based diff over the built chunks
    changed = frame.with_columns(pl.when(pl.int_range(pl.len()) == 12_345).then(pl.col("close") + 1)
                                 .otherwise(pl.col("close")).alias("close"))
    again = replace_range(conn, "md.bars_1m", changed, provider="file", start=date(2024, 1, 3), end=date(2024, 1, 19))
    assert (again.first_load, again.inserted, again.updated, again.deleted) == (False, 0, 1, 0)
    assert stored(conn, "file").equals(changed.sort("instrument_id", "session_date", "ts"))

    # retention drops built chunks like any other
    drop_partitions_before(conn, "md.bars_1m", date(2024, 1, 18))
    assert [c[1].date() for c in chunks(conn)] == [date(2024, 1, 18), date(2024, 1, 25)]
    assert conn.execute("select count(*) from pg_tables where schemaname = %s", (SCHEMA,)).fetchone() == (1,)
    assert stored(conn, "file").equals(changed.filter(pl.col("session_date") >= date(2024, 1, 18))
                                       .sort("instrument_id", "session_date", "ts"))


def test_roll_ups_see_rows_of_built_chunks_below_the_refreshed_range(conn: psycopg.Connection) -> None:
    # a later range loaded and the aggregates refreshed over both ranges first: the earlier range is
    # materialized (empty) and below the invalidation threshold, so only a recorded change brings it back
    later = minute_frame(date(2024, 2, 5), date(2024, 2, 9), 15)
    replace_range(conn, "md.bars_1m", later, provider="file", start=date(2024, 2, 5), end=date(2024, 2, 9))
    refresh_rollups(conn, date(2024, 1, 2), date(2024, 2, 9))
    earlier = minute_frame(date(2024, 1, 8), date(2024, 1, 12), 15)  # 3 + 2 sessions in two slices, both built
    replace_range(conn, "md.bars_1m", earlier, provider="file", start=date(2024, 1, 8), end=date(2024, 1, 12))
    assert [c[0] for c in chunks(conn) if c[1] < datetime(2024, 1, 20, tzinfo=UTC)] == [SCHEMA, SCHEMA]
    refresh_rollups(conn, date(2024, 1, 8), date(2024, 1, 12))

    buckets = earlier.group_by("instrument_id", pl.col("ts").dt.truncate("5m")).agg(pl.col("volume").sum())
    got = conn.execute("select count(*), sum(volume) from md.bars_5m where provider = 'file' and ts < %s",
                       (datetime(2024, 1, 13, tzinfo=UTC),)).fetchone()
    assert got is not None
    assert (got[0], float(got[1])) == (buckets.height, buckets["volume"].sum())


def test_a_concurrent_first_load_of_the_same_empty_slice_falls_back_to_the_hypertable(
        database_url: str) -> None:
    start, end = date(2024, 1, 4), date(2024, 1, 10)  # Thursday to Wednesday: one weekly slice
    first, second = minute_frame(start, end, 8, "file"), minute_frame(start, end, 8, "polygon")
    assert first.height >= MIN_ROWS
    outcome: list[object] = []
    with connect(database_url) as holder, connect(database_url) as other:
        holder.execute("begin")
        replace_range(holder, "md.bars_1m", first, provider="file", start=start, end=end)  # attached, not committed
        pid = other.info.backend_pid

        def load() -> None:
            try:
                outcome.append(replace_range(other, "md.bars_1m", second, provider="polygon", start=start, end=end))
            except Exception as exc:  # reported by the assertion below
                outcome.append(exc)

        thread = threading.Thread(target=load)
        thread.start()
        with connect(database_url) as watcher:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not watcher.execute(
                    "select wait_event_type = 'Lock' from pg_stat_activity where pid = %s", (pid,)).fetchone()[0]:  # type: ignore[index]
                time.sleep(0.05)
            assert watcher.execute("select wait_event_type from pg_stat_activity where pid = %s",
                                   (pid,)).fetchone() == ("Lock",)
        holder.execute("commit")
        thread.join(60)
        assert len(outcome) == 1
        assert not isinstance(outcome[0], Exception), outcome
        made = chunks(holder)
        assert [c[0] for c in made] == [SCHEMA]  # one chunk for the week: the second load went into it
        assert stored(holder, "file").equals(first.sort("instrument_id", "session_date", "ts"))
        assert stored(holder, "polygon").equals(second.sort("instrument_id", "session_date", "ts"))
