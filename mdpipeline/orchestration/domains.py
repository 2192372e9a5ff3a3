"""The code location by domain: one `dg.Definitions` per domain, merged by `definitions.build_definitions`.

- ingest: every enabled provider's dataset chains (raw -> validated -> normalized -> stored), the
  minute-bar roll-ups, the daily job per provider with its after-close schedule and freshness sensor;
- reference: the instrument master and the adjustment factors and adjusted bars;
- quality: the soft data-quality checks of each provider's stored daily bars;
- distribution: the published assets (each dataset's topic, and the quality metrics);
- realtime: the tick stream's jobs and sensors;
- storage: the retention job and its schedule.

Resources are bound once, at the top. Every domain is built for one `Deployment`: the universe's
enabled providers and the trading-day partitions of its exchange calendar.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import dagster as dg

from mdpipeline.chain.datasets import Dataset, datasets_in_order
from mdpipeline.orchestration.adjustment_assets import adjustment_assets
from mdpipeline.orchestration.chain import OWNERS, dataset_chain, published_asset
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
from mdpipeline.orchestration.retention import storage_retention, storage_retention_schedule
from mdpipeline.orchestration.rollup_assets import ROLLUPS_KEY, rollup_asset
from mdpipeline.orchestration.run_limits import max_runtime_tags
from mdpipeline.orchestration.schedules import AssetJob, session_schedules
from mdpipeline.orchestration.sensors import freshness_sensors
from mdpipeline.providers.catalog import datasets_of
from mdpipeline.universe import Universe

# The asset groups a provider's daily job runs, each restricted to that provider's keys.
DAILY_GROUPS = ("raw", "validated", "normalized", "md", "published")


@dataclass(frozen=True)
class Deployment:
    """What every domain is built for: the enabled providers and the exchange's trading-day partitions."""

    universe: Universe
    providers: tuple[str, ...]
    partitions: dg.TimeWindowPartitionsDefinition

    @classmethod
    def of(cls, universe: Universe) -> "Deployment":
        """The providers enabled in `universe`, partitioned by its exchange calendar."""
        enabled = tuple(name for name, setup in universe.providers.items() if setup.enabled)
        return cls(universe=universe, providers=enabled,
                   partitions=trading_day_partitions(universe.exchange_calendar))

    @property
    def calendar_name(self) -> str:
        """The exchange calendar of the universe."""
        return self.universe.exchange_calendar

    def chains(self) -> list[tuple[str, Dataset]]:
        """(provider, dataset) of every chain, providers in universe order, datasets in canonical order."""
        return [(p, ds) for p in self.providers for ds in datasets_in_order(datasets_of(p))]

    def stored_keys(self, dataset: str) -> list[dg.AssetKey]:
        """The stored-layer asset keys of `dataset`, one per provider serving it."""
        return [dg.AssetKey(list(ds.stored_key(p))) for p, ds in self.chains() if ds.name == dataset]


def daily_jobs(deployment: Deployment) -> list[AssetJob]:
    """One job per provider: its whole chain of every dataset, published, and the roll-ups of its minute bars."""
    minute_providers = {p for p, ds in deployment.chains() if ds.name == "bars_1m"}
    return [
        dg.define_asset_job(
            f"bars_1d_{provider}",
            selection=dg.AssetSelection.groups(*DAILY_GROUPS)
            & dg.AssetSelection.key_prefixes(*([group, provider] for group in DAILY_GROUPS))
            | (dg.AssetSelection.assets(ROLLUPS_KEY) if provider in minute_providers else dg.AssetSelection.assets()),
            partitions_def=deployment.partitions,
            description=f"Daily bars of {provider} through all steps.",
            tags=max_runtime_tags("PROVIDER"),
        )
        for provider in deployment.providers
    ]


def ingest_definitions(deployment: Deployment) -> dg.Definitions:
    """Dataset chains up to the stored layer, roll-ups, and the daily jobs with their schedules and sensors."""
    assets: list[dg.AssetsDefinition] = [a for p, ds in deployment.chains()
                                         for a in dataset_chain(p, ds, deployment.partitions)]
    minute_keys = deployment.stored_keys("bars_1m")
    if minute_keys:
        assets.append(rollup_asset(minute_keys, deployment.partitions, OWNERS))
    jobs = daily_jobs(deployment)
    return dg.Definitions(assets=assets, jobs=jobs,
                          schedules=session_schedules(jobs, deployment.calendar_name),
                          sensors=freshness_sensors(jobs, deployment.calendar_name))


def reference_definitions(deployment: Deployment) -> dg.Definitions:
    """The instrument master, and the adjustment factors and adjusted bars from every provider's actions."""
    action_keys = deployment.stored_keys("corporate_actions")
    bar_keys = [dg.AssetKey(["md", provider, "bars_1d"]) for provider in deployment.providers]
    return dg.Definitions(assets=[reference_data, *adjustment_assets(action_keys, bar_keys)])


def quality_definitions(deployment: Deployment) -> dg.Definitions:
    """The soft (warn) checks of each provider's stored daily bars: completeness, staleness, outliers, divergence."""
    after = deployment.stored_keys("corporate_actions")
    # In `assets` (an AssetChecksDefinition is an AssetsDefinition): what `runner.materialize_range` hands to Dagster.
    return dg.Definitions(assets=[
        check for provider in deployment.providers
        for check in quality_checks(provider, deployment.partitions, other_providers=deployment.providers,
                                    after=after)])


def distribution_definitions(deployment: Deployment) -> dg.Definitions:
    """Each chain's published asset, and each provider's quality metrics on md.quality.v1."""
    after = deployment.stored_keys("corporate_actions")
    published = [published_asset(p, ds, deployment.partitions) for p, ds in deployment.chains()]
    quality = [a for provider in deployment.providers
               for a in quality_publish_assets(provider, deployment.partitions,
                                               other_providers=deployment.providers, after=after)]
    return dg.Definitions(assets=[*published, *quality])


def realtime_definitions() -> dg.Definitions:
    """The real-time feed: the asset a raw offset range materializes (with its lag check), the per-range job and
    the long-running follower (each launched by its sensor; turn one on), and gap repair."""
    return dg.Definitions(assets=[process_raw_range],
                          jobs=[realtime_ticks_job, realtime_stream_job, stream_gap_repair_job],
                          sensors=[raw_stream_sensor(), raw_stream_follow_sensor(), stream_gap_sensor()])


def storage_definitions() -> dg.Definitions:
    """Retention by config/storage.yaml."""
    return dg.Definitions(jobs=[storage_retention], schedules=[storage_retention_schedule])


def domain_definitions(deployment: Deployment) -> Sequence[dg.Definitions]:
    """Every domain's definitions, in the order they are merged."""
    return (ingest_definitions(deployment), reference_definitions(deployment), quality_definitions(deployment),
            distribution_definitions(deployment), realtime_definitions(), storage_definitions())
