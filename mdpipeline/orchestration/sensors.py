"""Freshness: keep the last N closed sessions of each daily job materialized.

Every evaluation looks at the job's assets for the last N sessions whose close (plus the schedule's
delay) has passed, and re-requests the sessions that are missing or whose latest attempt failed; one
run per contiguous range of such sessions. Sessions with a run queued or in progress are left alone.
N is `MDP_FRESHNESS_SESSIONS` (default 5).

Dagster's freshness checks and freshness policies do not replace it: they report and launch nothing,
and they do not know the exchange calendar (a holiday partition is never materialized, so a
cron-deadline check would fail after every holiday).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import dagster as dg
import polars as pl

from mdpipeline.orchestration.partitions import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from mdpipeline.orchestration.schedules import (
    AFTER_CLOSE,
    FRESHNESS_PRIORITY,
    PRIORITY_TAG,
    TRIGGER_TAG,
)
from mdpipeline.sessions import exchange_timezone, session_bounds

if TYPE_CHECKING:
    from mdpipeline.orchestration.schedules import AssetJob

DEFAULT_SESSIONS = 5
MINIMUM_INTERVAL_SECONDS = 15 * 60


def freshness_sessions() -> int:
    """N, the number of recent sessions kept fresh: `MDP_FRESHNESS_SESSIONS`, default 5."""
    return int(os.environ.get("MDP_FRESHNESS_SESSIONS", DEFAULT_SESSIONS))


def recent_sessions(now: datetime, count: int, calendar_name: str, after_close: timedelta = AFTER_CLOSE) -> list[date]:
    """The last `count` sessions whose close plus `after_close` is at or before `now`, oldest first."""
    today = now.astimezone(ZoneInfo(exchange_timezone(calendar_name))).date()
    bounds = session_bounds(today - timedelta(days=2 * count + 14), today, calendar_name)
    closed = bounds.filter(pl.col("close") + after_close <= now.astimezone(UTC))
    return closed["session_date"].tail(count).to_list()


def stale_ranges(sessions: Sequence[date], stale: set[date]) -> list[tuple[date, date]]:
    """Contiguous runs (in session order) of the stale sessions, as inclusive (first, last) pairs."""
    ranges: list[tuple[date, date]] = []
    first: date | None = None
    for i, day in enumerate(sessions):
        if day in stale and first is None:
            first = day
        if first is not None and (day not in stale or i == len(sessions) - 1):
            last = day if day in stale else sessions[i - 1]
            ranges.append((first, last))
            first = None
    return ranges


def range_request(first: date, last: date, tags: Mapping[str, str]) -> dg.RunRequest:
    """One run for sessions [first, last]: a partition key for one session, range tags for more."""
    if first == last:
        return dg.RunRequest(partition_key=first.isoformat(), tags=dict(tags))
    return dg.RunRequest(tags={**tags, ASSET_PARTITION_RANGE_START_TAG: first.isoformat(),
                               ASSET_PARTITION_RANGE_END_TAG: last.isoformat()})


def _stale(status: object) -> bool:
    """Missing (None) or failed; materialized and in-progress partitions are fine."""
    return status is None or getattr(status, "value", status) == "FAILED"


def freshness_sensor(
    job: AssetJob,
    calendar_name: str,
    *,
    sessions: int | None = None,
    after_close: timedelta = AFTER_CLOSE,
    minimum_interval_seconds: int = MINIMUM_INTERVAL_SECONDS,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
) -> dg.SensorDefinition:
    """A sensor re-requesting the missing or failed sessions among the last N of `job`."""
    count = sessions or freshness_sessions()

    @dg.sensor(
        name=f"{job.name}_freshness",
        job=job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description=(f"Keeps the last {count} closed {calendar_name} sessions of {job.name} materialized: "
                     f"re-requests missing or failed ones (dagster/priority={FRESHNESS_PRIORITY})."),
    )
    def _freshness(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        days = recent_sessions(datetime.now(UTC), count, calendar_name, after_close)
        if not days:
            return dg.SkipReason(f"no closed {calendar_name} session yet")
        job_def = context.repository_def.get_job(job.name)  # type: ignore[union-attr]
        partitions_def = job_def.partitions_def
        assert partitions_def is not None
        keys = [d.isoformat() for d in days]
        stale: set[date] = set()
        for asset_key in job_def.asset_layer.selected_asset_keys:
            status = context.instance.get_status_by_partition(asset_key, keys, partitions_def) or {}
            stale |= {d for d, key in zip(days, keys, strict=True) if _stale(status.get(key))}
        if not stale:
            return dg.SkipReason(f"the last {count} sessions ({keys[0]} .. {keys[-1]}) are fresh")
        tags = {PRIORITY_TAG: str(FRESHNESS_PRIORITY), TRIGGER_TAG: "freshness"}
        return dg.SensorResult(run_requests=[range_request(a, b, tags) for a, b in stale_ranges(days, stale)])

    return _freshness


def freshness_sensors(jobs: Sequence[AssetJob], calendar_name: str) -> list[dg.SensorDefinition]:
    """One freshness sensor per job."""
    return [freshness_sensor(job, calendar_name) for job in jobs]
