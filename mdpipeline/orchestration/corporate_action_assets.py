"""Corporate-action assets per provider: raw -> validated -> normalized -> ref (point in time)."""

import dagster as dg
import polars as pl

from mdpipeline.normalize.corporate_actions import normalize_corporate_actions
from mdpipeline.orchestration.partitions import partition_dates
from mdpipeline.orchestration.resources import DatabaseResource, ProvidersResource
from mdpipeline.orchestration.steps import (
    raw_asset,
    validate_from_raw,
    validation_check_results,
    validation_check_specs,
)
from mdpipeline.quality.schemas import StandardCorporateActions
from mdpipeline.storage.corporate_actions import replace_provider_actions
from mdpipeline.storage.quarantine_store import replace_quarantine

DATASET = "corporate_actions"
# Two rows differing only in amount are two dividends (regular + special), not a conflict.
KEY = ["symbol", "ex_date", "action", "ratio", "amount"]


def actions_key(layer: str, provider: str) -> dg.AssetKey:
    """Asset key of a corporate-actions layer of `provider`."""
    return dg.AssetKey([layer, provider, DATASET])


def corporate_action_assets(provider: str, partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    """The four corporate-action assets of `provider`, partitioned by ex-date session."""
    raw_key, validated_key = actions_key("raw", provider), actions_key("validated", provider)
    normalized_key, stored_key = actions_key("normalized", provider), actions_key("ref", provider)
    common = {"partitions_def": partitions, "backfill_policy": dg.BackfillPolicy.single_run()}

    raw = raw_asset(provider, DATASET, partitions,
                    f"Splits and dividends exactly as {provider} sent them, in raw.payloads.")

    @dg.asset(key=validated_key, group_name="validated", deps=[raw_key], io_manager_key="frames",
              kinds={"polars", "pandera"}, metadata={"partition_column": "ex_date"},
              description=f"{provider} corporate actions parsed from raw; invalid rows quarantined.",
              check_specs=validation_check_specs(validated_key, "StandardCorporateActions"), **common)
    def validated(context: dg.AssetExecutionContext, db: DatabaseResource, providers: ProvidersResource):
        start, end = partition_dates(context)
        result = validate_from_raw(provider, DATASET, StandardCorporateActions, KEY, "ex_date", start, end,
                                   context.run.run_id, validated_key, db, providers,
                                   latest_key=["symbol", "ex_date", "action"])
        yield dg.Output(result.outcome.valid, metadata={"rows": result.outcome.valid.height})
        yield from validation_check_results(result)

    @dg.asset(key=normalized_key, group_name="normalized", io_manager_key="frames", kinds={"polars"},
              ins={"actions": dg.AssetIn(validated_key)}, metadata={"partition_column": "ex_date"},
              description=f"{provider} corporate actions keyed by instrument id (symbology at the ex-date).",
              **common)
    def normalized(context: dg.AssetExecutionContext, actions: pl.DataFrame, db: DatabaseResource,
                   providers: ProvidersResource) -> dg.Output:
        start, end = partition_dates(context)
        result = normalize_corporate_actions(actions, provider, providers.universe().symbology)
        with db.connection() as conn:
            replace_quarantine(conn, result.unmapped, dataset=DATASET, provider=provider, stage="normalize",
                               start=start, end=end, run_id=context.run.run_id)
        return dg.Output(result.bars, metadata={"rows": result.bars.height, "unmapped": result.unmapped.height})

    @dg.asset(key=stored_key, group_name="reference", kinds={"postgres"}, ins={"actions": dg.AssetIn(normalized_key)},
              metadata={"table": "ref.corporate_actions"},
              description=f"ref.corporate_actions rows of {provider}; each keeps the time it was first learnt.",
              **common)
    def stored(context: dg.AssetExecutionContext, actions: pl.DataFrame, db: DatabaseResource) -> dg.MaterializeResult:
        start, end = partition_dates(context)
        with db.connection() as conn:
            counts = replace_provider_actions(conn, actions, provider=provider, start=start, end=end,
                                              run_id=context.run.run_id)
        return dg.MaterializeResult(metadata=counts)

    return [raw, validated, normalized, stored]
