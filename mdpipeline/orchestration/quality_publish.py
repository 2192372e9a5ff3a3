"""`published/<provider>/quality`: a provider's per-partition quality metrics on `md.quality.v1`.

One message per (provider, dataset, run range), sent after the range's bars are stored. The metrics
are measured from the database (`mdpipeline.quality.measure`: the same detectors and numbers as the
`quality_metrics` and `divergence` checks) rather than read back from `quality.check_results`:
Dagster does not order an asset after asset checks of its upstream assets, so in a run the checks
may not have written their rows yet; measuring stored data is always complete and deterministic
(same stored data, same metrics, same `event_id`). Each message is confirmed by the broker.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl

from mdpipeline.distribute.events import lineage_headers
from mdpipeline.distribute.publisher import PublishError, send
from mdpipeline.distribute.quality_events import QualityEvent, quality_event
from mdpipeline.distribute.relay import EVENT_ID_HEADER
from mdpipeline.distribute.topics import QUALITY, ensure_topics
from mdpipeline.orchestration.partitions import partition_dates
from mdpipeline.orchestration.resources import DatabaseResource, KafkaResource, ProvidersResource
from mdpipeline.orchestration.retries import retry_transient
from mdpipeline.providers.catalog import datasets_of
from mdpipeline.quality.measure import BAR_DATASETS, measure_stored
from mdpipeline.quality.thresholds import load_thresholds


def bar_datasets(provider: str) -> tuple[str, ...]:
    """The bar datasets `provider` serves (those with stored bars to measure)."""
    return tuple(d for d in BAR_DATASETS if d in datasets_of(provider))


def quality_publish_assets(
    provider: str,
    partitions: dg.PartitionsDefinition,
    *,
    other_providers: Sequence[str] = (),
    after: Sequence[dg.AssetKey] = (),
    config_path: Path | None = None,
) -> list[dg.AssetsDefinition]:
    """The asset publishing `provider`'s quality metrics, one message per bar dataset it serves.

    It runs after `md/<provider>/<dataset>`; `other_providers`: also after their stored bars (the
    divergence statistics compare with them); `after`: further assets to wait for (the
    corporate-actions assets, so a split's ex-date is explained as in the checks); `config_path`:
    thresholds file (default `MDP_QUALITY_CONFIG` or config/quality.yaml).
    """
    datasets = bar_datasets(provider)
    deps = [dg.AssetKey(["md", provider, d]) for d in datasets]
    deps += [dg.AssetKey(["md", other, d]) for other in other_providers if other != provider
             for d in bar_datasets(other) if d in datasets]
    deps += [k for k in after if k not in deps]

    @dg.asset(
        key=dg.AssetKey(["published", provider, "quality"]), group_name="published", deps=deps, kinds={"kafka"},
        partitions_def=partitions, backfill_policy=dg.BackfillPolicy.single_run(),
        owners=["team:market-data"], metadata={"topic": QUALITY.name, "datasets": list(datasets)},
        description=f"{provider}'s per-partition quality metrics ({', '.join(datasets)}: completeness %, rows"
                    f" quarantined by check, flags by kind, divergence) on {QUALITY.name}, broker-confirmed.",
    )
    @retry_transient
    def quality(context: dg.AssetExecutionContext, db: DatabaseResource, kafka: KafkaResource,
                providers: ProvidersResource) -> dg.MaterializeResult:
        start, end = partition_dates(context)
        universe = providers.universe()
        served = universe.symbology.filter(pl.col("symbol").is_in(list(providers.symbols_for(provider)))).select(
            "symbol", "valid_from", "valid_to")
        with db.connection() as conn:
            measured = {d: measure_stored(conn, provider=provider, dataset=d, start=start, end=end,
                                          thresholds=load_thresholds(provider, d, config_path), instruments=served,
                                          calendar_name=universe.exchange_calendar, others=list(other_providers))
                        for d in datasets}
        events = [quality_event(provider, d, start, end, m) for d, m in measured.items()]
        ensure_topics(kafka.admin(), (QUALITY,))
        confirmed = _send(kafka, events, lineage_headers(context.run.run_id, start, end, provider))
        return dg.MaterializeResult(metadata={
            "messages": confirmed, "topic": QUALITY.name,
            "event_ids": dg.MetadataValue.json({d: e.event_id for d, e in zip(measured, events, strict=True)}),
            "metrics": dg.MetadataValue.md(_table(measured)),
        })

    return [quality]


def _send(kafka: KafkaResource, events: list[QualityEvent], headers: dict[str, str]) -> int:
    """Send the events and wait for the broker's acknowledgement of each; raises unless all are confirmed."""
    if not events:
        return 0
    common = [(k, v.encode()) for k, v in headers.items()]
    delivery = send(kafka.producer(), QUALITY.name, [e.key for e in events], [e.value for e in events],
                    [[*common, (EVENT_ID_HEADER, e.event_id.encode())] for e in events])
    if delivery.confirmed != len(events):
        raise PublishError(delivery.summary())
    return delivery.confirmed


def _table(measured: dict[str, dict[str, Any]]) -> str:
    """The published metrics of each dataset as one markdown table for the UI."""
    lines = ["| dataset | rows | completeness % | missing | quarantined | flags | divergence flagged |",
             "|---|---:|---:|---:|---:|---|---:|"]
    for dataset, m in measured.items():
        flags = ", ".join(f"{k} {v}" for k, v in m.get("flags_by_kind", {}).items()) or "none"
        lines.append(f"| {dataset} | {m['rows']} | {m.get('completeness_pct', '')} | {m.get('missing', '')} |"
                     f" {m.get('rows_quarantined', 0)} | {flags} | {m.get('divergence', {}).get('pairs_flagged', 0)} |")
    return "\n".join(lines)
