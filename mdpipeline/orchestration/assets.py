"""Assets for daily bars, one chain per provider: raw -> validated -> normalized -> stored -> published.

Each asset body is a few calls into the pure core; this module only wires inputs, resources,
partitions, metadata and checks.
"""


from datetime import UTC, datetime

import dagster as dg
import polars as pl

from mdpipeline.distribute.events import BARS_1D_EVENT_FIELDS, lineage_headers
from mdpipeline.distribute.outbox import outbox_rows, replace_pending
from mdpipeline.distribute.relay import drain
from mdpipeline.distribute.topics import BARS_1D, DEAD_LETTER, ensure_topics
from mdpipeline.enrich.reference import sync_reference
from mdpipeline.lineage import BAR_COLUMNS
from mdpipeline.normalize.bars import normalize_bars_1d, stamp
from mdpipeline.orchestration.partitions import partition_dates
from mdpipeline.orchestration.resources import DatabaseResource, KafkaResource, ProvidersResource
from mdpipeline.orchestration.steps import (
    conforms,
    raw_asset,
    validate_from_raw,
    validation_check_results,
    validation_check_specs,
)
from mdpipeline.quality.schemas import NormalizedBars1d, StandardBars1d
from mdpipeline.storage.loader import replace_range
from mdpipeline.storage.quarantine_store import replace_quarantine

DATASET = "bars_1d"
SINGLE_RUN = dg.BackfillPolicy.single_run()
REFERENCE_KEY = dg.AssetKey(["ref", "instruments"])
OWNERS = ["team:market-data"]


@dg.asset(
    key=REFERENCE_KEY,
    group_name="reference",
    kinds={"postgres"},
    description="Instrument master and symbology (validity periods) from the checked-in universe file.",
    owners=OWNERS,
    metadata={"dagster/table_name": "ref.instruments"},
)
def reference_data(db: DatabaseResource, providers: ProvidersResource) -> dg.MaterializeResult:
    """Sync `ref.instruments` and `ref.symbology` with the universe file."""
    with db.connection() as conn:
        counts = sync_reference(conn, providers.universe())
    return dg.MaterializeResult(metadata={k: dg.MetadataValue.int(v) for k, v in counts.items()})


