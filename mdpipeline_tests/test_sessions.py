"""Session dates come from the exchange's own calendar and time zone, for any exchange-calendars calendar."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import dagster as dg
import polars as pl
import pytest

from mdpipeline.normalize.minute_bars import normalize_bars_1m
from mdpipeline.orchestration.partitions import trading_day_partitions
from mdpipeline.orchestration.schedules import after_close_cron, daily_run_request
from mdpipeline.orchestration.sensors import recent_sessions
from mdpipeline.quality.session_window import session_window
from mdpipeline.sessions import exchange_timezone, with_session_date


def _minute_bars(*instants: datetime) -> pl.DataFrame:
    n = len(instants)
    return pl.DataFrame({
        "symbol": ["7203"] * n, "ts": list(instants), "open": [10.0] * n, "high": [11.0] * n, "low": [9.0] * n,
        "close": [10.5] * n, "volume": [100.0] * n, "vwap": [None] * n, "trades": [None] * n,
        "raw_payload_id": [None] * n,
    }).with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")), pl.col("vwap").cast(pl.Float64),
                    pl.col("trades").cast(pl.Int64), pl.col("raw_payload_id").cast(pl.Int64))


@pytest.mark.parametrize(("calendar_name", "zone"), [
    ("XNYS", "America/New_York"), ("XLON", "Europe/London"), ("XTKS", "Asia/Tokyo"), ("XASX", "Australia/Sydney"),
])
def test_the_exchange_time_zone_is_the_calendars(calendar_name: str, zone: str) -> None:
    assert exchange_timezone(calendar_name) == zone
    assert trading_day_partitions(calendar_name).timezone == zone


def test_a_tokyo_bar_before_midnight_utc_belongs_to_the_next_tokyo_session() -> None:
    # 2024-03-03 23:30 UTC is 08:30 on Monday 4 March in Tokyo (and still Sunday in New York).
    bars = _minute_bars(datetime(2024, 3, 3, 23, 30, tzinfo=UTC), datetime(2024, 3, 4, 5, 59, tzinfo=UTC))
    assert with_session_date(bars, "XTKS")["session_date"].to_list() == [date(2024, 3, 4)] * 2
    assert with_session_date(bars, "XNYS")["session_date"].to_list() == [date(2024, 3, 3), date(2024, 3, 4)]
    symbology = pl.DataFrame({"symbol": ["7203"], "instrument_id": [7203], "valid_from": [date(2000, 1, 1)],
                              "valid_to": [date(9999, 12, 31)]})
    normalized = normalize_bars_1m(bars, "file", symbology, "XTKS")
    assert normalized.unmapped.is_empty()
    assert normalized.bars["session_date"].to_list() == [date(2024, 3, 4)] * 2


def test_london_regular_hours_are_judged_on_londons_clock() -> None:
    # 1 July 2024: London opens 08:00 BST = 07:00 UTC, closes 16:30 BST = 15:30 UTC.
    bars = _minute_bars(datetime(2024, 7, 1, 7, 0, tzinfo=UTC), datetime(2024, 7, 1, 15, 29, tzinfo=UTC),
                        datetime(2024, 7, 1, 15, 30, tzinfo=UTC))
    findings = session_window(bars, date(2024, 7, 1), date(2024, 7, 1), calendar_name="XLON")
    assert findings["kind"].to_list() == ["extended_hours"]
    assert findings["ts"].to_list() == [datetime(2024, 7, 1, 15, 30, tzinfo=UTC)]


def test_london_schedules_and_freshness_follow_londons_close_and_holidays() -> None:
    london = ZoneInfo("Europe/London")
    assert after_close_cron("XLON") == "0 19 * * 1-5"  # 16:30 close + 2h30, London time
    boxing_day = daily_run_request(datetime(2024, 12, 26, 19, 0, tzinfo=london), "job", "XLON")
    assert isinstance(boxing_day, dg.SkipReason)
    friday = daily_run_request(datetime(2024, 12, 27, 19, 0, tzinfo=london), "job", "XLON")
    assert isinstance(friday, dg.RunRequest)
    assert friday.partition_key == "2024-12-27"
    monday_noon = datetime(2024, 12, 30, 12, 0, tzinfo=london)
    assert recent_sessions(monday_noon, 3, "XLON") == [date(2024, 12, 23), date(2024, 12, 24), date(2024, 12, 27)]
