"""Run a date range of assets through Dagster in one run (what `backfill` and `demo` use).

With DAGSTER_HOME set the run is recorded in that instance, so it shows in the Dagster UI like any
other run; without it an ephemeral instance is used.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import date

import dagster as dg

from mdpipeline.orchestration.partitions import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from mdpipeline.orchestration.realtime import REALTIME_GROUP
from mdpipeline.sessions import session_dates

EVENT_BATCH_SIZE_ENV = "DAGSTER_EVENT_BATCH_SIZE"
EVENT_BATCH_SIZE = 1000
# One "materialization planned" event per asset for a ranged run instead of one per asset and session
# (thousands for a year, each a database round trip). Dagster's trade-off: when such a run fails, its
# partitions are not marked failed (the run is); the range is simply run again.
PLANNED_SUBSET_ENV = "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"


class NoSessionsError(ValueError):
    """The requested range holds no trading session."""


def session_range(start: date, end: date, calendar_name: str = "XNYS") -> tuple[str, str]:
    """First and last session keys inside [start, end]."""
    sessions = session_dates(start, end, calendar_name)
    if not sessions:
        raise NoSessionsError(f"no {calendar_name} trading session between {start} and {end}")
    return sessions[0].isoformat(), sessions[-1].isoformat()


def console_log_level(level: str) -> dict:
    """Run config that sets the level of Dagster's console logger for an in-process run."""
    return {"loggers": {"console": {"config": {"log_level": level}}}}


def select_assets(defs: dg.Definitions, providers: Sequence[str] | None, select: str | None) -> dg.AssetSelection:
    """Assets of the given providers (all when None) plus the shared ones (reference data, adjustments,
    the minute-bar roll-ups), narrowed by a Dagster selection string. The real-time assets (group
    `realtime`: one raw offset range per run, launched by their sensors) are never part of a range."""
    selection: dg.AssetSelection = dg.AssetSelection.all()
    if providers:
        graph = defs.resolve_asset_graph()
        keys = [k for k in graph.get_all_asset_keys()
                if (len(k.path) == 3 and k.path[1] in providers) or len(k.path) == 2]
        selection = dg.AssetSelection.assets(*keys)
    if select:
        selection = selection & dg.AssetSelection.from_string(select)
    return selection - dg.AssetSelection.groups(REALTIME_GROUP)


def materialize_range(
    defs: dg.Definitions,
    start: date,
    end: date,
    *,
    providers: Sequence[str] | None = None,
    select: str | None = None,
    instance: dg.DagsterInstance | None = None,
    raise_on_error: bool = False,
    calendar_name: str = "XNYS",
    log_level: str = "INFO",
    tags: dict[str, str] | None = None,
) -> dg.ExecuteInProcessResult:
    """Materialize the selected assets for every session in [start, end] in one run.

    Partitioned assets take the whole range at once (single-run backfill, each step chunk by
    chunk); unpartitioned ones (reference data before, adjustments after) run once in the same run,
    in dependency order. Dagster stores the run's per-session events in batches
    (`DAGSTER_EVENT_BATCH_SIZE`, default here 1000) and plans each asset's range with one event.
    """
    first, last = session_range(start, end, calendar_name)
    os.environ.setdefault(EVENT_BATCH_SIZE_ENV, str(EVENT_BATCH_SIZE))
    os.environ.setdefault(PLANNED_SUBSET_ENV, "1")
    if instance is None:
        instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
    return dg.materialize(
        list(defs.assets or []),  # type: ignore[arg-type]
        selection=select_assets(defs, providers, select),
        resources=dict(defs.resources or {}),
        instance=instance,
        tags={**(tags or {}), ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last},
        raise_on_error=raise_on_error,
        run_config=console_log_level(log_level),
    )
