"""One-minute bar assets per provider: raw -> validated -> normalized -> md (partitioned by session).

The validated asset also checks each bar's place in time (`mdpipeline.quality.session_window`):
bars outside the run's sessions or on a day the exchange is closed are quarantined (hard), bars on a
session day outside the regular session (pre-market, after hours) are kept and flagged by the
`session_window` check (warn).
"""

from datetime import UTC, date, datetime

import dagster as dg
import polars as pl

from mdpipeline.normalize.bars import stamp
from mdpipeline.normalize.minute_bars import EXCHANGE_TIME_ZONES, normalize_bars_1m, with_session_date
from mdpipeline.orchestration.partitions import partition_dates
from mdpipeline.orchestration.resources import DatabaseResource, ProvidersResource
from mdpipeline.orchestration.steps import (
    Validated,
    conforms,
    raw_asset,
    validate_from_raw,
    validation_check_results,
    validation_check_specs,
)
from mdpipeline.quality.findings import ERROR, WARN, count_by_kind, empty_findings
from mdpipeline.quality.metrics import counts_markdown, findings_markdown
from mdpipeline.quality.schemas import NormalizedBars1m, StandardBars1m
from mdpipeline.quality.session_window import session_window
from mdpipeline.storage.loader import replace_range
from mdpipeline.storage.quarantine_store import record_check, replace_quarantine

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

    raw = raw_asset(provider, DATASET, partitions,
                    f"One-minute bars exactly as {provider} sent them, in raw.payloads.")

    @dg.asset(key=validated_key, group_name="validated", deps=[raw_key], io_manager_key="frames",
              kinds={"polars", "pandera"},
              description=f"{provider} minute bars parsed from raw (UTC bar starts); invalid rows quarantined.",
              check_specs=[*validation_check_specs(validated_key, "StandardBars1m"),
                           dg.AssetCheckSpec("session_window", asset=validated_key, description=SESSION_WINDOW)],
              **common)
    def validated(context: dg.AssetExecutionContext, db: DatabaseResource, providers: ProvidersResource):
        start, end = partition_dates(context)
        result = validate_from_raw(provider, DATASET, StandardBars1m, KEY, "session_date", start, end,
                                   context.run.run_id, validated_key, db, providers,
                                   prepare=lambda f: with_session_date(f, exchange_tz),
                                   screen=lambda f: session_window(f, start, end, calendar_name=calendar_name))
        yield dg.Output(result.outcome.valid, metadata={"rows": result.outcome.valid.height})
        yield from validation_check_results(result)
        passed, metrics, tables = _session_window_outcome(result)
        with db.connection() as conn:
            record_check(conn, asset_key=validated_key.to_user_string(), check_name="session_window", start=start,
                         end=end, passed=passed, severity="WARN", metadata=metrics, run_id=context.run.run_id)
        yield dg.AssetCheckResult(
            check_name="session_window", passed=passed, severity=dg.AssetCheckSeverity.WARN,
            metadata={**{k: dg.MetadataValue.json(v) if isinstance(v, dict | list) else v for k, v in metrics.items()},
                      **tables})

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


SESSION_WINDOW = ("Bars inside the run's sessions and the exchange's regular session: bars outside the partition"
                  " window or on a closed day are quarantined (outside_window, non_session); extended-hours bars"
                  " are kept and flagged (extended_hours). Warns when there is any.")


def _session_window_outcome(result: Validated) -> tuple[bool, dict[str, object], dict[str, dg.MetadataValue]]:
    """passed, JSON metrics and the UI tables (findings, counts) of the `session_window` check."""
    findings = result.findings if result.findings is not None else empty_findings()
    quarantined = findings.filter(pl.col("severity") == ERROR)
    flagged = findings.filter(pl.col("severity") == WARN)
    metrics: dict[str, object] = {
        "rows_valid": result.outcome.valid.height,
        "quarantined": quarantined.height,  # held back: in quality.quarantine with the reason
        "flagged": flagged.height,  # kept (and stored): extended hours are real trades
        "extended_hours": int((flagged["kind"] == "extended_hours").sum()),
        "by_kind": count_by_kind(findings),
        "flags_by_kind": count_by_kind(findings, (ERROR, WARN)),
        "sessions_flagged": sorted({_iso(d) for d in findings["session_date"].to_list()}),
    }
    tables = {"findings": dg.MetadataValue.md(findings_markdown(findings)),
              "summary": dg.MetadataValue.md(counts_markdown(count_by_kind(findings)))}
    return findings.is_empty(), metrics, tables


def _iso(day: date | None) -> str:
    return day.isoformat() if day is not None else ""