def bars_1d_assets(provider: str, partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    """The five daily-bar assets of `provider`."""
    raw_key = dg.AssetKey(["raw", provider, DATASET])
    validated_key = dg.AssetKey(["validated", provider, DATASET])
    normalized_key = dg.AssetKey(["normalized", provider, DATASET])
    stored_key = dg.AssetKey(["md", provider, DATASET])
    published_key = dg.AssetKey(["published", provider, DATASET])
    common = {"partitions_def": partitions, "backfill_policy": SINGLE_RUN}

    raw = raw_asset(
        provider, DATASET, partitions,
        f"Daily bars exactly as {provider} sent them, in raw.payloads (content-addressed).",
        owners=OWNERS, metadata={"dagster/table_name": "raw.payloads", **_table_metadata("raw", provider)},
    )

    @dg.asset(
        key=validated_key, group_name="validated", deps=[raw_key], io_manager_key="frames",
        kinds={"polars", "pandera"},
        description=f"{provider} daily bars parsed from raw payloads; rows failing StandardBars1d are quarantined.",
        owners=OWNERS, metadata=_table_metadata("validated", provider),
        check_specs=validation_check_specs(validated_key, "StandardBars1d"),
        **common,
    )
    def validated(context: dg.AssetExecutionContext, db: DatabaseResource, providers: ProvidersResource):
        start, end = partition_dates(context)
        result = validate_from_raw(provider, DATASET, StandardBars1d, ["symbol", "session_date"], "session_date",
                                   start, end, context.run.run_id, validated_key, db, providers)
        yield dg.Output(result.outcome.valid, metadata={"rows": result.outcome.valid.height})
        yield from validation_check_results(result)

    @dg.asset(
        key=normalized_key, group_name="normalized", io_manager_key="frames", kinds={"polars"},
        ins={"validated_bars": dg.AssetIn(validated_key)}, deps=[REFERENCE_KEY],
        description=f"{provider} daily bars in the canonical schema, keyed by instrument id.",
        owners=OWNERS, metadata=_table_metadata("normalized", provider),
        check_specs=[dg.AssetCheckSpec("canonical_schema", asset=normalized_key, blocking=True,
                                       description="Output conforms to NormalizedBars1d (blocking).")],
        **common,
    )
    def normalized(context: dg.AssetExecutionContext, validated_bars: pl.DataFrame, db: DatabaseResource,
                   providers: ProvidersResource):
        start, end = partition_dates(context)
        result = normalize_bars_1d(validated_bars, provider, providers.universe().symbology)
        with db.connection() as conn:
            replace_quarantine(conn, result.unmapped, dataset=DATASET, provider=provider, stage="normalize",
                               start=start, end=end, run_id=context.run.run_id)
        ok, error = conforms(result.bars, NormalizedBars1d)
        yield dg.Output(result.bars, metadata={"rows": result.bars.height, "unmapped": result.unmapped.height})
        yield dg.AssetCheckResult(check_name="canonical_schema", passed=ok,
                                  metadata={"error": error or "none", "unmapped_rows": result.unmapped.height})

    @dg.asset(
        key=stored_key, group_name="md", kinds={"postgres"}, ins={"bars": dg.AssetIn(normalized_key)},
        description=f"md.bars_1d rows of {provider}: the partition range is replaced in one transaction.",
        owners=OWNERS,
        metadata={"table": "md.bars_1d", "dagster/table_name": "md.bars_1d", **_table_metadata("md", provider)},
        **common,
    )
    def stored(context: dg.AssetExecutionContext, bars: pl.DataFrame, db: DatabaseResource) -> dg.MaterializeResult:
        start, end = partition_dates(context)
        frame = stamp(bars, context.run.run_id, datetime.now(UTC))
        announced = outbox_rows(frame, BARS_1D.name, BARS_1D_EVENT_FIELDS,
                                lineage_headers(context.run.run_id, start, end, provider))
        with db.connection() as conn, conn.transaction():  # data and its announcements commit together
            loaded = replace_range(conn, "md.bars_1d", frame, provider=provider, start=start, end=end)
            queued = replace_pending(conn, announced, provider=provider, start=start, end=end,
                                     topics=(BARS_1D.name, DEAD_LETTER.name))
        dead = int((announced["topic"] == DEAD_LETTER.name).sum())
        return dg.MaterializeResult(metadata={"rows": loaded, "dagster/row_count": loaded, "outbox_rows": queued,
                                              "dead_lettered": dead})

    @dg.asset(
        key=published_key, group_name="published", deps=[stored_key], kinds={"kafka"},
        description=f"{provider} daily bars on topic {BARS_1D.name}, each message confirmed by the broker.",
        owners=OWNERS, metadata={"topic": BARS_1D.name, **_table_metadata("published", provider)},
        **common,
    )
    def published(
        context: dg.AssetExecutionContext, db: DatabaseResource, kafka: KafkaResource
    ) -> dg.MaterializeResult:
        start, end = partition_dates(context)
        ensure_topics(kafka.bootstrap_servers, (BARS_1D, DEAD_LETTER))
        with db.connection() as conn:
            # Sends the range's pending outbox rows; marks exactly the broker-confirmed ones published.
            report = drain(conn, kafka.bootstrap_servers, provider=provider, start=start, end=end,
                           topics=(BARS_1D.name, DEAD_LETTER.name))
            messages = report.confirmed.get(BARS_1D.name, 0)
            conn.execute(
                "insert into ops.publications (topic, provider, partition_start, partition_end, messages, run_id)"
                " values (%s, %s, %s, %s, %s, %s)",
                (BARS_1D.name, provider, start, end, messages, context.run.run_id),
            )
        partitions = report.partitions.get(BARS_1D.name, {})
        return dg.MaterializeResult(metadata={"messages": messages, "topic": BARS_1D.name,
                                              "dead_lettered": report.confirmed.get(DEAD_LETTER.name, 0),
                                              "partitions": {str(k): v for k, v in partitions.items()}})

    return [raw, validated, normalized, stored, published]


def _table_metadata(layer: str, provider: str) -> dict[str, object]:
    """Definition metadata of one layer: `dagster/column_schema` and `dagster/column_lineage` (mdpipeline.lineage)."""
    columns = BAR_COLUMNS[layer]
    schema = dg.TableSchema(columns=[dg.TableColumn(name, type_, description=text or None)
                                     for name, (type_, text, _) in columns.items()])
    key = {up: REFERENCE_KEY if up == "ref" else dg.AssetKey([up, provider, DATASET])
           for _, _, deps in columns.values() for up, _ in deps}
    lineage = {name: [dg.TableColumnDep(asset_key=key[up], column_name=col) for up, col in deps]
               for name, (_, _, deps) in columns.items() if deps}
    meta: dict[str, object] = {"dagster/column_schema": schema}
    if lineage:
        meta["dagster/column_lineage"] = dg.TableColumnLineage(deps_by_column=lineage)
    return meta
