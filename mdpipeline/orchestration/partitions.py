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
    """One partition per session of `calendar_name`, keyed by the session date (YYYY-MM-DD)."""
    horizon = date.today() + timedelta(days=400)
    holidays = [datetime.combine(d, datetime.min.time()) for d in non_session_weekdays(start, horizon, calendar_name)]
    return dg.TimeWindowPartitionsDefinition(
        start=start.strftime(DATE_FORMAT),
        fmt=DATE_FORMAT,
        cron_schedule="0 0 * * 1-5",
        timezone="America/New_York",
        exclusions=holidays,
    )


def partition_dates(context: dg.AssetExecutionContext) -> tuple[date, date]:
    """The inclusive session-date range a (possibly multi-partition) run covers."""
    keys = context.partition_key_range
    return date.fromisoformat(keys.start), date.fromisoformat(keys.end)
