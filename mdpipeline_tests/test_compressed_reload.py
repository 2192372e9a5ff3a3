"""Re-loads into compressed chunks (TimescaleDB): more than 100,000 minute bars of an old range are compressed
by the compression policy first, then loaded again, unchanged and corrected, and replayed through Dagster.

TimescaleDB refuses a DML transaction that decompresses more than
`timescaledb.max_tuples_decompressed_per_dml_transaction` tuples (100,000 by default); each test first shows
that its range is over that limit, so it would fail without the loader's handling.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import dagster as dg
import polars as pl
import psycopg
import pytest

from mdpipeline.orchestration.assembly import build_definitions
from mdpipeline.orchestration.runner import materialize_range
from mdpipeline.storage.bars import read_bars_1m
from mdpipeline.storage.loader import replace_range
from mdpipeline_tests.pipeline_helpers import settings_for, stored_minute_bars

pytestmark = pytest.mark.timescaledb

START, END = date(2023, 1, 3), date(2023, 1, 31)  # 20 sessions, long older than compress_after (30 days)
LIMIT_EXCEEDED = "tuple decompression limit exceeded"


def minute_frame(instruments: int, learnt: datetime, shift: float = 0.0) -> pl.DataFrame:
    """A full regular session of minute bars for every session of [START, END] and instrument 1..n."""
    return stored_minute_bars(START, END, instruments, learnt, shift=shift)


def compress_old_chunks(conn: psycopg.Connection) -> int:
    """Run md.bars_1m's compression policy now (the job TimescaleDB's scheduler runs); returns compressed chunks."""
    job = conn.execute("select job_id from timescaledb_information.jobs where hypertable_name = 'bars_1m'"
                       " and proc_name = 'policy_compression'").fetchone()
    assert job is not None
    conn.execute("call run_job(%s)", (job[0],))
    return int(conn.execute("select count(*) from timescaledb_information.chunks where hypertable_name = 'bars_1m'"
                            " and is_compressed").fetchone()[0])  # type: ignore[index]


def decompressed_rows(conn: psycopg.Connection) -> int:
    """Rows of md.bars_1m held uncompressed (in the chunks' own heaps) rather than in compressed batches."""
    chunks = conn.execute("select chunk_schema || '.' || chunk_name from timescaledb_information.chunks"
                          " where hypertable_name = 'bars_1m'").fetchall()
    return sum(int(conn.execute(f"select count(*) from only {c[0]}").fetchone()[0]) for c in chunks)  # type: ignore[index]


def assert_over_the_default_limit(conn: psycopg.Connection) -> None:
    """An ordinary UPDATE over the range decompresses more than TimescaleDB allows by default (rolled back)."""
    with pytest.raises(psycopg.errors.ConfigurationLimitExceeded, match=LIMIT_EXCEEDED), conn.transaction():
        conn.execute("update md.bars_1m set close = close + 0 where session_date between %s and %s", (START, END))


def test_reloads_of_a_compressed_range_of_over_100k_minute_bars(conn: psycopg.Connection) -> None:
    learnt = datetime(2023, 2, 1, tzinfo=UTC)
    frame = minute_frame(13, learnt)  # 13 x 20 x 390 = 101,400 bars
    assert frame.height == 101_400
    replace_range(conn, "md.bars_1m", frame, provider="file", start=START, end=END)
    assert compress_old_chunks(conn) >= 5
    assert decompressed_rows(conn) == 0
    assert_over_the_default_limit(conn)

    again = replace_range(conn, "md.bars_1m", frame, provider="file", start=START, end=END)
    assert (again.first_load, again.inserted, again.updated, again.deleted) == (False, 0, 0, 0)
    assert decompressed_rows(conn) == 0  # an unchanged re-load decompresses nothing

    corrected = minute_frame(13, learnt + timedelta(days=30), shift=0.5)  # every bar changes
    done = replace_range(conn, "md.bars_1m", corrected, provider="file", start=START, end=END)
    assert (done.inserted, done.updated, done.deleted) == (0, 101_400, 0)
    stored = read_bars_1m(conn, start=START, end=END).sort("instrument_id", "ts")
    assert stored.equals(corrected.sort("instrument_id", "ts"))
    assert conn.execute("select count(*), min(close), max(close) from md.bars_1m_revisions").fetchone() == (
        101_400, frame["close"].min(), frame["close"].max())


def test_a_replay_over_a_compressed_range_gives_the_same_rows(
        database_url: str, conn: psycopg.Connection, kafka_bootstrap: str, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MDP_FRAMES_DIR", str(tmp_path / "frames"))
    defs = build_definitions(settings_for(database_url, kafka_bootstrap))
    chain = ("validated", "normalized", "md")
    start, end = date(2023, 1, 3), date(2023, 3, 7)  # 44 sessions x 6 symbols x 390 = 102,960 bars
    backfill = materialize_range(defs, start, end, providers=["synthetic"], instance=dg.DagsterInstance.ephemeral(),
                                 select=" or ".join(f'key:"{layer}/synthetic/bars_1m"' for layer in ("raw", *chain)))
    assert backfill.success
    before = read_bars_1m(conn, start=start, end=end)
    assert before.height == 102_960
    assert compress_old_chunks(conn) >= 9
    assert decompressed_rows(conn) == 0
    with pytest.raises(psycopg.errors.ConfigurationLimitExceeded, match=LIMIT_EXCEEDED), conn.transaction():
        conn.execute("update md.bars_1m set close = close + 0 where session_date between %s and %s", (start, end))

    replay = materialize_range(defs, start, end, providers=["synthetic"], instance=dg.DagsterInstance.ephemeral(),
                               select=" or ".join(f'key:"{layer}/synthetic/bars_1m"' for layer in chain))
    assert replay.success
    assert read_bars_1m(conn, start=start, end=end).equals(before)  # the same rows, learnt at the same times
