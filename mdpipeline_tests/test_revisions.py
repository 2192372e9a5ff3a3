"""Bar revisions on both layouts: a corrected or withdrawn bar keeps its previous version, and as-of reads
return the value known at the time, including the old value of a bar corrected afterwards.

Every expectation is written out by hand: v1 learnt at T1, corrected to v2 at T2 and to v3 at T3.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import psycopg
import pytest

from mdpipeline.contracts.frames import STORED_BARS_1D, STORED_BARS_1M
from mdpipeline.read import bars, read_bars
from mdpipeline.storage.bars import read_bars_1d
from mdpipeline.storage.loader import replace_range

pytestmark = pytest.mark.both_layouts

D1, D2 = date(2024, 6, 3), date(2024, 6, 4)
T1 = datetime(2024, 6, 5, 1, 0, tzinfo=UTC)
T2 = datetime(2024, 6, 6, 1, 0, tzinfo=UTC)
T3 = datetime(2024, 6, 7, 1, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)


def daily(closes: dict[date, float], learnt: datetime, run: str) -> pl.DataFrame:
    days = sorted(closes)
    return pl.DataFrame({
        "instrument_id": 1, "symbol": "AAPL", "session_date": days, "provider": "file",
        "open": 10.0, "high": 20.0, "low": 5.0, "close": [closes[d] for d in days], "volume": 1000.0,
        "vwap": None, "trades": None, "raw_payload_id": None, "run_id": run, "ingested_at": learnt,
    }).select([pl.col(c).cast(t) for c, t in STORED_BARS_1D.items()])


def load(conn: psycopg.Connection, frame: pl.DataFrame, allow_deletes: bool = False) -> None:
    replace_range(conn, "md.bars_1d", frame, provider="file", start=D1, end=D2, allow_deletes=allow_deletes)


def closes(conn: psycopg.Connection, as_of: datetime | None = None) -> dict[date, float]:
    frame = read_bars(conn, "AAPL", D1, D2, as_of=as_of)
    return dict(frame.select("session_date", "close").rows())


@pytest.fixture
def corrected(conn: psycopg.Connection) -> psycopg.Connection:
    """D1 and D2 learnt at T1 (11, 21); D2 corrected at T2 (22) and again at T3 (23); D1 never changes."""
    load(conn, daily({D1: 11.0, D2: 21.0}, T1, "run-1"))
    load(conn, daily({D1: 11.0, D2: 22.0}, T2, "run-2"))
    load(conn, daily({D1: 11.0, D2: 23.0}, T3, "run-3"))
    return conn


def test_as_of_reads_return_the_value_known_then(corrected: psycopg.Connection) -> None:
    assert closes(corrected) == {D1: 11.0, D2: 23.0}  # the default read: latest values
    assert closes(corrected, T1 - SECOND) == {}  # nothing was known yet
    assert closes(corrected, T1) == {D1: 11.0, D2: 21.0}
    assert closes(corrected, T2 - SECOND) == {D1: 11.0, D2: 21.0}  # the old value of a bar corrected later
    assert closes(corrected, T2) == {D1: 11.0, D2: 22.0}
    assert closes(corrected, T3 - SECOND) == {D1: 11.0, D2: 22.0}
    assert closes(corrected, T3 + SECOND) == {D1: 11.0, D2: 23.0}


def test_revisions_hold_each_superseded_version_once(corrected: psycopg.Connection) -> None:
    rows = corrected.execute("select session_date, close, run_id, ingested_at, superseded_at, change"
                             " from md.bars_1d_revisions order by superseded_at").fetchall()
    assert rows == [(D2, 21.0, "run-1", T1, T2, "update"), (D2, 22.0, "run-2", T2, T3, "update")]
    current = read_bars_1d(corrected, start=D1, end=D2).select("session_date", "close", "run_id", "ingested_at")
    assert current.rows() == [(D1, 11.0, "run-1", T1), (D2, 23.0, "run-3", T3)]  # unchanged D1 keeps T1
    load(corrected, daily({D1: 11.0, D2: 23.0}, T3 + timedelta(days=1), "run-4"))  # an identical re-run
    assert corrected.execute("select count(*) from md.bars_1d_revisions").fetchone() == (2,)


def test_a_withdrawn_bar_is_known_until_it_was_withdrawn(corrected: psycopg.Connection) -> None:
    t4 = T3 + timedelta(days=1)
    load(corrected, daily({D1: 11.0}, t4, "run-4"), allow_deletes=True)
    assert closes(corrected) == {D1: 11.0}
    assert closes(corrected, t4 - timedelta(hours=1)) == {D1: 11.0, D2: 23.0}
    deleted = corrected.execute("select close, superseded_at, change from md.bars_1d_revisions"
                                " where change = 'delete'").fetchall()
    assert deleted == [(23.0, t4, "delete")]  # superseded when the withdrawing load learnt it


def test_minute_bar_revisions_and_the_cli(corrected: psycopg.Connection, database_url: str) -> None:
    ts = datetime(2024, 6, 3, 13, 30, tzinfo=UTC)

    def minute(close: float, learnt: datetime) -> pl.DataFrame:
        return pl.DataFrame({
            "instrument_id": [1, 1], "symbol": "AAPL", "session_date": D1, "provider": "file", "open": 10.0,
            "high": 20.0, "low": 5.0, "close": [close, 12.0], "volume": 100.0, "vwap": None, "trades": None,
            "ts": [ts, ts + timedelta(minutes=1)], "raw_payload_id": None, "run_id": "r", "ingested_at": learnt,
        }).select([pl.col(c).cast(t) for c, t in STORED_BARS_1M.items()])

    for close, learnt in ((11.0, T1), (11.5, T2)):
        replace_range(corrected, "md.bars_1m", minute(close, learnt), provider="file", start=D1, end=D1)
    assert bars("AAPL", D1, D1, interval="1m", database_url=database_url)["close"].to_list() == [11.5, 12.0]
    assert bars("AAPL", D1, D1, interval="1m", as_of=T2 - SECOND, database_url=database_url)["close"].to_list() == [
        11.0, 12.0]
    # The CLI: the daily close of D2 as known on the day between the two corrections.
    out = subprocess.run([str(Path(sys.executable).parent / "mdpipeline"), "bars", "AAPL", "--start", D1.isoformat(),
                          "--end", D2.isoformat(), "--as-of", "2024-06-06T12:00:00Z", "--format", "json"],
                         env={**os.environ, "MDP_DATABASE_URL": database_url}, capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert [(r["session_date"], r["close"]) for r in json.loads(out.stdout)] == [
        ("2024-06-03", 11.0), ("2024-06-04", 22.0)]
