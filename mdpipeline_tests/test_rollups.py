"""Roll-ups of minute bars (5m, 15m, 1h) on both layouts: hand-computed OHLCV, buckets on the exchange's clock,
as-of reads, adjustment, the HTTP read API and the CLI.

Prices are multiples of 1/16 and volumes whole numbers, so every product and sum is exact in binary
floating point: the expected values below are exact, and a continuous aggregate (TimescaleDB) and a
view aggregating at read time (plain PostgreSQL) must both give exactly them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import uuid
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import psycopg
import pytest
from polars.testing import assert_frame_equal
from psycopg import sql

from mdpipeline.contracts.frames import STORED_BARS_1M
from mdpipeline.read import read_bars
from mdpipeline.serve.server import BackgroundServer
from mdpipeline.storage.database import connect
from mdpipeline.storage.loader import replace_range
from mdpipeline.storage.migrations import storage_layout
from mdpipeline.storage.rollups import CHUNKWISE, ROLLUPS, bucket_expression, refresh_rollups, utc_bucket_offset
from mdpipeline.storage.storage_config import RollupConfig
from mdpipeline_tests.conftest import PgServers

pytestmark = pytest.mark.both_layouts

WINTER, SUMMER = date(2024, 1, 2), date(2024, 7, 2)  # 09:30 New York = 14:30 UTC (EST), 13:30 UTC (EDT)
OPEN_UTC = {WINTER: datetime(2024, 1, 2, 14, 30, tzinfo=UTC), SUMMER: datetime(2024, 7, 2, 13, 30, tzinfo=UTC)}
LEARNT = datetime(2024, 8, 1, tzinfo=UTC)
MINUTES = 75  # 09:30 .. 10:44: one full hour bucket and a partial one


def minute_bars(day: date, minutes: int = MINUTES, *, instrument: int = 1, symbol: str = "AAPL",
                learnt: datetime = LEARNT, shift: float = 0.0) -> pl.DataFrame:
    """Bar i (minutes after the open): open 100 + i/4, high open + 1/2, low open - 1/2, close open + 1/8,
    vwap open + 1/16, volume 100 (i + 1), trades i + 1."""
    i = pl.int_range(0, minutes, eager=True)
    opens = 100.0 + shift + i * 0.25
    return pl.DataFrame({
        "instrument_id": instrument, "symbol": symbol, "session_date": day, "provider": "file",
        "open": opens, "high": opens + 0.5, "low": opens - 0.5, "close": opens + 0.125,
        "volume": (i + 1) * 100.0, "vwap": opens + 0.0625, "trades": i + 1,
        "ts": [OPEN_UTC[day] + timedelta(minutes=int(k)) for k in i], "raw_payload_id": None, "run_id": "r1",
        "ingested_at": learnt,
    }).select([pl.col(c).cast(t) for c, t in STORED_BARS_1M.items()])


def expected(day: date, first: int, last: int, shift: float = 0.0) -> dict[str, object]:
    """The roll-up of bars first..last (inclusive) of `minute_bars`, by the OHLCV rules, computed by hand:
    Σ(i + 1) over the bucket is the trade count and volume / 100; vwap = Σ vwap_i · volume_i / Σ volume_i."""
    weights = sum(i + 1 for i in range(first, last + 1))
    weighted = sum((100.0 + shift + i * 0.25 + 0.0625) * (i + 1) * 100.0 for i in range(first, last + 1))
    return {"ts": OPEN_UTC[day] + timedelta(minutes=first), "open": 100.0 + shift + first * 0.25,
            "high": 100.0 + shift + last * 0.25 + 0.5, "low": 100.0 + shift + first * 0.25 - 0.5,
            "close": 100.0 + shift + last * 0.25 + 0.125, "volume": weights * 100.0,
            "vwap": weighted / (weights * 100.0), "trades": weights, "bars": last - first + 1}


def load(conn: psycopg.Connection, frame: pl.DataFrame, day: date, url: str | None = None) -> None:
    """Store minute bars as the store step does: the load, then the roll-ups' refresh (with `url`: the
    aggregates at the same time, each on a session of its own, as the roll-up asset does)."""
    replace_range(conn, "md.bars_1m", frame, provider="file", start=day, end=day, allow_deletes=True)
    refresh_rollups(conn, day, day, url=url)


COLUMNS = ["ts", "open", "high", "low", "close", "volume", "vwap", "trades", "bars"]


def rows(frame: pl.DataFrame) -> list[dict[str, object]]:
    return frame.select(COLUMNS).to_dicts()


@pytest.mark.parametrize("day", [WINTER, SUMMER])
def test_hourly_buckets_start_at_the_open_in_winter_and_summer(conn: psycopg.Connection, day: date) -> None:
    load(conn, minute_bars(day), day)
    hourly = read_bars(conn, "AAPL", day, day, interval="1h")
    assert rows(hourly) == [expected(day, 0, 59), expected(day, 60, 74)]  # 09:30-10:30, 10:30-10:44 (partial)
    assert hourly["session_date"].to_list() == [day, day]
    assert hourly["ingested_at"].to_list() == [LEARNT, LEARNT]


def test_five_and_fifteen_minute_buckets(conn: psycopg.Connection) -> None:
    load(conn, minute_bars(SUMMER), SUMMER)
    five = read_bars(conn, "AAPL", SUMMER, SUMMER, interval="5m")
    assert rows(five) == [expected(SUMMER, k, k + 4) for k in range(0, MINUTES, 5)]
    fifteen = read_bars(conn, "AAPL", SUMMER, SUMMER, interval="15m")
    assert rows(fifteen) == [expected(SUMMER, k, k + 14) for k in range(0, MINUTES, 15)]
    first = fifteen.row(0, named=True)  # written out: bars 0..14
    assert (first["open"], first["high"], first["low"], first["close"]) == (100.0, 104.0, 99.5, 103.625)
    assert (first["volume"], first["trades"], first["bars"]) == (12000.0, 120, 15)
    assert first["vwap"] == (100.0625 * 120 + 0.25 * sum(i * (i + 1) for i in range(15))) / 120


def test_vwap_and_trades_are_null_unless_every_bar_has_them(conn: psycopg.Connection) -> None:
    frame = minute_bars(WINTER, 10).with_columns(
        pl.when(pl.col("ts") == OPEN_UTC[WINTER] + timedelta(minutes=1)).then(None).otherwise(pl.col("vwap"))
        .alias("vwap"),
        pl.when(pl.col("ts") == OPEN_UTC[WINTER] + timedelta(minutes=7)).then(None).otherwise(pl.col("trades"))
        .alias("trades"))
    load(conn, frame, WINTER)
    five = read_bars(conn, "AAPL", WINTER, WINTER, interval="5m")
    assert five.select("vwap", "trades").rows() == [(None, 15), (expected(WINTER, 5, 9)["vwap"], None)]


def test_a_correction_shows_in_the_rollups_and_as_of_reads_roll_up_what_was_known(conn: psycopg.Connection,
                                                                                   database_url: str) -> None:
    load(conn, minute_bars(SUMMER), SUMMER, url=database_url)
    corrected_at = LEARNT + timedelta(days=3)
    load(conn, minute_bars(SUMMER, learnt=corrected_at, shift=1.0), SUMMER, url=database_url)  # prices 1.0 higher
    assert rows(read_bars(conn, "AAPL", SUMMER, SUMMER, interval="1h")) == [
        expected(SUMMER, 0, 59, shift=1.0), expected(SUMMER, 60, 74, shift=1.0)]
    before = read_bars(conn, "AAPL", SUMMER, SUMMER, interval="1h", as_of=corrected_at - timedelta(seconds=1))
    assert rows(before) == [expected(SUMMER, 0, 59), expected(SUMMER, 60, 74)]
    assert read_bars(conn, "AAPL", SUMMER, SUMMER, interval="1h", as_of=LEARNT - timedelta(seconds=1)).is_empty()
    # As of a time after the correction, the as-of path (aggregating at read time) agrees with the stored roll-up.
    assert rows(read_bars(conn, "AAPL", SUMMER, SUMMER, interval="15m", as_of=corrected_at)) == rows(
        read_bars(conn, "AAPL", SUMMER, SUMMER, interval="15m"))


@pytest.mark.timescaledb
@pytest.mark.parametrize("setting", ["on", "off"])
def test_a_refresh_leaves_the_sessions_chunkwise_aggregation_as_it_was(conn: psycopg.Connection, setting: str) -> None:
    """The refresh turns TimescaleDB's chunk-wise aggregation off for itself only (rollups.CHUNKWISE)."""
    conn.execute("select set_config(%s, %s, false)", (CHUNKWISE, setting))
    load(conn, minute_bars(SUMMER), SUMMER)
    assert conn.execute("select current_setting(%s)", (CHUNKWISE,)).fetchone() == (setting,)
    assert rows(read_bars(conn, "AAPL", SUMMER, SUMMER, interval="1h")) == [
        expected(SUMMER, 0, 59), expected(SUMMER, 60, 74)]


