"""Exchange sessions from exchange-calendars: which dates trade, and when each session opens and closes."""

from __future__ import annotations

from datetime import date, timedelta
from functools import lru_cache

import exchange_calendars as xcals
import polars as pl

EARLIEST = date(1990, 1, 2)


@lru_cache(maxsize=8)
def calendar(name: str = "XNYS") -> xcals.ExchangeCalendar:
    """The exchange calendar `name` from 1990 (or its first evaluable date) to two years ahead (cached)."""
    end = (date.today() + timedelta(days=730)).isoformat()
    try:
        return xcals.get_calendar(name, start=EARLIEST.isoformat(), end=end)
    except ValueError:  # e.g. XTKS can be evaluated from 1997 only: ask a recent calendar where it starts
        recent = xcals.get_calendar(name, start=(date.today() - timedelta(days=30)).isoformat(), end=end)
        bound = recent.bound_min()
        if bound is None or bound.date() <= EARLIEST:
            raise
        return xcals.get_calendar(name, start=bound.date().isoformat(), end=end)


def exchange_timezone(calendar_name: str = "XNYS") -> str:
    """The IANA time zone of the exchange (session dates are dates on its local clock)."""
    return str(calendar(calendar_name).tz)


def with_session_date(frame: pl.DataFrame, calendar_name: str = "XNYS") -> pl.DataFrame:
    """Intraday rows (with `ts`, UTC) get `session_date`, the exchange-local date of `ts`, unless they have one."""
    if "session_date" in frame.columns or "ts" not in frame.columns:
        return frame
    local = pl.col("ts").dt.convert_time_zone(exchange_timezone(calendar_name)).dt.date()
    return frame.with_columns(local.alias("session_date"))


def session_dates(start: date, end: date, calendar_name: str = "XNYS") -> list[date]:
    """Trading session dates in [start, end], inclusive."""
    if end < start:
        return []
    cal = calendar(calendar_name)
    return [ts.date() for ts in cal.sessions_in_range(start.isoformat(), end.isoformat())]


def session_bounds(start: date, end: date, calendar_name: str = "XNYS") -> pl.DataFrame:
    """One row per session in [start, end]: session_date, open and close (UTC); half days included."""
    cal = calendar(calendar_name)
    sched = cal.schedule.loc[start.isoformat(): end.isoformat()]
    return pl.DataFrame({
        "session_date": [ts.date() for ts in sched.index],
        "open": sched["open"].dt.tz_convert("UTC").to_list(),
        "close": sched["close"].dt.tz_convert("UTC").to_list(),
    }).with_columns(pl.col("open", "close").cast(pl.Datetime("us", "UTC")))
