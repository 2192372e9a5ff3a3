"""Bars inside the partition window and the exchange session; extended hours flagged, not errors."""

from __future__ import annotations

from datetime import UTC, date, datetime

import polars as pl

from mdpipeline.quality.session_window import session_window
from mdpipeline.sessions import exchange_timezone, with_session_date

D = date


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_daily_rows_outside_the_window_or_on_closed_days_are_errors() -> None:
    bars = pl.DataFrame({"symbol": ["AAA"] * 4,
                         "session_date": [D(2024, 6, 14), D(2024, 6, 18), D(2024, 6, 19), D(2024, 6, 22)]})
    found = session_window(bars, D(2024, 6, 17), D(2024, 6, 23))
    assert found.select("session_date", "kind", "severity").rows() == [
        (D(2024, 6, 14), "outside_window", "error"),
        (D(2024, 6, 19), "non_session", "error"),  # Juneteenth
        (D(2024, 6, 22), "non_session", "error"),  # a Saturday
    ]
    assert found["detail"][0] == "session 2024-06-14 is outside the partition 2024-06-17 .. 2024-06-23"


def test_minute_bars_outside_the_regular_session_are_flagged_warn() -> None:
    ts = [at(2024, 6, 17, 12, 0), at(2024, 6, 17, 13, 30), at(2024, 6, 17, 19, 59), at(2024, 6, 17, 20, 0),
          at(2024, 1, 2, 14, 29), at(2024, 1, 2, 14, 30),  # winter: the session opens 14:30 UTC
          at(2024, 11, 29, 17, 59), at(2024, 11, 29, 18, 0)]  # half day: closes 18:00 UTC
    bars = pl.DataFrame({"symbol": ["AAA"] * len(ts), "ts": ts})
    found = session_window(bars, D(2024, 1, 1), D(2024, 12, 31))
    assert found.select("ts", "kind", "severity", "value").rows() == [
        (at(2024, 1, 2, 14, 29), "extended_hours", "warn", -1.0),
        (at(2024, 6, 17, 12, 0), "extended_hours", "warn", -90.0),
        (at(2024, 6, 17, 20, 0), "extended_hours", "warn", 390.0),
        (at(2024, 11, 29, 18, 0), "extended_hours", "warn", 210.0),
    ]
    assert found["detail"][1] == "bar at 12:00 is outside the regular session 13:30 .. 20:00 UTC"


def test_session_date_of_a_minute_bar_is_the_exchange_local_date() -> None:
    assert exchange_timezone("XNYS") == "America/New_York"
    late = pl.DataFrame({"symbol": ["AAA", "AAA"], "ts": [at(2024, 6, 18, 3, 0), at(2024, 6, 18, 13, 30)]})
    assert with_session_date(late)["session_date"].to_list() == [D(2024, 6, 17), D(2024, 6, 18)]
    found = session_window(late, D(2024, 6, 17), D(2024, 6, 17))
    # 03:00 UTC is 23:00 the evening before in New York: after hours of 06-17, not another partition
    assert found.select("ts", "kind").rows() == [(at(2024, 6, 18, 3, 0), "extended_hours"),
                                                 (at(2024, 6, 18, 13, 30), "outside_window")]
