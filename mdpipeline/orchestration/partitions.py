"""Daily partitions over trading sessions: weekdays minus the exchange's holidays."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import dagster as dg

from mdpipeline.sessions import non_session_weekdays

PARTITIONS_START = date(2000, 1, 3)
DATE_FORMAT = "%Y-%m-%d"


def trading_day_partitions(
    calendar_name: str = "XNYS", start: date = PARTITIONS_START
) -> dg.TimeWindowPartitionsDefinition:
    """One partition per session of `calendar_name`, keyed by the session date (YYYY-MM-DD).

    `end_offset=1` makes the current session's partition exist from its first minute: a window
    ends when the next session's starts (Friday's on Monday), so without it the session a daily
    schedule requests after the close would not be a partition yet.
    """
    horizon = date.today() + timedelta(days=400)
    holidays = [datetime.combine(d, datetime.min.time()) for d in non_session_weekdays(start, horizon, calendar_name)]
    return dg.TimeWindowPartitionsDefinition(
        start=start.strftime(DATE_FORMAT),
        fmt=DATE_FORMAT,
        cron_schedule="0 0 * * 1-5",
        timezone="America/New_York",
        exclusions=holidays,
        end_offset=1,
    )


def partition_dates(context: dg.AssetExecutionContext) -> tuple[date, date]:
    """The inclusive session-date range a (possibly multi-partition) run covers."""
    keys = context.partition_key_range
    return date.fromisoformat(keys.start), date.fromisoformat(keys.end)