@pytest.mark.timescaledb
def test_without_refresh_after_load_the_refresh_policy_catches_up(conn: psycopg.Connection) -> None:
    load(conn, minute_bars(SUMMER), SUMMER)  # refreshed: the hourly buckets are materialized
    replace_range(conn, "md.bars_1m", minute_bars(SUMMER, learnt=LEARNT + timedelta(days=1), shift=1.0),
                  provider="file", start=SUMMER, end=SUMMER)
    assert refresh_rollups(conn, SUMMER, SUMMER, RollupConfig(refresh_after_load=False)) == []
    old = [expected(SUMMER, 0, 59), expected(SUMMER, 60, 74)]
    assert rows(read_bars(conn, "AAPL", SUMMER, SUMMER, interval="1h")) == old  # stale until the policy runs
    job = conn.execute("select job_id from timescaledb_information.jobs where hypertable_name = 'bars_1h'"
                       " and proc_name = 'policy_refresh_continuous_aggregate'").fetchone()
    conn.execute("call run_job(%s)", job)  # what TimescaleDB's scheduler does every refresh_every
    assert rows(read_bars(conn, "AAPL", SUMMER, SUMMER, interval="1h")) == [
        expected(SUMMER, 0, 59, shift=1.0), expected(SUMMER, 60, 74, shift=1.0)]


