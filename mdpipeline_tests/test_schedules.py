"""Schedules and freshness sensors follow the exchange calendar (weeks spanning US holidays)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
from dagster._core.storage.partition_status_cache import AssetPartitionStatus
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from dagster._utils.schedules import cron_string_iterator

from mdpipeline.orchestration.assembly import build_definitions
from mdpipeline.orchestration.schedules import PRIORITY_TAG, SCHEDULE_PRIORITY
from mdpipeline.orchestration.sensors import (
    FRESHNESS_PRIORITY,
    _stale,
    recent_sessions,
    stale_ranges,
)
from mdpipeline_tests.pipeline_helpers import settings_for

NY = ZoneInfo("America/New_York")
JOBS = ("bars_1d_synthetic", "bars_1d_file")


@pytest.fixture(scope="module")
def repo() -> dg.RepositoryDefinition:
    return build_definitions(settings_for("", "")).get_repository_def()


def _week(repo: dg.RepositoryDefinition, schedule_name: str, monday: date) -> list[tuple[str, str]]:
    """(tick, outcome) for every tick of the schedule in the week starting `monday`, as the daemon sees them."""
    schedule = repo.get_schedule_def(schedule_name)
    start = datetime.combine(monday, datetime.min.time(), NY)
    outcomes: list[tuple[str, str]] = []
    for tick in cron_string_iterator(start.timestamp(), schedule.cron_schedule, schedule.execution_timezone):
        if tick >= start + timedelta(days=7):
            break
        data = schedule.evaluate_tick(dg.build_schedule_context(scheduled_execution_time=tick, repository_def=repo))
        if data.run_requests:
            (request,) = data.run_requests
            assert request.tags[PRIORITY_TAG] == str(SCHEDULE_PRIORITY)
            assert request.tags["dagster/partition"] == request.partition_key
            outcomes.append((f"{tick:%a %H:%M}", f"run {request.partition_key}"))
        else:
            assert data.skip_message
            outcomes.append((f"{tick:%a %H:%M}", f"skip: {data.skip_message}"))
    return outcomes


@pytest.mark.parametrize("job", JOBS)
def test_independence_day_week(repo: dg.RepositoryDefinition, job: str) -> None:
    # 2024-07-03 is a half day (13:00 close), 2024-07-04 a holiday; no ticks on the weekend.
    assert _week(repo, f"{job}_after_close", date(2024, 7, 1)) == [
        ("Mon 18:30", "run 2024-07-01"),
        ("Tue 18:30", "run 2024-07-02"),
        ("Wed 18:30", "run 2024-07-03"),
        ("Thu 18:30", "skip: 2024-07-04 is not a XNYS session (holiday or weekend)"),
        ("Fri 18:30", "run 2024-07-05"),
    ]


def test_thanksgiving_week(repo: dg.RepositoryDefinition) -> None:
    # Thanksgiving 2024-11-28 is closed; the day after is a half day.
    assert _week(repo, "bars_1d_synthetic_after_close", date(2024, 11, 25)) == [
        ("Mon 18:30", "run 2024-11-25"),
        ("Tue 18:30", "run 2024-11-26"),
        ("Wed 18:30", "run 2024-11-27"),
        ("Thu 18:30", "skip: 2024-11-28 is not a XNYS session (holiday or weekend)"),
        ("Fri 18:30", "run 2024-11-29"),
    ]


def test_a_tick_before_the_close_asks_for_nothing(repo: dg.RepositoryDefinition) -> None:
    schedule = repo.get_schedule_def("bars_1d_synthetic_after_close")
    tick = datetime(2024, 7, 2, 15, 0, tzinfo=NY)  # e.g. "Test schedule" in the UI during the session
    data = schedule.evaluate_tick(dg.build_schedule_context(scheduled_execution_time=tick, repository_def=repo))
    assert not data.run_requests
    assert "too early" in (data.skip_message or "")


def test_recent_sessions_skip_holidays_and_wait_for_the_close() -> None:
    monday_noon = datetime(2024, 7, 8, 12, 0, tzinfo=NY)
    assert recent_sessions(monday_noon, 5, "XNYS") == [
        date(2024, 6, 28), date(2024, 7, 1), date(2024, 7, 2), date(2024, 7, 3), date(2024, 7, 5)]
    assert recent_sessions(datetime(2024, 7, 5, 18, 0, tzinfo=NY), 2, "XNYS") == [date(2024, 7, 2), date(2024, 7, 3)]
    assert recent_sessions(datetime(2024, 7, 5, 18, 30, tzinfo=NY), 2, "XNYS") == [date(2024, 7, 3), date(2024, 7, 5)]


def test_stale_ranges_group_contiguous_sessions() -> None:
    days = [date(2024, 7, 1), date(2024, 7, 2), date(2024, 7, 3), date(2024, 7, 5), date(2024, 7, 8)]
    assert stale_ranges(days, set()) == []
    assert stale_ranges(days, set(days)) == [(days[0], days[-1])]
    assert stale_ranges(days, {days[0], days[2], days[3], days[4]}) == [(days[0], days[0]), (days[2], days[4])]
    assert stale_ranges(days, {days[1]}) == [(days[1], days[1])]


def test_stale_means_missing_or_failed() -> None:
    assert _stale(None)
    assert _stale(AssetPartitionStatus.FAILED)
    assert not _stale(AssetPartitionStatus.MATERIALIZED)
    assert not _stale(AssetPartitionStatus.IN_PROGRESS)


def test_freshness_sensor_requests_the_missing_recent_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MDP_FRESHNESS_SESSIONS", "5")
    repo = build_definitions(settings_for("", "")).get_repository_def()
    sensor = repo.get_sensor_def("bars_1d_synthetic_freshness")
    days = recent_sessions(datetime.now(NY), 5, "XNYS")
    keys = repo.get_job("bars_1d_synthetic").asset_layer.selected_asset_keys
    published = dg.AssetKey(["published", "synthetic", "bars_1d"])
    assert published in keys
    with dg.instance_for_test() as instance:
        # Fresh: sessions 0 and 2 for every asset; session 1 lacks only its published step; 3 and 4 nothing.
        for day in (days[0], days[1], days[2]):
            for key in keys:
                if key == published and day == days[1]:
                    continue
                instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=day.isoformat()))
        data = sensor.evaluate_tick(
            dg.build_sensor_context(instance=instance, repository_def=repo))
        requests = data.run_requests or []
        assert [r.partition_key for r in requests] == [days[1].isoformat(), None]
        assert requests[1].tags[ASSET_PARTITION_RANGE_START_TAG] == days[3].isoformat()
        assert requests[1].tags[ASSET_PARTITION_RANGE_END_TAG] == days[4].isoformat()
        assert all(r.tags[PRIORITY_TAG] == str(FRESHNESS_PRIORITY) for r in requests)

        for day in (days[3], days[4]):
            for key in keys:
                instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=day.isoformat()))
        instance.report_runless_asset_event(dg.AssetMaterialization(published, partition=days[1].isoformat()))
        data = sensor.evaluate_tick(
            dg.build_sensor_context(instance=instance, repository_def=repo))
        assert not data.run_requests
        assert "are fresh" in (data.skip_message or "")


def test_schedule_and_backfill_priorities() -> None:
    # Daily runs are dequeued before freshness catch-up runs, and both before UI backfills (default 0).
    assert SCHEDULE_PRIORITY > FRESHNESS_PRIORITY > 0
