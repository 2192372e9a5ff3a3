"""How the Dagster definitions are put together: every domain's `dg.Definitions` (`orchestration.domains`)
merged with the resources, which are bound once for all of them.

The code location (`orchestration.definitions`) builds them when it is imported; the CLI, the demo
and the tests build their own from here, so none of them pays for a second build.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from mdpipeline.orchestration.domains import Deployment, domain_definitions
from mdpipeline.orchestration.resources import DatabaseResource, FramesResource, KafkaResource, ProvidersResource
from mdpipeline.settings import Settings
from mdpipeline.universe import load_universe


def frames_dir() -> Path:
    """Where intermediate Parquet frames live: $MDP_FRAMES_DIR, else under DAGSTER_HOME or ./.mdpipeline."""
    if os.environ.get("MDP_FRAMES_DIR"):
        return Path(os.environ["MDP_FRAMES_DIR"])
    home = os.environ.get("DAGSTER_HOME")
    return Path(home, "frames") if home else Path.cwd() / ".mdpipeline" / "frames"


def resources(settings: Settings, symbols: list[str] | None = None) -> dict[str, dg.ConfigurableResource]:
    """The resources every domain uses, configured from `settings` (`symbols` narrows what raw assets fetch)."""
    return {
        "db": DatabaseResource(url=settings.database_url or dg.EnvVar("MDP_DATABASE_URL")),
        "kafka": KafkaResource(
            bootstrap_servers=settings.kafka_bootstrap_servers or dg.EnvVar("MDP_KAFKA_BOOTSTRAP_SERVERS")
        ),
        "providers": ProvidersResource(universe_path=str(settings.universe_path), files_dir=str(settings.files_dir),
                                       symbols=list(symbols or []), base_urls=dict(settings.base_urls)),
        "frames": FramesResource(base_dir=str(frames_dir())),
    }


def build_definitions(settings: Settings | None = None, symbols: list[str] | None = None) -> dg.Definitions:
    """Definitions for every provider enabled in the universe file (`symbols` narrows what raw assets fetch)."""
    settings = settings or Settings.from_env()
    deployment = Deployment.of(load_universe(settings.universe_path))
    return dg.Definitions.merge(*domain_definitions(deployment),
                                dg.Definitions(resources=resources(settings, symbols)))

