"""Stale runs: identical closes (and zero volume) for at least N bars."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import polars as pl

from mdpipeline.quality.staleness import stale_runs
from mdpipeline.sessions import session_dates


def daily(symbol: str, closes: list[float], volumes: list[float] | None = None) -> pl.DataFrame:
    days = session_dates(date(2024, 6, 3), date(2024, 7, 31))[: len(closes)]
    return pl.DataFrame({"symbol": symbol, "session_date": days, "close": closes,
                         "volume": volumes or [100.0] * len(closes)}).cast({"close": pl.Float64, "volume": pl.Float64})


def test_every_bar_of_a_long_enough_run_is_flagged() -> None:
    bars = daily("AAA", [10, 11, 11, 11, 11, 12, 12, 12])
    found = stale_runs(bars, min_run=4)
    days = session_dates(date(2024, 6, 3), date(2024, 7, 31))
    assert found.select("session_date", "kind", "severity", "value").rows() == [
        (d, "stale", "warn", 4.0) for d in days[1:5]]
    assert found["detail"][0] == "close 11.0 unchanged for 4 bars"
    assert stale_runs(bars, min_run=5).is_empty()


def test_zero_volume_requirement_breaks_runs_at_traded_bars() -> None:
    bars = daily("AAA", [5.0] * 5, [0, 0, 100, 0, 0])
    assert stale_runs(bars, min_run=3, require_zero_volume=True).is_empty()
    assert stale_runs(bars, min_run=3).height == 5  # without the requirement the price alone is stale
    quiet = daily("AAA", [5.0] * 5, [0.0] * 5)
    found = stale_runs(quiet, min_run=3, require_zero_volume=True)
    assert found.height == 5
    assert found["detail"][0] == "close 5.0 unchanged for 5 bars with volume 0"


def test_runs_do_not_cross_instruments_and_follow_time_order() -> None:
    bars = pl.concat([daily("AAA", [1, 2, 7, 7]), daily("BBB", [7, 7, 3, 4])]).sample(fraction=1.0, seed=3,
                                                                                         shuffle=True)
    assert stale_runs(bars, min_run=3).is_empty()


def test_intraday_runs_are_ordered_by_timestamp() -> None:
    start = datetime(2024, 6, 3, 13, 30, tzinfo=UTC)
    ts = [start + timedelta(minutes=i) for i in range(6)]
    bars = pl.DataFrame({"symbol": "AAA", "session_date": date(2024, 6, 3), "ts": ts,
                         "close": [1.0, 2.0, 2.0, 2.0, 3.0, 2.0], "volume": 0.0}).reverse()
    found = stale_runs(bars, min_run=3, require_zero_volume=True)
    assert found["ts"].to_list() == ts[1:4]