def test_adjusted_rollups_scale_prices_and_volumes(conn: psycopg.Connection) -> None:
    load(conn, minute_bars(SUMMER), SUMMER)
    with conn.transaction():  # a 2-for-1 split after the session: earlier prices x 1/2, volumes x 2
        conn.execute("insert into md.adjustment_factors (instrument_id, ex_date, action, ratio, price_factor,"
                     " volume_factor, learned_at) values (1, '2024-07-10', 'split', 2, 0.5, 2, %s)", (LEARNT,))
    hourly = read_bars(conn, "AAPL", SUMMER, SUMMER, interval="1h", adjust="split").row(0, named=True)
    raw = expected(SUMMER, 0, 59)
    assert (hourly["open"], hourly["close"], hourly["vwap"]) == (raw["open"] / 2, raw["close"] / 2,  # type: ignore[operator]
                                                                   raw["vwap"] / 2)  # type: ignore[operator]
    assert hourly["volume"] == raw["volume"] * 2  # type: ignore[operator]


def test_storage_layout_serves_rollups_as_built(conn: psycopg.Connection) -> None:
    load(conn, minute_bars(WINTER), WINTER)
    names = conn.execute("select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace"
                         " where n.nspname = 'md' and c.relname in ('bars_5m', 'bars_15m', 'bars_1h')").fetchall()
    assert {n[0] for n in names} == {"bars_5m", "bars_15m", "bars_1h"}
    caggs = conn.execute("select view_name, materialized_only from timescaledb_information.continuous_aggregates"
                         " order by 1").fetchall() if storage_layout(conn) == "timescaledb" else []
    if storage_layout(conn) == "timescaledb":
        assert caggs == [("bars_15m", False), ("bars_1h", False), ("bars_5m", False)]  # real-time aggregates
        policies = conn.execute("select hypertable_name, config ->> 'end_offset', schedule_interval::text"
                                " from timescaledb_information.jobs where proc_name ="
                                " 'policy_refresh_continuous_aggregate'").fetchall()
        assert len(policies) == 3
        assert {(p[1], p[2]) for p in policies} == {("01:00:00", "00:15:00")}
        # The load's refresh materialized the buckets (reads are not all computed in real time).
        schema, name = conn.execute("select materialization_hypertable_schema, materialization_hypertable_name"
                                    " from timescaledb_information.continuous_aggregates"
                                    " where view_name = 'bars_1h'").fetchone()  # type: ignore[misc]
        assert conn.execute(f'select count(*) from "{schema}"."{name}"').fetchone() == (2,)
    else:
        assert caggs == []


