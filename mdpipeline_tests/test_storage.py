"""Storage on a real PostgreSQL: migrations, partitions, range replacement, raw payload dedup, reads."""

from __future__ import annotations

from datetime import UTC, date, datetime

import polars as pl
import psycopg
import pytest

from mdpipeline.contracts.frames import STORED_BARS_1D
from mdpipeline.providers.base import RawPayload
from mdpipeline.storage.bars import read_bars_1d
from mdpipeline.storage.database import connect
from mdpipeline.storage.loader import ShrinkError, replace_range
from mdpipeline.storage.migrations import POSTGRES_PARTITIONED, migrate, storage_layout, timescale_available
from mdpipeline.storage.partitions import drop_partitions_before, ensure_partitions
from mdpipeline.storage.raw_store import load_payloads, save_payloads

pytestmark = pytest.mark.both_layouts


def _bars(days: list[date], provider: str = "synthetic", close: float = 10.0) -> pl.DataFrame:
    n = len(days)
    return pl.DataFrame({
        "instrument_id": [1] * n, "symbol": ["AAPL"] * n, "session_date": days, "provider": [provider] * n,
        "open": [close] * n, "high": [close + 1] * n, "low": [close - 1] * n, "close": [close] * n,
        "volume": [1e6] * n, "vwap": [None] * n, "trades": [None] * n, "raw_payload_id": [None] * n,
        "run_id": ["r1"] * n, "ingested_at": [datetime(2024, 7, 1, 12, 30, 0, 123456, tzinfo=UTC)] * n,
    }, schema=STORED_BARS_1D)


def test_migrate_is_idempotent_and_records_the_layout(conn: psycopg.Connection, layout: str) -> None:
    assert migrate(conn) == []  # the template is already migrated
    expected = "timescaledb" if timescale_available(conn) else "postgres-partitioned"
    assert storage_layout(conn) == expected
    if layout != "external":
        assert storage_layout(conn) == layout
    tables = {r[0] for r in conn.execute(
        "select table_schema || '.' || table_name from information_schema.tables "
        "where table_schema in ('raw', 'ref', 'md', 'quality', 'ops')")}
    assert {"raw.payloads", "ref.instruments", "ref.symbology", "ref.corporate_actions", "md.bars_1d",
            "md.bars_1m", "md.ticks", "quality.quarantine", "quality.check_results",
            "ops.publications", "ops.schema_migrations"} <= tables


@pytest.mark.parametrize("layout", [POSTGRES_PARTITIONED], indirect=True)  # the plain layout on every machine
def test_plain_postgres_partitions_and_retention(conn: psycopg.Connection) -> None:
    assert storage_layout(conn) == POSTGRES_PARTITIONED
    with conn.transaction():
        names = ensure_partitions(conn, "md.bars_1m", date(2024, 1, 15), date(2024, 3, 2))
    assert names == ["md.bars_1m_m202401", "md.bars_1m_m202402", "md.bars_1m_m202403"]
    revisions = conn.execute("select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid"
                             " where i.inhparent = 'md.bars_1m_revisions'::regclass order by 1").fetchall()
    assert revisions == [("bars_1m_revisions_m202401",), ("bars_1m_revisions_m202402",), ("bars_1m_revisions_m202403",)]
    kind = conn.execute("select relkind from pg_class where oid = 'md.bars_1m'::regclass").fetchone()
    assert kind == ("p",)
    with conn.transaction():
        dropped = drop_partitions_before(conn, "md.bars_1m", date(2024, 3, 1))
    assert dropped == ["md.bars_1m_m202401", "md.bars_1m_m202402"]


