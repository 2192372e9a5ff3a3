"""The instrument master as an asset: `ref.instruments` and `ref.symbology` from the universe file."""

from __future__ import annotations

import dagster as dg

from mdpipeline.orchestration.resources import DatabaseResource, ProvidersResource
from mdpipeline.orchestration.retries import retry_transient
from mdpipeline.storage.reference import sync_reference

REFERENCE_KEY = dg.AssetKey(["ref", "instruments"])


@dg.asset(
    key=REFERENCE_KEY,
    group_name="reference",
    kinds={"postgres"},
    description="Instrument master and symbology (validity periods) from the checked-in universe file.",
    owners=["team:market-data"],
    metadata={"dagster/table_name": "ref.instruments"},
)
@retry_transient
def reference_data(db: DatabaseResource, providers: ProvidersResource) -> dg.MaterializeResult:
    """Sync `ref.instruments` and `ref.symbology` with the universe file."""
    with db.connection() as conn:
        counts = sync_reference(conn, providers.universe())
    return dg.MaterializeResult(metadata={k: dg.MetadataValue.int(v) for k, v in counts.items()})
