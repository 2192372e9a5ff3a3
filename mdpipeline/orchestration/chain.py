"""The factories of every dataset's chain: a provider's raw -> validated -> normalized -> stored assets
(`dataset_chain`, the ingest domain) and the published asset that sends them (`published_asset`, the
distribution domain).

Each asset body plans its session range into chunks (`chain.plan`) and runs one step per chunk
(`chain.steps`), so a backfill of any length stays one Dagster run in bounded memory. Nothing flows
through an IO manager: steps hand chunks to each other as Parquet files in the frame store, and each
asset reports what it did as metadata (chunks, rows, rows per second) and its checks.
"""

from collections.abc import Iterator

import dagster as dg
import polars as pl

from mdpipeline.chain.columns import layer_columns
from mdpipeline.chain.datasets import Dataset
from mdpipeline.chain.progress import run_chunks, run_pipelined
from mdpipeline.chain.steps import (
    Chain,
    StoreInput,
    fetch,
    ingest,
    normalize_chunk,
    parse_chunk,
    prepare_store,
    store_chunk,
    validate_chunk,
)
from mdpipeline.chunks import Chunk, plan_chunks
from mdpipeline.distribute.publications import record_publication
from mdpipeline.distribute.relay import drain
from mdpipeline.distribute.topics import DEAD_LETTER, ensure_topics
from mdpipeline.orchestration.partitions import partition_dates
from mdpipeline.orchestration.progress import reporter
from mdpipeline.orchestration.reference_assets import REFERENCE_KEY
from mdpipeline.orchestration.resources import DatabaseResource, FramesResource, KafkaResource, ProvidersResource
from mdpipeline.orchestration.retries import retry_transient
from mdpipeline.providers.base import RawPayload
from mdpipeline.quality.metrics import counts_markdown, findings_markdown, rows_markdown
from mdpipeline.quality.thresholds import BLOCK, on_quarantine
from mdpipeline.quality.validate import ValidationSummary
from mdpipeline.sessions import session_dates
from mdpipeline.storage.frames import ALL_SYMBOLS
from mdpipeline.storage.new_chunks import session_slices
from mdpipeline.storage.quarantine_store import record_check

OWNERS = ["team:market-data"]
ALLOW_DELETES_TAG = "mdpipeline/allow_deletes"
SESSION_WINDOW = ("Bars inside the run's sessions and the exchange's regular session: bars outside the partition"
                  " window or on a closed day are quarantined (outside_window, non_session); extended-hours bars"
                  " are kept and flagged (extended_hours). Warns when there is any.")



LAYERS = ("raw", "validated", "normalized", "stored", "published")


def chain_keys(provider: str, ds: Dataset) -> dict[str, dg.AssetKey]:
    """The asset key of every layer of `provider`'s `ds` chain."""
    keys = {layer: dg.AssetKey([layer, provider, ds.name]) for layer in LAYERS if layer != "stored"}
    return {**keys, "stored": dg.AssetKey(list(ds.stored_key(provider)))}


def _common(partitions: dg.PartitionsDefinition) -> dict:
    """What every asset of a chain shares: partitioned by session, each a single-run backfill."""
    return {"partitions_def": partitions, "backfill_policy": dg.BackfillPolicy.single_run(), "owners": OWNERS}


