"""Normalization through real Dagster runs: UTC minute bars across DST changes, and a ticker rename."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml

from mdpipeline.orchestration.assembly import build_definitions
from mdpipeline.orchestration.runner import materialize_range
from mdpipeline.read import bars
from mdpipeline_tests.pipeline_helpers import settings_for

UNIVERSE = Path(__file__).resolve().parent.parent / "config" / "universe.yaml"


@pytest.fixture
def file_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str, kafka_bootstrap: str):
    """Definitions with only the file provider, reading vendor files the test writes."""
    monkeypatch.setenv("MDP_FRAMES_DIR", str(tmp_path / "frames"))
    doc = yaml.safe_load(UNIVERSE.read_text())
    doc["providers"] = {"synthetic": {"enabled": False},
                        "file": {"enabled": True, "symbols": ["AAPL", "FB", "META"]}}
    universe = tmp_path / "universe.yaml"
    universe.write_text(yaml.safe_dump(doc))
    files = tmp_path / "files"
    defs = build_definitions(settings_for(database_url, kafka_bootstrap, universe=universe, files_dir=files))
    return defs, files


def _run(defs: dg.Definitions, start: date, end: date) -> None:
    result = materialize_range(defs, start, end, instance=dg.DagsterInstance.ephemeral())
    assert result.success


@pytest.mark.parametrize(("before", "after", "first_utc_before", "first_utc_after"), [
    # US DST starts 2024-03-10: the 09:30 open moves from 14:30 to 13:30 UTC.
    ("2024-03-08", "2024-03-11", datetime(2024, 3, 8, 14, 30, tzinfo=UTC), datetime(2024, 3, 11, 13, 30, tzinfo=UTC)),
    # US DST ends 2024-11-03: the open moves from 13:30 back to 14:30 UTC.
    ("2024-11-01", "2024-11-04", datetime(2024, 11, 1, 13, 30, tzinfo=UTC), datetime(2024, 11, 4, 14, 30, tzinfo=UTC)),
])
def test_minute_bars_are_utc_bar_starts_across_dst(file_only, database_url: str, before: str, after: str,
                                                   first_utc_before: datetime, first_utc_after: datetime) -> None:
    defs, files = file_only
    (files / "bars_1m").mkdir(parents=True)
    offset_before = "-05:00" if before.startswith("2024-03") else "-04:00"
    offset_after = "-04:00" if before.startswith("2024-03") else "-05:00"
    rows = [
        {"symbol": "AAPL", "ts": f"{day}T{hhmm}:00{off}", "open": 170.0 + i, "high": 171.0 + i, "low": 169.0 + i,
         "close": 170.5 + i, "volume": 1000 + i}
        for day, off in ((before, offset_before), (after, offset_after))
        for i, hhmm in enumerate(("09:30", "09:31", "15:59"))
    ]
    pl.DataFrame(rows).write_csv(files / "bars_1m" / "aapl_minutes.csv")
    _run(defs, date.fromisoformat(before), date.fromisoformat(after))

    stored = bars("AAPL", before, after, interval="1m", database_url=database_url)
    assert stored.height == 6
    by_day = stored.group_by("session_date").agg(pl.col("ts").min().alias("first"), pl.col("ts").max().alias("last"))
    first = dict(by_day.select("session_date", "first").iter_rows())
    assert first == {date.fromisoformat(before): first_utc_before, date.fromisoformat(after): first_utc_after}
    last = dict(by_day.select("session_date", "last").iter_rows())
    assert last[date.fromisoformat(after)] == first_utc_after + timedelta(hours=6, minutes=29)  # 15:59 local
    assert stored["instrument_id"].unique().to_list() == [1]
    assert stored.filter(pl.col("ts") == first_utc_after)["close"].item() == 170.5


def test_history_survives_a_ticker_change(file_only, database_url: str) -> None:
    defs, files = file_only
    (files / "bars_1d").mkdir(parents=True)
    days = ["2022-06-06", "2022-06-07", "2022-06-08", "2022-06-09", "2022-06-10"]
    pl.DataFrame({
        "symbol": ["FB", "FB", "FB", "META", "META"], "date": days,
        "open": [194.0, 195.0, 196.0, 197.0, 183.0], "high": [198.0, 197.0, 199.0, 198.0, 186.0],
        "low": [193.0, 193.5, 195.0, 188.0, 174.0], "close": [194.25, 195.65, 196.64, 188.64, 175.57],
        "volume": [24_000_000, 18_000_000, 16_000_000, 22_000_000, 28_000_000],
    }).write_csv(files / "bars_1d" / "meta.csv")
    _run(defs, date(2022, 6, 6), date(2022, 6, 10))

    for asked in ("META", "FB"):
        history = bars(asked, "2022-06-01", "2022-06-30", database_url=database_url)
        assert history["session_date"].to_list() == [date.fromisoformat(d) for d in days]
        assert history["instrument_id"].unique().to_list() == [5]
        assert history["symbol"].to_list() == ["FB", "FB", "FB", "META", "META"]
        assert history["close"].to_list() == [194.25, 195.65, 196.64, 188.64, 175.57]


def test_a_ticker_used_outside_its_validity_is_quarantined(file_only, database_url: str) -> None:
    defs, files = file_only
    (files / "bars_1d").mkdir(parents=True)
    pl.DataFrame({"symbol": ["META"], "date": ["2022-06-08"], "open": [196.0], "high": [199.0], "low": [195.0],
                  "close": [196.64], "volume": [16_000_000]}).write_csv(files / "bars_1d" / "early.csv")
    _run(defs, date(2022, 6, 8), date(2022, 6, 8))
    assert bars("META", "2022-06-01", "2022-06-30", database_url=database_url).is_empty()
    import psycopg

    with psycopg.connect(database_url) as conn:
        row = conn.execute("select check_name, reason from quality.quarantine where symbol = 'META'").fetchone()
    assert row == ("symbology", "no instrument holds symbol META on 2022-06-08")
