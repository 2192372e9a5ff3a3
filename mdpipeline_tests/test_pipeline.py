"""The daily-bar pipeline end to end through real Dagster runs, PostgreSQL and the broker."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import dagster as dg
import polars as pl
import psycopg
import pytest

from mdpipeline.distribute.topics import BARS_1D
from mdpipeline.orchestration.assembly import build_definitions
from mdpipeline.orchestration.runner import materialize_range
from mdpipeline.storage.bars import read_bars_1d
from mdpipeline.storage.database import connect
from mdpipeline_tests.pipeline_helpers import event_values, events_of_run, settings_for, universe_with

START, END = date(2024, 6, 3), date(2024, 6, 14)  # 10 sessions, NVDA splits 10:1 on 2024-06-10
SESSIONS = 10
SAMPLE_CSV = Path(__file__).resolve().parent.parent / "samples" / "files" / "bars_1d"


@pytest.fixture(autouse=True)
def _frames_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MDP_FRAMES_DIR", str(tmp_path / "frames"))


def _run(defs: dg.Definitions, start: date = START, end: date = END, **kw: object) -> dg.ExecuteInProcessResult:
    return materialize_range(defs, start, end, instance=dg.DagsterInstance.ephemeral(), **kw)  # type: ignore[arg-type]


def _count(conn: psycopg.Connection, query: str) -> int:
    row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.both_layouts
def test_range_runs_every_step_and_publishes(database_url: str, kafka_bootstrap: str) -> None:
    defs = build_definitions(settings_for(database_url, kafka_bootstrap))
    result = _run(defs)
    assert result.success

    with connect(database_url) as conn:
        bars = read_bars_1d(conn, start=START, end=END)
        raw_synthetic = _count(
            conn, "select count(*) from raw.payloads where provider = 'synthetic' and dataset = 'bars_1d'")
        quarantined = _count(conn, "select count(*) from quality.quarantine")
        published = _count(conn, "select sum(messages) from ops.publications where topic = 'md.bars.1d.v1'")
        minute_published = conn.execute(
            "select provider, sum(messages)::int from ops.publications where topic = 'md.bars.1m.v1'"
            " group by 1 order by 1").fetchall()
    per_provider = dict(bars.group_by("provider").len().iter_rows())
    assert per_provider == {"synthetic": 6 * SESSIONS, "file": 3 * SESSIONS}
    assert raw_synthetic == SESSIONS  # one payload per session
    assert quarantined == 0
    assert published == bars.height
    assert minute_published == [("file", 0), ("synthetic", 6 * SESSIONS)]  # one message per instrument session

    # The file provider's rows arrive exactly as the vendor wrote them.
    vendor = pl.concat([pl.read_csv(p, try_parse_dates=True) for p in SAMPLE_CSV.glob("*.csv")])
    nvda = vendor.filter((pl.col("symbol") == "NVDA") & (pl.col("date") == date(2024, 6, 11)))
    stored = bars.filter((pl.col("provider") == "file") & (pl.col("symbol") == "NVDA")
                         & (pl.col("session_date") == date(2024, 6, 11)))
    assert stored["close"].item() == nvda["close"].item()
    assert stored["instrument_id"].item() == 3

    # Every check passed and the graph ran every step for both providers.
    evaluations = result.get_asset_check_evaluations()
    assert evaluations
    assert all(e.passed for e in evaluations)
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    for provider in ("synthetic", "file"):
        for layer in ("raw", "validated", "normalized", "md", "published"):
            assert f"{layer}/{provider}/bars_1d" in materialized

    events = events_of_run(kafka_bootstrap, BARS_1D.name, result.run_id)
    assert len(events) == bars.height
    values = event_values(events)
    assert len({v["event_id"] for v in values}) == len(values)
    assert {e.key for e in events} == {str(i) for i in bars["instrument_id"].unique()}
    assert all(e.key == str(v["data"]["instrument_id"]) for e, v in zip(events, values, strict=True))
    assert values[0]["schema"] == "mdpipeline.bars_1d"
    assert values[0]["schema_version"] == 1


@pytest.mark.both_layouts
def test_rerun_replaces_the_range_without_duplicates(database_url: str, kafka_bootstrap: str) -> None:
    defs = build_definitions(settings_for(database_url, kafka_bootstrap))
    first = _run(defs, providers=["synthetic"])
    with connect(database_url) as conn:
        before = read_bars_1d(conn, start=START, end=END)
        payloads_before = _count(conn, "select count(*) from raw.payloads")
    second = _run(defs, providers=["synthetic"])
    assert first.success
    assert second.success
    with connect(database_url) as conn:
        after = read_bars_1d(conn, start=START, end=END)
        payloads_after = _count(conn, "select count(*) from raw.payloads")
    assert after.height == before.height == 6 * SESSIONS
    assert after.select("instrument_id", "session_date", "provider").is_unique().all()
    prices = ["instrument_id", "session_date", "open", "high", "low", "close", "volume"]
    assert after.select(prices).equals(before.select(prices))
    assert payloads_after == payloads_before  # identical bytes are not stored twice
    # Unchanged bars are not rewritten: they keep the run (and time) that stored this version.
    assert set(after["run_id"]) == {first.run_id}

    # Same data, same event ids: a consumer deduplicates the re-run.
    ids_first = {v["event_id"] for v in event_values(events_of_run(kafka_bootstrap, BARS_1D.name, first.run_id))}
    ids_second = {v["event_id"] for v in event_values(events_of_run(kafka_bootstrap, BARS_1D.name, second.run_id))}
    assert ids_first == ids_second
    assert len(ids_first) == 6 * SESSIONS


@pytest.mark.both_layouts
def test_failed_run_leaves_previous_rows_untouched(database_url: str, kafka_bootstrap: str, tmp_path: Path) -> None:
    defs = build_definitions(settings_for(database_url, kafka_bootstrap))
    assert _run(defs, providers=["synthetic"]).success
    with connect(database_url) as conn:
        before = read_bars_1d(conn, start=START, end=END)
        # A real failure half-way through the load: the vendor corrected every bar (another seed), and the
        # database rejects one session's corrections after others were already written in the transaction.
        conn.execute("""
            create function reject_0612() returns trigger language plpgsql as $$
            begin
              if new.session_date = date '2024-06-12' then raise exception 'disk full (simulated)'; end if;
              return new;
            end $$;
            create trigger reject_0612 before insert or update on md.bars_1d
                for each row execute function reject_0612();
        """)
    corrected = build_definitions(settings_for(database_url, kafka_bootstrap, universe=universe_with(tmp_path, seed=8)))
    failed = _run(corrected, providers=["synthetic"])
    assert not failed.success
    failures = [e for e in failed.all_events if e.is_step_failure]
    assert any("disk full" in str(e.step_failure_data.error) for e in failures)  # type: ignore[union-attr]
    with connect(database_url) as conn:
        after = read_bars_1d(conn, start=START, end=END)
    assert after.equals(before)


def test_bad_rows_are_quarantined_and_reported(database_url: str, kafka_bootstrap: str, tmp_path: Path) -> None:
    universe = universe_with(tmp_path, anomalies=[
        {"kind": "broken_ohlc", "symbol": "AAPL", "date": "2024-06-05"},
        {"kind": "negative_price", "symbol": "MSFT", "date": "2024-06-06"},
    ])
    defs = build_definitions(settings_for(database_url, kafka_bootstrap, universe=universe))
    result = _run(defs, providers=["synthetic"])
    assert result.success  # good rows go on; bad rows are held back, not lost

    with connect(database_url) as conn:
        rows = conn.execute(
            "select symbol, session_date, check_name, reason, row_data from quality.quarantine "
            "where dataset = 'bars_1d' order by session_date").fetchall()
        minute_rows = conn.execute(  # the synthetic anomalies also break that session's first minute bar
            "select symbol, session_date from quality.quarantine where dataset = 'bars_1m' "
            "order by session_date").fetchall()
        bars = read_bars_1d(conn, start=START, end=END)
    assert [(r[0], r[1]) for r in rows] == [("AAPL", date(2024, 6, 5)), ("MSFT", date(2024, 6, 6))]
    assert minute_rows == [("AAPL", date(2024, 6, 5)), ("MSFT", date(2024, 6, 6))]
    assert "ohlc_consistency" in rows[0][2]
    assert "low <= min(open, close)" in rows[0][3]
    assert "close: greater_than(0)" in rows[1][3]
    assert rows[1][4]["close"] < 0  # the original row is kept
    assert bars.height == 6 * SESSIONS - 2
    assert bars.filter((pl.col("symbol") == "AAPL") & (pl.col("session_date") == date(2024, 6, 5))).is_empty()

    checks = {(e.asset_key.to_user_string(), e.check_name): e for e in result.get_asset_check_evaluations()}
    quarantine = checks[("validated/synthetic/bars_1d", "quarantine")]
    assert not quarantine.passed
    assert quarantine.severity == dg.AssetCheckSeverity.WARN
    assert quarantine.metadata["rows_quarantined"].value == 2
    assert checks[("validated/synthetic/bars_1d", "schema")].passed


@pytest.mark.both_layouts
def test_replay_rederives_from_raw_without_the_provider(database_url: str, kafka_bootstrap: str,
                                                         tmp_path: Path) -> None:
    files = tmp_path / "files"
    (files / "bars_1d").mkdir(parents=True)
    for src in SAMPLE_CSV.iterdir():
        (files / "bars_1d" / src.name).write_bytes(src.read_bytes())
    defs = build_definitions(settings_for(database_url, kafka_bootstrap, files_dir=files))
    assert _run(defs, providers=["file"]).success
    with connect(database_url) as conn:
        before = read_bars_1d(conn, start=START, end=END)
    for p in (files / "bars_1d").iterdir():  # the source is gone
        p.unlink()
    replay = _run(defs, providers=["file"], select="not group:raw")
    assert replay.success
    with connect(database_url) as conn:
        after = read_bars_1d(conn, start=START, end=END)
    cols = [c for c in after.columns if c not in ("run_id", "ingested_at")]
    assert after.height == 3 * SESSIONS
    assert after.select(cols).equals(before.select(cols))
