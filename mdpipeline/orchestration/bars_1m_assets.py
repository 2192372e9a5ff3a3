"""One-minute bar assets per provider: raw -> validated -> normalized -> md (partitioned by session)."""

from datetime import UTC, datetime

import dagster as dg
import polars as pl

from mdpipeline.normalize.bars import stamp
from mdpipeline.normalize.minute_bars import EXCHANGE_TIME_ZONES, normalize_bars_1m, with_session_date
from mdpipeline.orchestration.partitions import partition_dates
from mdpipeline.orchestration.resources import DatabaseResource, ProvidersResource
from mdpipeline.orchestration.steps import (
    conforms,
    fetch_raw,
    validate_from_raw,
    validation_check_results,
    validation_check_specs,
)
from mdpipeline.quality.schemas import NormalizedBars1m, StandardBars1m
from mdpipeline.storage.loader import replace_range
from mdpipeline.storage.quarantine_store import replace_quarantine

DATASET = "bars_1m"
KEY = ["symbol", "ts"]


def minute_key(layer: str, provider: str) -> dg.AssetKey:
    """Asset key of a minute-bar layer of `provider`."""
    return dg.AssetKey([layer, provider, DATASET])


def bars_1m_assets(provider: str, partitions: dg.PartitionsDefinition,
                   calendar_name: str = "XNYS") -> list[dg.AssetsDefinition]:
    """The four minute-bar assets of `provider`."""
    exchange_tz = EXCHANGE_TIME_ZONES.get(calendar_name, "America/New_York")
    raw_key, validated_key = minute_key("raw", provider), minute_key("validated", provider)
    normalized_key, stored_key = minute_key("normalized", provider), minute_key("md", provider)
    common = {"partitions_def": partitions, "backfill_policy": dg.BackfillPolicy.single_run()}

    @dg.asset(key=raw_key, group_name="raw", kinds={"python", "postgres"}, pool=f"provider_{provider}",
              description=f"One-minute bars exactly as {provider} sent them, in raw.payloads.", **common)
    def raw(context: dg.AssetExecutionContext, db: DatabaseResource,
            providers: ProvidersResource) -> dg.MaterializeResult:
        start, end = partition_dates(context)
        return dg.MaterializeResult(metadata=fetch_raw(provider, DATASET, start, end, context.run.run_id, db,
                                                       providers))

    @dg.asset(key=validated_key, group_name="validated", deps=[raw_key], io_manager_key="frames",
              kinds={"polars", "pandera"},
              description=f"{provider} minute bars parsed from raw (UTC bar starts); invalid rows quarantined.",
              check_specs=validation_check_specs(validated_key, "StandardBars1m"), **common)
    def validated(context: dg.AssetExecutionContext, db: DatabaseResource, providers: ProvidersResource):
        start, end = partition_dates(context)
        result = validate_from_raw(provider, DATASET, StandardBars1m, KEY, "session_date", start, end,
                                   context.run.run_id, validated_key, db, providers,
                                   prepare=lambda f: with_session_date(f, exchange_tz))
        yield dg.Output(result.outcome.valid, metadata={"rows": result.outcome.valid.height})
        yield from validation_check_results(result)

    @dg.asset(key=normalized_key, group_name="normalized", io_manager_key="frames", kinds={"polars"},
              ins={"bars": dg.AssetIn(validated_key)},
              description=f"{provider} minute bars in the canonical schema (UTC ts, session date, instrument).",
              check_specs=[dg.AssetCheckSpec("canonical_schema", asset=normalized_key, blocking=True,
                                             description="Output conforms to NormalizedBars1m (blocking).")],
              **common)
    def normalized(context: dg.AssetExecutionContext, bars: pl.DataFrame, db: DatabaseResource,
                   providers: ProvidersResource):
        start, end = partition_dates(context)
        result = normalize_bars_1m(bars.drop("session_date"), provider, providers.universe().symbology,
                                   exchange_tz)
        with db.connection() as conn:
            replace_quarantine(conn, result.unmapped, dataset=DATASET, provider=provider, stage="normalize",
                               start=start, end=end, run_id=context.run.run_id)
        ok, error = conforms(result.bars, NormalizedBars1m)
        yield dg.Output(result.bars, metadata={"rows": result.bars.height, "unmapped": result.unmapped.height})
        yield dg.AssetCheckResult(check_name="canonical_schema", passed=ok,
                                  metadata={"error": error or "none", "unmapped_rows": result.unmapped.height})

    @dg.asset(key=stored_key, group_name="md", kinds={"postgres"}, ins={"bars": dg.AssetIn(normalized_key)},
              metadata={"table": "md.bars_1m"},
              description=f"md.bars_1m rows of {provider}: the session range is replaced in one transaction.",
              **common)
    def stored(context: dg.AssetExecutionContext, bars: pl.DataFrame, db: DatabaseResource) -> dg.MaterializeResult:
        start, end = partition_dates(context)
        frame = stamp(bars, context.run.run_id, datetime.now(UTC))
        with db.connection() as conn:
            loaded = replace_range(conn, "md.bars_1m", frame, provider=provider, start=start, end=end)
        return dg.MaterializeResult(metadata={"rows": loaded, "dagster/row_count": loaded})

    return [raw, validated, normalized, stored]
