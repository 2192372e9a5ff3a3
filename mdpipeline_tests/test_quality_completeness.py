"""Completeness against the XNYS calendar: expected sessions and minutes, missing vs no trades."""

from __future__ import annotations

from datetime import UTC, date, datetime

import polars as pl

from mdpipeline.quality.completeness import completeness, expected_minutes, expected_sessions

D = date


def daily(rows: list[tuple[str, date, float]]) -> pl.DataFrame:
    """Daily bars (symbol, session_date, volume) with flat prices."""
    return pl.DataFrame(rows, schema={"symbol": pl.String, "session_date": pl.Date, "volume": pl.Float64},
                        orient="row").with_columns(open=10.0, high=10.0, low=10.0, close=10.0)


def minutes(symbol: str, day: date, *, drop: tuple[str, ...] = (), zero: tuple[str, ...] = (),
            extra: tuple[datetime, ...] = ()) -> pl.DataFrame:
    """Every regular minute of `day` for `symbol`, minus `drop` (HH:MM UTC), volume 0 at `zero`."""
    grid = expected_minutes([symbol], day, day).select("symbol", "ts")
    grid = pl.concat([grid, pl.DataFrame({"symbol": [symbol] * len(extra), "ts": list(extra)},
                                         schema=grid.schema)])
    hhmm = pl.col("ts").dt.strftime("%H:%M")
    return grid.filter(~hhmm.is_in(list(drop))).with_columns(
        volume=pl.when(hhmm.is_in(list(zero))).then(0.0).otherwise(100.0), close=10.0)


def test_expected_sessions_skip_weekends_and_holidays() -> None:
    grid = expected_sessions(["AAA"], D(2024, 6, 14), D(2024, 6, 21))
    assert grid["session_date"].to_list() == [D(2024, 6, 14), D(2024, 6, 17), D(2024, 6, 18), D(2024, 6, 20),
                                              D(2024, 6, 21)]  # 06-19 Juneteenth, 06-15/16 weekend


def test_expected_sessions_respect_symbology_validity() -> None:
    symbology = pl.DataFrame({"symbol": ["FB", "META"], "valid_from": [D(2012, 5, 18), D(2022, 6, 9)],
                              "valid_to": [D(2022, 6, 8), D(9999, 12, 31)]})
    grid = expected_sessions(symbology, D(2022, 6, 7), D(2022, 6, 10))
    assert grid.rows() == [("FB", D(2022, 6, 7)), ("FB", D(2022, 6, 8)), ("META", D(2022, 6, 9)),
                           ("META", D(2022, 6, 10))]


def test_daily_missing_is_not_no_trades() -> None:
    bars = daily([("AAA", D(2024, 6, 17), 5.0), ("AAA", D(2024, 6, 18), 0.0), ("AAA", D(2024, 6, 21), 7.0),
                  *[("BBB", d, 9.0) for d in (D(2024, 6, 17), D(2024, 6, 18), D(2024, 6, 20), D(2024, 6, 21))]])
    result = completeness(bars, D(2024, 6, 17), D(2024, 6, 21), instruments=["AAA", "BBB", "CCC"])
    assert (result.expected, result.present, result.missing, result.no_trades) == (12, 7, 5, 1)
    assert result.pct == round(100 * 7 / 12, 4)
    rows = result.findings.select("instrument", "session_date", "kind", "severity").rows()
    assert rows == [
        ("AAA", D(2024, 6, 18), "no_trades", "info"),
        ("AAA", D(2024, 6, 20), "missing", "warn"),
        *[("CCC", d, "missing", "warn") for d in (D(2024, 6, 17), D(2024, 6, 18), D(2024, 6, 20), D(2024, 6, 21))],
    ]
    assert result.as_dict() == {"expected": 12, "present": 7, "missing": 5, "no_trades": 1,
                                "completeness_pct": round(100 * 7 / 12, 4)}


def test_instruments_default_to_those_present_and_nothing_expected_is_complete() -> None:
    bars = daily([("AAA", D(2024, 6, 17), 5.0)])
    assert completeness(bars, D(2024, 6, 17), D(2024, 6, 18)).missing == 1
    empty = completeness(bars.clear(), D(2024, 6, 15), D(2024, 6, 16))  # a weekend
    assert (empty.expected, empty.pct) == (0, 100.0)


def test_expected_minutes_follow_the_session_half_days_included() -> None:
    full = expected_minutes(["AAA"], D(2024, 11, 27), D(2024, 11, 27))
    half = expected_minutes(["AAA"], D(2024, 11, 29), D(2024, 11, 29))
    winter = expected_minutes(["AAA"], D(2024, 1, 2), D(2024, 1, 2))
    assert (full.height, half.height, winter.height) == (390, 210, 390)
    assert half["ts"].min() == datetime(2024, 11, 29, 14, 30, tzinfo=UTC)
    assert half["ts"].max() == datetime(2024, 11, 29, 17, 59, tzinfo=UTC)
    summer = expected_minutes(["AAA"], D(2024, 6, 10), D(2024, 6, 10))
    assert summer["ts"].min() == datetime(2024, 6, 10, 13, 30, tzinfo=UTC)  # EDT: one hour earlier in UTC


def test_minute_completeness_missing_minute_missing_session_no_trades() -> None:
    after_close = datetime(2024, 11, 29, 21, 0, tzinfo=UTC)
    bars = pl.concat([
        minutes("AAA", D(2024, 11, 27), zero=("14:30",)),
        minutes("AAA", D(2024, 11, 29), drop=("15:00",), extra=(after_close,)),
        minutes("BBB", D(2024, 11, 27)),
    ])
    result = completeness(bars, D(2024, 11, 27), D(2024, 11, 29), instruments=["AAA", "BBB"])
    assert (result.expected, result.present, result.no_trades) == (1200, 989, 1)  # the 21:00 bar is not counted
    rows = result.findings.select("instrument", "session_date", "ts", "kind", "value").rows()
    assert rows == [
        ("AAA", D(2024, 11, 27), datetime(2024, 11, 27, 14, 30, tzinfo=UTC), "no_trades", 0.0),
        ("AAA", D(2024, 11, 29), datetime(2024, 11, 29, 15, 0, tzinfo=UTC), "missing", 1.0),
        ("BBB", D(2024, 11, 29), None, "missing_session", 210.0),
    ]
