"""A range processed in many chunks gives exactly what one chunk gives; a failed or killed run leaves whole
chunks only, and running the range again converges to the same state.

Chunks are made small with MDP_CHUNK_ROWS (4 rows: every session of every dataset is its own chunk, and
the six symbols are split into groups), against the same range processed as one chunk, on separate
databases, through real Dagster runs, PostgreSQL and the broker.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from mdpipeline.chunks import CHUNK_ROWS_ENV, plan_chunks
from mdpipeline.orchestration.assembly import build_definitions
from mdpipeline.orchestration.rollup_assets import ROLLUPS_KEY
from mdpipeline.orchestration.runner import materialize_range
from mdpipeline.sessions import session_dates
from mdpipeline.storage.bars import read_rollup
from mdpipeline.storage.database import connect
from mdpipeline.storage.migrations import TIMESCALEDB, storage_layout
from mdpipeline_tests.pipeline_helpers import settings_for, universe_with

START, END = date(2024, 6, 3), date(2024, 6, 7)  # 5 sessions
SYMBOLS = ["AAPL", "MSFT", "NVDA", "TSLA", "META", "SPY"]
ANOMALIES = [{"kind": "broken_ohlc", "symbol": "AAPL", "date": "2024-06-04"},
             {"kind": "negative_price", "symbol": "SPY", "date": "2024-06-06"},
             {"kind": "duplicate", "symbol": "MSFT", "date": "2024-06-05", "dataset": "bars_1m"}]
CLI = str(Path(sys.executable).parent / "mdpipeline")


@pytest.fixture
def other_database_url(new_database: Callable[[], str]) -> str:
    """A second fresh migrated database (the same range, chunked differently)."""
    return new_database()


def _run(database_url: str, kafka_bootstrap: str, universe: Path, frames: Path,
         monkeypatch: pytest.MonkeyPatch, budget: int | None) -> dg.ExecuteInProcessResult:
    monkeypatch.setenv("MDP_FRAMES_DIR", str(frames))
    if budget is None:
        monkeypatch.delenv(CHUNK_ROWS_ENV, raising=False)
    else:
        monkeypatch.setenv(CHUNK_ROWS_ENV, str(budget))
    defs = build_definitions(settings_for(database_url, kafka_bootstrap, universe=universe))
    return materialize_range(defs, START, END, providers=["synthetic"], instance=dg.DagsterInstance.ephemeral())


def state(database_url: str) -> dict[str, pl.DataFrame]:
    """What a run leaves in the database, without lineage that differs by run (ids, run ids, times)."""
    queries = {
        "bars_1d": "select instrument_id, symbol, session_date, provider, open, high, low, close, volume, vwap, trades"
                   " from md.bars_1d order by 1, 3, 4",
        "bars_1m": "select instrument_id, symbol, session_date, ts, provider, open, high, low, close, volume, vwap,"
                   " trades from md.bars_1m order by 1, 4, 5",
        "actions": "select instrument_id, symbol, ex_date, action, ratio, amount, provider from ref.corporate_actions"
                   " order by 1, 3, 4",
        "quarantine": "select dataset, stage, session_date, symbol, check_name, reason,"
                      " (row_data - 'raw_payload_id')::text as row_data from quality.quarantine"
                      " order by 1, 2, 3, 4, 5, 7",
        "events": "select topic, key, event_id, session_date from ops.outbox_events order by 1, 3",
    }
    with connect(database_url) as conn:
        return {name: pl.DataFrame(conn.execute(q).fetchall(), orient="row",
                                   schema=[d.name for d in conn.execute(q).description or []])
                for name, q in queries.items()}


def test_the_plan_cuts_sessions_and_symbols_within_the_budget() -> None:
    sessions = session_dates(START, END)
    one = plan_chunks(sessions, SYMBOLS, 390.0, budget=1_000_000)
    assert [(c.start, c.end, len(c.symbols)) for c in one] == [(START, END, 6)]
    by_session = plan_chunks(sessions, SYMBOLS, 390.0, budget=3 * 390 * 6)
    assert [(c.start, c.end) for c in by_session] == [(START, date(2024, 6, 5)), (date(2024, 6, 6), END)]
    grouped = plan_chunks(sessions, SYMBOLS, 390.0, budget=1000)
    assert {c.symbols for c in grouped} == {("AAPL", "MSFT"), ("NVDA", "TSLA"), ("META", "SPY")}
    assert len(grouped) == 15
    assert all(c.sessions == 1 for c in grouped)
    assert [c.group for c in grouped[:3]] == [0, 1, 2]
    assert all(len(c.symbols) * c.sessions * 390 <= 1000 for c in grouped)
    # Pieces are evened out (as few as the budget allows, none larger than needed): 63 sessions at most
    # 25 per chunk are three chunks of 21, not 25 + 25 + 13; 7 symbols at most 3 per group stay 3 + 3 + 1.
    quarter = session_dates(date(2024, 1, 2), date(2024, 4, 2))
    assert len(quarter) == 63
    even = plan_chunks(quarter, [f"S{i}" for i in range(100)], 390.0, budget=25 * 100 * 390)
    assert [c.sessions for c in even] == [21, 21, 21]
    assert [c.start for c in even] == [quarter[0], quarter[21], quarter[42]]
    seven = plan_chunks(quarter[:1], [f"S{i}" for i in range(7)], 390.0, budget=3 * 390)
    assert [len(c.symbols) for c in seven] == [3, 3, 1]


def test_a_plan_with_periods_keeps_each_period_in_one_chunk() -> None:
    def week(day: date) -> int:  # TimescaleDB's weekly slices: Thursday to Wednesday
        return (day - date(1970, 1, 1)).days // 7

    quarter = session_dates(date(2024, 1, 2), date(2024, 4, 2))
    hundred = [f"S{i}" for i in range(100)]
    for budget, longest in ((25 * 100 * 390, 21), (5 * 100 * 390, 5), (12 * 100 * 390, 11)):
        plain = plan_chunks(quarter, hundred, 390.0, budget=budget)
        weekly = plan_chunks(quarter, hundred, 390.0, budget=budget, period=week)
        assert [d for c in weekly for d in session_dates(c.start, c.end)] == quarter  # every session once, in order
        assert max(c.sessions for c in plain) == longest
        assert max(c.sessions for c in weekly) <= longest  # no larger peak than without periods
        assert all(week(a.end) != week(b.start) for a, b in itertools.pairwise(weekly))  # no week in two chunks
    # 21 sessions at most (the even cut of 63 at most 25): four weeks at most, so four chunks, the longest 18
    assert [c.sessions for c in plan_chunks(quarter, hundred, 390.0, budget=25 * 100 * 390, period=week)] == [
        16, 15, 14, 18]
    # a week longer than the budget allows is cut within itself, never together with its neighbours
    cut = plan_chunks(quarter[:12], hundred, 390.0, budget=2 * 100 * 390, period=week)
    jan = [date(2024, 1, d) for d in (2, 3, 4, 5, 8, 9, 10, 10)]
    assert [(c.start, c.end) for c in cut][:4] == list(itertools.pairwise(jan))[::2]


@pytest.mark.both_layouts
def test_many_chunks_give_exactly_what_one_chunk_gives(database_url: str, other_database_url: str,
                                                     kafka_bootstrap: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    universe = universe_with(tmp_path, anomalies=ANOMALIES)
    whole = _run(database_url, kafka_bootstrap, universe, tmp_path / "whole", monkeypatch, None)
    chunked = _run(other_database_url, kafka_bootstrap, universe, tmp_path / "chunked", monkeypatch, 4)
    assert whole.success
    assert chunked.success
    one, many = state(database_url), state(other_database_url)
    assert one["bars_1m"].height == 6 * 5 * 390 - 2 - 1  # two broken minutes quarantined, one conflicting pair
    assert one["quarantine"].height > 0
    for name in one:
        assert one[name].equals(many[name]), name
    chunks = {e.materialization.asset_key.to_user_string(): e.materialization.metadata["chunks"].value
              for e in chunked.get_asset_materialization_events() if "chunks" in e.materialization.metadata}
    assert chunks["md/synthetic/bars_1m"] == 5 * 6  # a chunk per session and symbol
    assert chunks["validated/synthetic/bars_1d"] == 5 * 2  # groups of 4 and 2 symbols
    # The roll-ups step ran after the minute bars: on TimescaleDB it materialized the range's buckets.
    refreshed = {e.materialization.metadata["refreshed"].value for e in chunked.get_asset_materialization_events()
                 if e.materialization.asset_key == ROLLUPS_KEY}
    with connect(other_database_url) as conn:
        hourly = read_rollup(conn, "1h", start=START, end=END)
        if storage_layout(conn) == TIMESCALEDB:
            assert refreshed == {"md.bars_5m, md.bars_15m, md.bars_1h"}
            watermark = conn.execute("select _timescaledb_functions.to_timestamp(_timescaledb_functions"
                                     ".cagg_watermark(mat_hypertable_id)) from _timescaledb_catalog.continuous_agg"
                                     " where user_view_name = 'bars_1h'").fetchone()
            assert watermark is not None
            assert watermark[0] > hourly["ts"].max()  # every bucket of the range is materialized
        else:
            assert len(refreshed) == 1
    assert hourly.height == 6 * 5 * 7  # 7 hourly buckets (09:30, 10:30, ..., 15:30) per symbol and session


@pytest.mark.both_layouts
def test_a_failure_in_chunk_k_leaves_earlier_chunks_whole_and_a_rerun_converges(
        database_url: str, other_database_url: str, kafka_bootstrap: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    universe = universe_with(tmp_path, anomalies=ANOMALIES)
    with connect(database_url) as conn:  # chunk 3 of the minute bars (session 2024-06-05) fails in the database
        conn.execute("""
            create function reject_0605() returns trigger language plpgsql as $$
            begin
              if new.session_date = date '2024-06-05' then raise exception 'disk full (simulated)'; end if;
              return new;
            end $$;
            create trigger reject_0605 before insert on md.bars_1m for each row execute function reject_0605();
        """)
    failed = _run(database_url, kafka_bootstrap, universe, tmp_path / "frames", monkeypatch, 2 * 390 * 6)
    assert not failed.success
    with connect(database_url) as conn:
        stored = dict(conn.execute("select session_date, count(*) from md.bars_1m group by 1").fetchall())
        queued = dict(conn.execute("select session_date, count(*) from ops.outbox_events where topic = 'md.bars.1m.v1'"
                                   " group by 1").fetchall())
        held = {r[0] for r in conn.execute("select session_date from quality.quarantine where dataset = 'bars_1m'")}
        conn.execute("drop trigger reject_0605 on md.bars_1m")
    # chunks of two sessions: 06-03..04 committed whole (rows, outbox and quarantine), 06-05.. not at all
    assert stored == {date(2024, 6, 3): 6 * 390, date(2024, 6, 4): 6 * 390 - 1}
    assert queued == {date(2024, 6, 3): 6, date(2024, 6, 4): 6}
    assert held == {date(2024, 6, 4)}
    again = _run(database_url, kafka_bootstrap, universe, tmp_path / "frames", monkeypatch, 2 * 390 * 6)
    reference = _run(other_database_url, kafka_bootstrap, universe, tmp_path / "reference", monkeypatch, None)
    assert again.success
    assert reference.success
    converged, expected = state(database_url), state(other_database_url)
    for name in ("bars_1d", "bars_1m", "actions", "quarantine"):
        assert converged[name].equals(expected[name]), name
    assert set(converged["events"]["event_id"]) == set(expected["events"]["event_id"])


def test_a_backfill_killed_with_sigkill_leaves_whole_chunks_and_a_rerun_converges(
        database_url: str, other_database_url: str, kafka_bootstrap: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    universe = universe_with(tmp_path, anomalies=ANOMALIES)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MDP_", "DAGSTER_HOME"))}
    env |= {"MDP_DATABASE_URL": database_url, "MDP_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "MDP_UNIVERSE": str(universe), "MDP_FRAMES_DIR": str(tmp_path / "frames"), CHUNK_ROWS_ENV: str(6 * 390)}
    command = [CLI, "backfill", "--start", START.isoformat(), "--end", END.isoformat(), "--provider", "synthetic"]
    child = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    with connect(database_url) as conn:
        while time.monotonic() < deadline and child.poll() is None:  # kill it once two chunks are stored
            stored = conn.execute("select count(distinct session_date) from md.bars_1m").fetchone()
            if stored is not None and stored[0] >= 2:
                break
            time.sleep(0.05)
        assert child.poll() is None, "the backfill ended before it could be killed"
        child.send_signal(signal.SIGKILL)
        assert child.wait(30) == -signal.SIGKILL
        per_session = conn.execute("select session_date, count(*), count(distinct symbol) from md.bars_1m"
                                   " group by 1 order by 1").fetchall()
        events = dict(conn.execute("select session_date, count(*) from ops.outbox_events where topic = 'md.bars.1m.v1'"
                                   " group by 1").fetchall())
    assert len(per_session) >= 2
    for session, _, symbols in per_session:  # every stored session is a whole chunk: all symbols, its events
        assert symbols == 6
        assert events.get(session) == 6
    assert set(events) == {s for s, _, _ in per_session}
    monkeypatch.setenv(CHUNK_ROWS_ENV, str(6 * 390))
    again = _run(database_url, kafka_bootstrap, universe, tmp_path / "frames", monkeypatch, 6 * 390)
    reference = _run(other_database_url, kafka_bootstrap, universe, tmp_path / "reference", monkeypatch, None)
    assert again.success
    assert reference.success
    converged, expected = state(database_url), state(other_database_url)
    for name in ("bars_1d", "bars_1m", "actions", "quarantine"):
        assert converged[name].equals(expected[name]), name


def test_frames_of_a_later_run_supersede_exactly_what_it_covered(tmp_path: Path) -> None:
    from mdpipeline.storage.frames import FrameStore

    store = FrameStore(tmp_path)
    key = ("validated", "p", "bars_1d")
    schema = {"symbol": pl.String, "session_date": pl.Date, "close": pl.Float64}

    def rows(symbols: list[str], days: list[date], close: float) -> pl.DataFrame:
        return pl.DataFrame([(s, d, close) for d in days for s in symbols], schema=schema, orient="row")

    week = [date(2024, 6, d) for d in (3, 4, 5, 6, 7)]
    store.write(key, "rows", rows(["A", "B"], week, 1.0), start=week[0], end=week[-1], symbols=["A", "B"])
    store.write(key, "rows", rows(["A"], week[1:3], 2.0), start=week[1], end=week[2], symbols=["A"])
    store.write(key, "rows", rows(["B"], [], 3.0), start=week[3], end=week[3], symbols=["B"])  # B has no 06-06 now
    got = store.scan(key, "rows", start=week[0], end=week[-1], symbols=["A", "B"], date_column="session_date",
                     schema=schema).collect().sort("symbol", "session_date")
    assert got.rows() == [
        ("A", week[0], 1.0), ("A", week[1], 2.0), ("A", week[2], 2.0), ("A", week[3], 1.0), ("A", week[4], 1.0),
        ("B", week[0], 1.0), ("B", week[1], 1.0), ("B", week[2], 1.0), ("B", week[4], 1.0)]
    only_b = store.scan(key, "rows", start=week[3], end=week[4], symbols=["B"], date_column="session_date",
                        schema=schema).collect()
    assert only_b.rows() == [("B", week[4], 1.0)]
    assert store.scan(("validated", "p", "other"), "rows", start=week[0], end=week[-1], symbols=["A"],
                      date_column="session_date", schema=schema).collect().is_empty()
