"""The Dagster code location: `dagster dev -w workspace.yaml` loads `defs` from here."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from mdpipeline.chain.datasets import datasets_in_order
from mdpipeline.orchestration.adjustment_assets import adjustment_assets
from mdpipeline.orchestration.chain import OWNERS, dataset_chain
from mdpipeline.orchestration.partitions import trading_day_partitions
from mdpipeline.orchestration.quality_checks import quality_checks
from mdpipeline.orchestration.quality_publish import quality_publish_assets
from mdpipeline.orchestration.realtime import (
    process_raw_range,
    raw_stream_follow_sensor,
    raw_stream_sensor,
    realtime_stream_job,
    realtime_ticks_job,
    stream_gap_repair_job,
    stream_gap_sensor,
)
from mdpipeline.orchestration.reference_assets import reference_data
from mdpipeline.orchestration.resources import DatabaseResource, FramesResource, KafkaResource, ProvidersResource
from mdpipeline.orchestration.retention import storage_retention, storage_retention_schedule
from mdpipeline.orchestration.rollup_assets import ROLLUPS_KEY, rollup_asset
from mdpipeline.orchestration.run_limits import max_runtime_tags
from mdpipeline.orchestration.schedules import session_schedules
from mdpipeline.orchestration.sensors import freshness_sensors
from mdpipeline.providers.catalog import datasets_of
from mdpipeline.settings import Settings
from mdpipeline.universe import load_universe


def frames_dir() -> Path:
    """Where intermediate Parquet frames live: $MDP_FRAMES_DIR, else under DAGSTER_HOME or ./.mdpipeline."""
    if os.environ.get("MDP_FRAMES_DIR"):
        return Path(os.environ["MDP_FRAMES_DIR"])
    home = os.environ.get("DAGSTER_HOME")
    return Path(home, "frames") if home else Path.cwd() / ".mdpipeline" / "frames"


def build_definitions(settings: Settings | None = None, symbols: list[str] | None = None) -> dg.Definitions:
    """Definitions for every provider enabled in the universe file (`symbols` narrows what raw assets fetch)."""
    settings = settings or Settings.from_env()
    universe = load_universe(settings.universe_path)
    partitions = trading_day_partitions(universe.exchange_calendar)
    enabled = [name for name, setup in universe.providers.items() if setup.enabled]
    assets: list[dg.AssetsDefinition] = [reference_data]
    action_keys: list[dg.AssetKey] = []
    minute_keys: list[dg.AssetKey] = []
    minute_providers: set[str] = set()
    for provider in enabled:
        for ds in datasets_in_order(datasets_of(provider)):
            assets += dataset_chain(provider, ds, partitions)
            if ds.name == "corporate_actions":
                action_keys.append(dg.AssetKey(list(ds.stored_key(provider))))
            if ds.name == "bars_1m":
                minute_keys.append(dg.AssetKey(list(ds.stored_key(provider))))
                minute_providers.add(provider)
    bar_keys = [dg.AssetKey(["md", provider, "bars_1d"]) for provider in enabled]
    assets += adjustment_assets(action_keys, bar_keys)
    if minute_keys:
        assets.append(rollup_asset(minute_keys, partitions, OWNERS))
    for provider in enabled:  # soft data-quality checks (warn): completeness, staleness, outliers, divergence
        assets += quality_checks(provider, partitions, other_providers=enabled, after=action_keys)
        assets += quality_publish_assets(provider, partitions, other_providers=enabled, after=action_keys)
    jobs = [
        dg.define_asset_job(
            f"bars_1d_{provider}", selection=dg.AssetSelection.groups("raw", "validated", "normalized", "md",
                                                                        "published")
            & dg.AssetSelection.key_prefixes(["raw", provider], ["validated", provider], ["normalized", provider],
                                            ["md", provider], ["published", provider])
            | (dg.AssetSelection.assets(ROLLUPS_KEY) if provider in minute_providers else dg.AssetSelection.assets()),
            partitions_def=partitions,
            description=f"Daily bars of {provider} through all steps.",
            tags=max_runtime_tags("PROVIDER"),
        )
        for provider in enabled
    ]
    return dg.Definitions(
        assets=[*assets, process_raw_range],
        jobs=[*jobs, realtime_ticks_job, realtime_stream_job, stream_gap_repair_job, storage_retention],
        schedules=[*session_schedules(jobs, universe.exchange_calendar), storage_retention_schedule],
        sensors=[*freshness_sensors(jobs, universe.exchange_calendar), raw_stream_sensor(),
                 raw_stream_follow_sensor(), stream_gap_sensor()],
        resources={
            "db": DatabaseResource(url=settings.database_url or dg.EnvVar("MDP_DATABASE_URL")),
            "kafka": KafkaResource(
                bootstrap_servers=settings.kafka_bootstrap_servers or dg.EnvVar("MDP_KAFKA_BOOTSTRAP_SERVERS")
            ),
            "providers": ProvidersResource(universe_path=str(settings.universe_path),
                                           files_dir=str(settings.files_dir), symbols=list(symbols or []),
                                           base_urls=dict(settings.base_urls)),
            "frames": FramesResource(base_dir=str(frames_dir())),
        },
    )


defs = build_definitions()
