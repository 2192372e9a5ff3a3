"""The roll-ups of minute bars (5m, 15m, 1h) as an asset downstream of every provider's stored minute bars.

On TimescaleDB they are continuous aggregates: a backfill writes history below their materialization
watermark, which real-time aggregation does not cover, so this asset refreshes the range's buckets
once the minute bars are stored (only invalidated buckets are recomputed; the refresh policy would
catch up later anyway). On the plain layout they are views aggregated at read time, and this step
has nothing to do. A step of its own so that lineage shows it and its time is not the store's.
"""

from collections.abc import Sequence

import dagster as dg

from mdpipeline.orchestration.partitions import partition_dates
from mdpipeline.orchestration.resources import DatabaseResource
from mdpipeline.orchestration.retries import retry_transient
from mdpipeline.storage.rollups import ROLLUPS, refresh_rollups, rollup_view

ROLLUPS_KEY = dg.AssetKey(["md", "bars_1m_rollups"])


def rollup_asset(minute_keys: Sequence[dg.AssetKey], partitions: dg.PartitionsDefinition,
                 owners: Sequence[str]) -> dg.AssetsDefinition:
    """The roll-up refresh for the sessions of a run, after every provider's minute bars."""
    relations = ", ".join(rollup_view(interval) for interval in ROLLUPS)

    @dg.asset(key=ROLLUPS_KEY, group_name="md", deps=list(minute_keys), kinds={"postgres", "timescaledb"},
              partitions_def=partitions, backfill_policy=dg.BackfillPolicy.single_run(), owners=list(owners),
              metadata={"relations": relations},
              description=f"Minute bars rolled up to {', '.join(ROLLUPS)} ({relations}): continuous aggregates"
                          " refreshed for the range on TimescaleDB, views computed at read time otherwise.")
    @retry_transient
    def bars_1m_rollups(context: dg.AssetExecutionContext, db: DatabaseResource) -> dg.MaterializeResult:
        start, end = partition_dates(context)
        with db.connection() as conn:
            refreshed = refresh_rollups(conn, start, end, url=db.url)
        return dg.MaterializeResult(metadata={
            "refreshed": ", ".join(refreshed) or "nothing to refresh (views, or refresh after load turned off)"})

    return bars_1m_rollups