def dataset_chain(provider: str, ds: Dataset, partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    """The raw, validated, normalized and stored assets of `provider`'s `ds` chain (`published_asset` sends it)."""
    keys = chain_keys(provider, ds)
    common = _common(partitions)
    meta = {layer: _layer_metadata(ds, layer, keys) for layer in LAYERS if layer != "published"}

    @dg.asset(key=keys["raw"], group_name="raw", kinds={"python", "postgres"}, pool=f"provider_{provider}",
              description=f"{ds.title.capitalize()} exactly as {provider} sent them, in raw.payloads"
                          " (zstd-compressed, content-addressed).",
              metadata={"dagster/table_name": "raw.payloads", **meta["raw"]}, **common)
    @retry_transient
    def raw(context: dg.AssetExecutionContext, db: DatabaseResource, providers: ProvidersResource,
            frames: FramesResource) -> dg.MaterializeResult:
        chain, chunks = _plan(context, ds, provider, providers, frames)
        source = providers.provider(provider)
        counts = {"payloads": 0, "new_payloads": 0, "bytes": 0, "sessions": 0}
        with db.connection() as conn:
            def save(chunk: Chunk, payloads: list[RawPayload]) -> int:
                got = ingest(chain, payloads, conn)
                for name in counts:
                    counts[name] += getattr(got, name)
                return got.payloads
            # The next chunk is fetched while this one is compressed and stored.
            totals = run_pipelined("ingest", keys["raw"].to_user_string(), chunks,
                                   lambda chunk: fetch(chain, source, chunk), save, reporter(context))
        stats = source.fetch_stats() if hasattr(source, "fetch_stats") else {}
        return dg.MaterializeResult(metadata={**totals.metadata("payloads"), **counts,
                                              **{f"http_{k}": v for k, v in stats.items()}})

    checks = [dg.AssetCheckSpec("schema", asset=keys["validated"], blocking=True,
                                description=f"Output conforms to {ds.standard_schema.__name__} (blocking)."),
              dg.AssetCheckSpec("quarantine", asset=keys["validated"],
                                description="Rows quarantined by validation (warns when any).")]
    if ds.screen is not None:
        checks.append(dg.AssetCheckSpec("session_window", asset=keys["validated"], description=SESSION_WINDOW))

    @dg.asset(key=keys["validated"], group_name="validated", deps=[keys["raw"]], kinds={"polars", "pandera"},
              description=f"{provider} {ds.title} parsed from raw payloads; rows failing "
                          f"{ds.standard_schema.__name__} are held back with a reason.",
              metadata=meta["validated"], check_specs=checks, **common)
    @retry_transient
    def validated(context: dg.AssetExecutionContext, db: DatabaseResource, providers: ProvidersResource,
                  frames: FramesResource) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        start, end = partition_dates(context)
        policy = on_quarantine(provider, ds.name)  # read first: a bad config fails before anything is written
        chain, chunks = _plan(context, ds, provider, providers, frames)
        source = providers.provider(provider)
        summary = ValidationSummary(on_quarantine=policy)
        with db.connection() as conn, db.connection() as reader:
            def check(chunk: Chunk, parsed: pl.DataFrame) -> int:
                done = validate_chunk(chain, chunk, parsed, conn, record_rejects=policy == BLOCK)
                summary.add(done.validation, done.schema_error)
                return done.validation.rows_in
            # The next chunk's payloads are read and parsed (on a connection of their own) during this one's checks.
            totals = run_pipelined("validate", keys["validated"].to_user_string(), chunks,
                                   lambda chunk: parse_chunk(chain, source, chunk, reader), check, reporter(context))
            key = keys["validated"].to_user_string()
            record_check(conn, asset_key=key, check_name="quarantine", start=start, end=end,
                         passed=summary.rows_quarantined == 0, severity="WARN", metadata=summary.metadata(),
                         run_id=context.run.run_id)
            record_check(conn, asset_key=key, check_name="schema", start=start, end=end, passed=summary.schema_passed,
                         severity="ERROR", metadata=summary.schema_metadata(), run_id=context.run.run_id)
            window = _session_window(summary) if ds.screen is not None else None
            if window is not None:
                record_check(conn, asset_key=key, check_name="session_window", start=start, end=end,
                             passed=window[0], severity="WARN", metadata=window[1], run_id=context.run.run_id)
        yield dg.MaterializeResult(metadata={**totals.metadata(), "rows": summary.rows_valid})
        yield dg.AssetCheckResult(check_name="schema", passed=summary.schema_passed,
                                  metadata=summary.schema_metadata())
        sample = summary.quarantine_sample
        yield dg.AssetCheckResult(
            check_name="quarantine", passed=summary.rows_quarantined == 0, severity=dg.AssetCheckSeverity.WARN,
            metadata={**summary.metadata(), "sample": dg.MetadataValue.md(
                rows_markdown(sample) if sample is not None else "no rows")})
        if window is not None:
            passed, metrics, tables = window
            yield dg.AssetCheckResult(
                check_name="session_window", passed=passed, severity=dg.AssetCheckSeverity.WARN,
                metadata={**{k: dg.MetadataValue.json(v) if isinstance(v, dict | list) else v
                             for k, v in metrics.items()}, **tables})

    @dg.asset(key=keys["normalized"], group_name="normalized", deps=[keys["validated"], REFERENCE_KEY],
              kinds={"polars"}, metadata=meta["normalized"],
              description=f"{provider} {ds.title} in the canonical schema, keyed by instrument id.",
              check_specs=[dg.AssetCheckSpec("canonical_schema", asset=keys["normalized"], blocking=True,
                                             description=f"Output conforms to {ds.canonical_schema.__name__}"
                                                         " (blocking).")],
              **common)
    @retry_transient
    def normalized(context: dg.AssetExecutionContext, providers: ProvidersResource,
                   frames: FramesResource) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        chain, chunks = _plan(context, ds, provider, providers, frames)
        unmapped = 0
        errors: list[str] = []

        def body(chunk: Chunk) -> int:
            nonlocal unmapped
            done = normalize_chunk(chain, chunk)
            unmapped += done.unmapped
            if done.schema_error:
                errors.append(done.schema_error)
            return done.rows
        totals = run_chunks("normalize", keys["normalized"].to_user_string(), chunks, body, reporter(context))
        yield dg.MaterializeResult(metadata={**totals.metadata(), "unmapped": unmapped})
        yield dg.AssetCheckResult(check_name="canonical_schema", passed=not errors,
                                  metadata={"error": errors[0] if errors else "none", "unmapped_rows": unmapped})

    @dg.asset(key=keys["stored"], group_name=ds.stored_group, deps=[keys["normalized"]], kinds={"postgres"},
              metadata={"table": ds.table, "dagster/table_name": ds.table, **meta["stored"]},
              description=f"{ds.table} rows of {provider}: each chunk's rows, quarantine and outbox rows commit"
                          " together; unchanged rows are left as they are.",
              **common)
    @retry_transient
    def stored(context: dg.AssetExecutionContext, db: DatabaseResource, providers: ProvidersResource,
               frames: FramesResource) -> dg.MaterializeResult:
        start, end = partition_dates(context)
        chain, chunks = _plan(context, ds, provider, providers, frames)
        allow = context.run.tags.get(ALLOW_DELETES_TAG, "").lower() in ("1", "true", "yes")
        counts = {"inserted": 0, "updated": 0, "unchanged": 0, "deleted": 0, "quarantined": 0, "outbox_rows": 0,
                  "dead_lettered": 0}
        with db.connection() as conn:
            def prepare(chunk: Chunk) -> StoreInput:
                return prepare_store(chain, chunk, start, end, allow_deletes=allow)

            def commit(chunk: Chunk, ready: StoreInput) -> int:
                done = store_chunk(chain, chunk, conn, ready)
                for name, value in (("inserted", done.loaded.inserted), ("updated", done.loaded.updated),
                                    ("unchanged", done.loaded.unchanged), ("deleted", done.loaded.deleted),
                                    ("quarantined", done.quarantined), ("outbox_rows", done.queued),
                                    ("dead_lettered", done.dead_lettered)):
                    counts[name] += value
                return done.loaded.rows
            totals = run_pipelined("store", keys["stored"].to_user_string(), chunks, prepare, commit,
                                   reporter(context))
        return dg.MaterializeResult(metadata={**totals.metadata(), "dagster/row_count": totals.rows, **counts})

    return [raw, validated, normalized, stored]


def published_asset(provider: str, ds: Dataset, partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    """The last layer of `provider`'s `ds` chain: the range's outbox rows sent to the dataset's topic."""
    keys = chain_keys(provider, ds)
    common = _common(partitions)

    @dg.asset(key=keys["published"], group_name="published", deps=[keys["stored"]], kinds={"kafka"},
              metadata={"topic": ds.topic.name, **_layer_metadata(ds, "published", keys)},
              description=f"{provider} {ds.title} on topic {ds.topic.name}, one message per {ds.event_unit},"
                          " each confirmed by the broker.", **common)
    @retry_transient
    def published(context: dg.AssetExecutionContext, db: DatabaseResource,
                  kafka: KafkaResource) -> dg.MaterializeResult:
        start, end = partition_dates(context)
        topics = (ds.topic.name, DEAD_LETTER.name)
        ensure_topics(kafka.admin(), (ds.topic, DEAD_LETTER))
        with db.connection() as conn:
            # Sends the range's pending outbox rows; marks exactly the broker-confirmed ones published.
            report = drain(conn, kafka.bootstrap_servers, provider=provider, start=start, end=end, topics=topics,
                           on_batch=lambda r: context.log.info(f"{keys['published'].to_user_string()}: "
                                                               f"{r.total:,} messages confirmed"))
            messages = report.confirmed.get(ds.topic.name, 0)
            record_publication(conn, topic=ds.topic.name, provider=provider, start=start, end=end, messages=messages,
                               run_id=context.run.run_id)
        return dg.MaterializeResult(metadata={"messages": messages, "topic": ds.topic.name,
                                              "dead_lettered": report.confirmed.get(DEAD_LETTER.name, 0),
                                              "batches": report.batches})

    return published


def _plan(context: dg.AssetExecutionContext, ds: Dataset, provider: str, providers: ProvidersResource,
          frames: FramesResource) -> tuple[Chain, list[Chunk]]:
    """The chain of this run and the chunks of its session range."""
    start, end = partition_dates(context)
    universe = providers.universe()
    symbols = providers.symbols_for(provider) or (ALL_SYMBOLS,)
    chunks = plan_chunks(session_dates(start, end, universe.exchange_calendar), symbols,
                         ds.rows_per_symbol_session, period=session_slices(ds.table))
    chain = Chain(dataset=ds, provider=provider, run_id=context.run.run_id, frames=frames.store(),
                  calendar_name=universe.exchange_calendar, symbology=universe.symbology)
    return chain, chunks


def _session_window(summary: ValidationSummary) -> tuple[bool, dict[str, object], dict[str, dg.MetadataValue]]:
    """passed, JSON metrics and the UI tables of the `session_window` check."""
    flags = summary.flags_by_kind
    quarantined = sum(n for k, n in flags.items() if k in ("outside_window", "non_session"))
    metrics: dict[str, object] = {
        "rows_valid": summary.rows_valid,
        "quarantined": quarantined,  # held back: in quality.quarantine with the reason
        "flagged": sum(flags.values()) - quarantined,  # kept (and stored): extended hours are real trades
        "extended_hours": flags.get("extended_hours", 0),
        "by_kind": dict(sorted(summary.findings_by_kind.items())),
        "flags_by_kind": dict(sorted(flags.items())),
        "sessions_flagged": sorted(d.isoformat() for d in summary.sessions_flagged),
    }
    tables = {"findings": dg.MetadataValue.md(findings_markdown(summary.findings_sample)),
              "summary": dg.MetadataValue.md(counts_markdown(dict(sorted(summary.findings_by_kind.items()))))}
    return not summary.findings_by_kind, metrics, tables


def _layer_metadata(ds: Dataset, layer: str, keys: dict[str, dg.AssetKey]) -> dict[str, object]:
    """`dagster/column_schema` and `dagster/column_lineage` of one layer of the chain."""
    columns = layer_columns(ds)[layer]
    schema = dg.TableSchema(columns=[dg.TableColumn(name, type_, description=text or None)
                                     for name, (type_, text, _) in columns.items()])
    key = {**keys, "ref": REFERENCE_KEY}
    lineage = {name: [dg.TableColumnDep(asset_key=key[up], column_name=col) for up, col in deps]
               for name, (_, _, deps) in columns.items() if deps}
    meta: dict[str, object] = {"dagster/column_schema": schema}
    if lineage:
        meta["dagster/column_lineage"] = dg.TableColumnLineage(deps_by_column=lineage)
    return meta

