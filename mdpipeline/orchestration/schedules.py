"""Daily schedules that follow the exchange calendar: one run per session, after its close.

The cron fires on every weekday at the exchange's regular close plus a delay (18:30 New York time
for XNYS); the evaluation asks the calendar whether that day is a session and skips holidays. Half
days (13:00 close) run at the same time. Runs carry `dagster/priority` so the run queue starts them
before backfill runs, which keep the default priority 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

import dagster as dg

from mdpipeline.sessions import calendar, exchange_timezone, session_bounds


class AssetJob(Protocol):
    """What `dg.define_asset_job` returns (its class is not part of Dagster's public API): a named job."""

    @property
    def name(self) -> str: ...

PRIORITY_TAG = "dagster/priority"
TRIGGER_TAG = "mdpipeline/trigger"
SCHEDULE_PRIORITY = 10  # daily runs: dequeued first
FRESHNESS_PRIORITY = 5  # catch-up runs of the freshness sensor: after daily runs, before backfills (0)
AFTER_CLOSE = timedelta(hours=2, minutes=30)  # providers publish final daily bars some time after the close


def after_close_cron(calendar_name: str, after_close: timedelta = AFTER_CLOSE) -> str:
    """Cron string, in the exchange's time zone, for weekdays at the regular close plus `after_close`."""
    close = calendar(calendar_name).close_times[-1][1]
    at = datetime.combine(date(2000, 1, 3), close) + after_close
    if at.date() != date(2000, 1, 3):
        raise ValueError(f"{calendar_name}: close + {after_close} falls on the next day; choose a shorter delay")
    return f"{at.minute} {at.hour} * * 1-5"


def session_close(day: date, calendar_name: str) -> datetime | None:
    """Close (UTC) of the session on `day`, or None when the exchange does not trade that day."""
    bounds = session_bounds(day, day, calendar_name)
    return bounds["close"][0] if bounds.height else None


def daily_run_request(
    tick: datetime, job_name: str, calendar_name: str, after_close: timedelta = AFTER_CLOSE
) -> dg.RunRequest | dg.SkipReason:
    """What the daily schedule asks for at `tick`: the session of that local date, or a reason to skip."""
    day = tick.astimezone(ZoneInfo(exchange_timezone(calendar_name))).date()
    close = session_close(day, calendar_name)
    if close is None:
        return dg.SkipReason(f"{day} is not a {calendar_name} session (holiday or weekend)")
    if tick < close + after_close:
        return dg.SkipReason(f"{day}: the {calendar_name} session closes at {close:%H:%M} UTC; too early")
    return dg.RunRequest(
        run_key=f"{job_name}:{day.isoformat()}",
        partition_key=day.isoformat(),
        tags={PRIORITY_TAG: str(SCHEDULE_PRIORITY), TRIGGER_TAG: "schedule"},
    )


def session_schedule(
    job: AssetJob,
    calendar_name: str,
    *,
    after_close: timedelta = AFTER_CLOSE,
    default_status: dg.DefaultScheduleStatus = dg.DefaultScheduleStatus.STOPPED,
) -> dg.ScheduleDefinition:
    """A schedule running `job` for each session of `calendar_name` once the session has closed."""

    @dg.schedule(
        name=f"{job.name}_after_close",
        job=job,
        cron_schedule=after_close_cron(calendar_name, after_close),
        execution_timezone=exchange_timezone(calendar_name),
        default_status=default_status,
        description=(f"Runs {job.name} for each {calendar_name} session, {after_close} after its regular close; "
                     "skips holidays. Runs carry dagster/priority=" f"{SCHEDULE_PRIORITY}."),
    )
    def _after_close(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        tick = context.scheduled_execution_time or datetime.now(UTC)
        return daily_run_request(tick, job.name, calendar_name, after_close)

    return _after_close


def session_schedules(jobs: Sequence[AssetJob], calendar_name: str) -> list[dg.ScheduleDefinition]:
    """One after-close schedule per job."""
    return [session_schedule(job, calendar_name) for job in jobs]