def test_http_and_cli_serve_the_rollups(conn: psycopg.Connection, database_url: str) -> None:
    load(conn, minute_bars(WINTER), WINTER)
    server = BackgroundServer(database_url).start()
    try:
        url = f"{server.url}/v1/bars/1h?symbol=AAPL&start=2024-01-02&end=2024-01-02"
        with urllib.request.urlopen(url, timeout=10) as response:
            served = json.loads(response.read())
    finally:
        server.stop()
    assert [(r["ts"], r["open"], r["close"], r["volume"], r["bars"]) for r in served] == [
        ("2024-01-02T14:30:00+00:00", 100.0, 114.875, 183000.0, 60),
        ("2024-01-02T15:30:00+00:00", 115.0, 118.625, 102000.0, 15)]
    out = subprocess.run([str(Path(sys.executable).parent / "mdpipeline"), "bars", "AAPL", "--start", "2024-01-02",
                          "--end", "2024-01-02", "--interval", "15m", "--format", "json"],
                         env={**os.environ, "MDP_DATABASE_URL": database_url}, capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    assert [(r["open"], r["close"], r["bars"]) for r in printed] == [
        (e["open"], e["close"], e["bars"]) for e in (expected(WINTER, k, k + 14) for k in range(0, MINUTES, 15))]
    bad = subprocess.run([str(Path(sys.executable).parent / "mdpipeline"), "bars", "AAPL", "--start", "2024-01-02",
                          "--end", "2024-01-02", "--interval", "2h"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "MDP_DATABASE_URL": database_url}, check=False)
    assert bad.returncode == 2
    assert "5m, 15m, 1h" in bad.stderr


@pytest.mark.timescaledb
def test_random_minute_bars_roll_up_identically_on_both_layouts(pg_servers: PgServers) -> None:
    """Realistic prices (cents, random volumes, gaps, two instruments, two sessions): the continuous aggregates
    and the plain views give equal frames."""
    rng = np.random.default_rng(11)
    frames = []
    for instrument, symbol in ((1, "AAPL"), (2, "MSFT")):
        for day in (WINTER, SUMMER):
            bars = minute_bars(day, 390, instrument=instrument, symbol=symbol)
            close = np.round(100 + np.cumsum(rng.normal(0, 0.05, 390)), 2)
            frames.append(bars.with_columns(
                pl.Series("open", np.round(close + rng.normal(0, 0.02, 390), 2)), pl.Series("close", close),
                pl.Series("volume", rng.integers(1, 50_000, 390).astype(float)),
                pl.Series("vwap", np.round(close + rng.normal(0, 0.01, 390), 4)),
            ).with_columns(pl.max_horizontal("open", "close").alias("high") + 0.01,
                           pl.min_horizontal("open", "close").alias("low") - 0.01)
                .filter(pl.Series(rng.random(390) > 0.05)))  # some minutes without a bar
    frame = pl.concat(frames).select(list(STORED_BARS_1M))
    read: dict[str, dict[str, pl.DataFrame]] = {}
    for layout in ("timescaledb", "postgres-partitioned"):
        url = _database(pg_servers, layout)
        with connect(url) as conn:
            assert storage_layout(conn) == layout
            for day in (WINTER, SUMMER):
                load(conn, frame.filter(pl.col("session_date") == day), day)
            read[layout] = {i: read_bars(conn, ["AAPL", "MSFT"], WINTER, SUMMER, interval=i) for i in ROLLUPS}
    for interval in ROLLUPS:
        assert read["timescaledb"][interval].height > 0
        assert_frame_equal(read["timescaledb"][interval], read["postgres-partitioned"][interval])


def _database(servers: PgServers, layout: str) -> str:
    """A fresh database on the layout's server (dropped with the session's servers)."""
    admin_url = servers.url(layout)
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {} template {}").format(
            sql.Identifier(name), sql.Identifier(servers.template(layout))))
    return admin_url.rsplit("/", 1)[0] + "/" + name