def test_replace_range_swaps_exactly_the_range(conn: psycopg.Connection) -> None:
    june = [date(2024, 6, d) for d in (3, 4, 5, 6, 7)]
    replace_range(conn, "md.bars_1d", _bars(june), provider="synthetic", start=june[0], end=june[-1])
    replace_range(conn, "md.bars_1d", _bars(june, provider="file"), provider="file", start=june[0], end=june[-1])
    # Re-load the middle of the range with new prices and one day fewer (the provider withdrew it).
    middle = [date(2024, 6, 4), date(2024, 6, 6)]
    loaded = replace_range(conn, "md.bars_1d", _bars(middle, close=20.0), provider="synthetic",
                           start=date(2024, 6, 4), end=date(2024, 6, 6), allow_deletes=True)
    assert (loaded.first_load, loaded.inserted, loaded.updated, loaded.deleted) == (False, 0, 2, 1)
    assert loaded.changed.rows() == [(1, date(2024, 6, 4)), (1, date(2024, 6, 5)), (1, date(2024, 6, 6))]
    stored = read_bars_1d(conn, start=june[0], end=june[-1], provider="synthetic")
    assert stored.select("session_date", "close").rows() == [
        (date(2024, 6, 3), 10.0), (date(2024, 6, 4), 20.0), (date(2024, 6, 6), 20.0), (date(2024, 6, 7), 10.0)]
    assert read_bars_1d(conn, start=june[0], end=june[-1], provider="file").height == 5  # other provider untouched
    assert stored["ingested_at"][0] == datetime(2024, 7, 1, 12, 30, 0, 123456, tzinfo=UTC)


def test_replace_range_refuses_rows_outside_the_range(conn: psycopg.Connection) -> None:
    frame = _bars([date(2024, 6, 3), date(2024, 6, 10)])
    with pytest.raises(ValueError, match="fall outside"):
        replace_range(conn, "md.bars_1d", frame, provider="synthetic", start=date(2024, 6, 3), end=date(2024, 6, 7))
    assert read_bars_1d(conn, start=date(2024, 1, 1), end=date(2024, 12, 31)).is_empty()


def test_raw_payloads_are_not_stored_twice(conn: psycopg.Connection) -> None:
    p = RawPayload(provider="synthetic", dataset="bars_1d", session_date=date(2024, 6, 3),
                   request_key="bars_1d:2024-06-03", endpoint="synthetic://bars_1d",
                   params={"session": "2024-06-03"}, body=b'{"bars": []}')
    first, new_first = save_payloads(conn, [p], "run-1")
    again, new_again = save_payloads(conn, [p], "run-2")
    assert (new_first, new_again) == (1, 0)
    assert first[0].payload_id == again[0].payload_id
    changed, new_changed = save_payloads(conn, [RawPayload(**{**p.__dict__, "body": b'{"bars": [1]}'})], "run-3")
    assert new_changed == 1
    latest = load_payloads(conn, "synthetic", "bars_1d", date(2024, 6, 3), date(2024, 6, 3))
    assert [x.body for x in latest] == [b'{"bars": [1]}']
    assert latest[0].payload_id == changed[0].payload_id
    runs = conn.execute("select first_run_id, last_run_id from raw.payloads order by payload_id").fetchall()
    assert runs == [("run-1", "run-2"), ("run-3", "run-3")]


def test_payloads_saved_together_each_keep_their_own_bytes(conn: psycopg.Connection) -> None:
    """Payloads stored in one statement: each stored body decompresses to its own payload, with its hash and size."""
    days = [date(2024, 6, d) for d in (3, 4, 5, 6, 7)]
    payloads = [RawPayload(provider="synthetic", dataset="bars_1d", session_date=d, request_key=f"bars_1d:{d}",
                           endpoint="synthetic://bars_1d", params={"session": d.isoformat()},
                           body=b'{"bars": [' + ", ".join(str(d.day * k) for k in range(20_000)).encode() + b"]}")
                for d in days]
    saved, new = save_payloads(conn, payloads, "run-1")
    assert new == len(days)
    stored = conn.execute("select session_date, compression, body_size, sha256, octet_length(body) from raw.payloads"
                          " order by session_date").fetchall()
    assert [row[:4] for row in stored] == [(p.session_date, "zstd", len(p.body), p.sha256) for p in payloads]
    assert all(packed < len(p.body) for (*_, packed), p in zip(stored, payloads, strict=True))
    loaded = load_payloads(conn, "synthetic", "bars_1d", days[0], days[-1])
    assert sorted((x.session_date, x.body) for x in loaded) == [(p.session_date, p.body) for p in payloads]
    assert [x.payload_id for x in saved] == sorted(x.payload_id for x in saved)


