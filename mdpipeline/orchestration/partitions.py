"""Daily partitions: one per weekday, keyed by the date; the exchange calendar decides what trades.

Holidays are partitions too, and they hold no data: every step asks the exchange calendar which
sessions a range contains, so materializing a holiday does nothing, and the schedules skip them.
They are not excluded from the partitions definition on purpose: Dagster serializes the definition
into every planned asset-check row it stores for each partition of a run, and a list of a
quarter-century of holidays made each of those rows 26 kB (a year's backfill wrote over 100 MB of
bookkeeping before its first step; without the list a row is under 1 kB).
"""

from __future__ import annotations

from datetime import date

import dagster as dg

from mdpipeline.sessions import exchange_timezone

PARTITIONS_START = date(2000, 1, 3)
DATE_FORMAT = "%Y-%m-%d"
# The run tags of a partition-range run (Dagster's tag names; its constants for them are not public API).
ASSET_PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
ASSET_PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"


def trading_day_partitions(
    calendar_name: str = "XNYS", start: date = PARTITIONS_START
) -> dg.TimeWindowPartitionsDefinition:
    """One partition per weekday from `start`, keyed YYYY-MM-DD, in the exchange's time zone.

    `end_offset=1` makes the current day's partition exist from its first minute: a window ends
    when the next weekday's starts (Friday's on Monday), so without it the session a daily schedule
    requests after the close would not be a partition yet.
    """
    return dg.TimeWindowPartitionsDefinition(
        start=start.strftime(DATE_FORMAT),
        fmt=DATE_FORMAT,
        cron_schedule="0 0 * * 1-5",
        timezone=exchange_timezone(calendar_name),
        end_offset=1,
    )


def partition_dates(context: dg.AssetExecutionContext) -> tuple[date, date]:
    """The inclusive date range a (possibly multi-partition) run covers."""
    keys = context.partition_key_range
    return date.fromisoformat(keys.start), date.fromisoformat(keys.end)