def test_utc_buckets_are_used_only_where_they_equal_the_exchange_clock() -> None:
    def offsets(zone: str, opens: time) -> list[int | None]:
        return [utc_bucket_offset(i, RollupConfig(timezone=zone, session_open=opens)) for i in ROLLUPS]
    assert offsets("America/New_York", time(9, 30)) == [0, 0, 30]  # 09:30 EST/EDT = 14:30/13:30 UTC: hours from :30
    assert offsets("Europe/London", time(8, 0)) == [0, 0, 0]
    assert offsets("Asia/Kolkata", time(9, 15)) == [0, 0, 45]  # +05:30: 09:15 local = 03:45 UTC
    assert offsets("Australia/Lord_Howe", time(10, 0)) == [0, 0, None]  # a 30-minute DST shift: local buckets


def test_utc_and_exchange_clock_buckets_agree_all_year(conn: psycopg.Connection) -> None:
    config = RollupConfig(timezone="America/New_York", session_open=time(9, 30))
    forms = [(cagg, in_zone) for cagg in ((False, True) if storage_layout(conn) == "timescaledb" else (False,))
             for in_zone in (False, True)]
    for interval in ROLLUPS:
        exprs = [bucket_expression(interval, config, cagg, in_zone) for cagg, in_zone in forms]
        # Every 7 minutes of a year, but for the nights of the two DST changes (00:00-04:00 New York), when a
        # bucket on the local clock can start at a local time that does not exist or exists twice, so that the
        # zone form puts bars in a bucket starting after them; the UTC form has no such hours. No exchange trades
        # then.
        query = sql.SQL("select ts, {} from (select generate_series(timestamptz '2024-01-01', '2024-12-31',"
                        " '7 minutes') union all values (timestamptz '2024-01-02 14:30+00'), ('2024-07-02 13:30+00'))"
                        " as times (ts) where ts not between '2024-03-10 05:00+00' and '2024-03-10 08:00+00'"
                        " and ts not between '2024-11-03 04:00+00' and '2024-11-03 09:00+00'").format(
            sql.SQL(", ").join(exprs))
        buckets = conn.execute(query).fetchall()
        assert len(buckets) > 70_000
        assert all(len(set(row[1:])) == 1 for row in buckets), interval
        opens = {row[1] for row in buckets if row[0] in (datetime(2024, 1, 2, 14, 30, tzinfo=UTC),
                                                         datetime(2024, 7, 2, 13, 30, tzinfo=UTC))}
        assert opens == {datetime(2024, 1, 2, 14, 30, tzinfo=UTC), datetime(2024, 7, 2, 13, 30, tzinfo=UTC)}