def test_reloading_unchanged_rows_keeps_when_they_were_learnt(conn: psycopg.Connection) -> None:
    days = [date(2024, 6, 3), date(2024, 6, 4)]
    replace_range(conn, "md.bars_1d", _bars(days), provider="synthetic", start=days[0], end=days[-1])
    later = datetime(2024, 8, 1, tzinfo=UTC)
    again = _bars(days).with_columns(pl.lit(later).alias("ingested_at"), pl.lit("r2").alias("run_id"))
    corrected = again.with_columns(pl.when(pl.col("session_date") == days[1]).then(pl.lit(10.5))
                                   .otherwise(pl.col("close")).alias("close"))
    replace_range(conn, "md.bars_1d", corrected, provider="synthetic", start=days[0], end=days[-1])
    stored = read_bars_1d(conn, start=days[0], end=days[-1])
    assert stored.select("session_date", "close", "ingested_at", "run_id").rows() == [
        (days[0], 10.0, datetime(2024, 7, 1, 12, 30, 0, 123456, tzinfo=UTC), "r1"),  # unchanged: not rewritten
        (days[1], 10.5, later, "r2"),  # corrected: learnt now, by the run that stored the correction
    ]


def test_a_reload_with_fewer_rows_than_stored_changes_nothing_unless_deletes_are_allowed(
        conn: psycopg.Connection) -> None:
    days = [date(2024, 6, 3), date(2024, 6, 4), date(2024, 6, 5)]
    msft = _bars(days, provider="file").with_columns(pl.lit(2, dtype=pl.Int64).alias("instrument_id"),
                                                     pl.lit("MSFT").alias("symbol"))
    two = pl.concat([_bars(days, provider="file"), msft])
    replace_range(conn, "md.bars_1d", two, provider="file", start=days[0], end=days[-1])
    only_aapl = _bars(days, provider="file", close=11.0)  # a vendor file that no longer holds MSFT
    with pytest.raises(ShrinkError, match=r"lacks 3 stored rows .*MSFT 2024-06-03.*--allow-deletes"):
        replace_range(conn, "md.bars_1d", only_aapl, provider="file", start=days[0], end=days[-1])
    stored = read_bars_1d(conn, start=days[0], end=days[-1])
    assert stored.height == 6
    assert set(stored["close"]) == {10.0}  # the refused load changed nothing, not even the AAPL prices
    # Scoped to the symbols the load is about, MSFT's rows are out of scope and stay.
    replace_range(conn, "md.bars_1d", only_aapl, provider="file", start=days[0], end=days[-1], symbols=["AAPL"])
    stored = read_bars_1d(conn, start=days[0], end=days[-1])
    assert stored.group_by("symbol").agg(pl.col("close").max()).sort("symbol").rows() == [
        ("AAPL", 11.0), ("MSFT", 10.0)]
    replace_range(conn, "md.bars_1d", only_aapl, provider="file", start=days[0], end=days[-1],
                  allow_deletes=True)
    assert read_bars_1d(conn, start=days[0], end=days[-1])["symbol"].unique().to_list() == ["AAPL"]


def test_overlapping_loads_of_one_provider_serialize(database_url: str) -> None:
    days = [date(2024, 6, 3), date(2024, 6, 4)]
    with connect(database_url) as first, connect(database_url) as second:
        replace_range(first, "md.bars_1d", _bars(days), provider="synthetic", start=days[0], end=days[-1])
        with first.transaction():  # a load in progress holds the (table, provider) lock ...
            replace_range(first, "md.bars_1d", _bars(days, close=12.0), provider="synthetic",
                          start=days[0], end=days[-1])
            second.execute("set lock_timeout = '200ms'")
            with pytest.raises(psycopg.errors.LockNotAvailable):  # ... so an overlapping one waits for it
                second.execute("select pg_advisory_xact_lock(hashtext('mdpipeline.load:md.bars_1d:synthetic'))")
        replace_range(second, "md.bars_1d", _bars(days, close=13.0), provider="synthetic",
                      start=days[0], end=days[-1])  # and then goes through: no duplicate-key failure
        assert read_bars_1d(second, start=days[0], end=days[-1])["close"].to_list() == [13.0, 13.0]
