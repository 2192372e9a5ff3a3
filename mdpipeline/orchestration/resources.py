"""Dagster resources: the database, the broker, and the providers built from the universe file (their
request limits held in the database, for every process).

Each hands out clients (a connection, a producer or admin client, a provider); Dagster gives every run
its own copy, so what a resource reads (the universe file, the environment) is read once per run.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from pydantic import PrivateAttr

from mdpipeline.distribute.publisher import make_producer
from mdpipeline.providers import build_provider
from mdpipeline.providers.base import Provider
from mdpipeline.settings import DEFAULT_FILES_DIR, DEFAULT_UNIVERSE, Settings
from mdpipeline.storage.database import connect
from mdpipeline.storage.frames import FrameStore
from mdpipeline.storage.provider_limits import QuotaStore, quota_store
from mdpipeline.universe import Universe, load_universe


class DatabaseResource(dg.ConfigurableResource):
    """The market-data database (TimescaleDB or PostgreSQL)."""

    url: str

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """An autocommit connection in UTC; use `conn.transaction()` for atomic work."""
        conn = connect(self.url)
        try:
            yield conn
        finally:
            conn.close()


class KafkaResource(dg.ConfigurableResource):
    """The Kafka (or Kafka-protocol) cluster events are published to."""

    bootstrap_servers: str

    def producer(self, config: dict[str, Any] | None = None) -> Producer:
        """An idempotent producer (`distribute.publisher` defaults, updated with `config`)."""
        return make_producer(self.bootstrap_servers, config)

    def admin(self) -> AdminClient:
        """An admin client, e.g. to list or create topics."""
        return AdminClient({"bootstrap.servers": self.bootstrap_servers})


class FramesResource(dg.ConfigurableResource):
    """Where intermediate frames (validated, normalized) live, as Parquet chunk files."""

    base_dir: str

    def store(self) -> FrameStore:
        """The frame store under `base_dir`."""
        return FrameStore(self.base_dir)


class ProvidersResource(dg.ConfigurableResource):
    """Builds providers from the checked-in universe file and the environment."""

    universe_path: str = str(DEFAULT_UNIVERSE)
    files_dir: str = str(DEFAULT_FILES_DIR)
    symbols: list[str] = []
    base_urls: dict[str, str] = {}  # provider -> base URL; overrides MDP_<PROVIDER>_BASE_URL
    _universe: Universe | None = PrivateAttr(default=None)
    _settings: Settings | None = PrivateAttr(default=None)

    def symbols_for(self, name: str) -> tuple[str, ...]:
        """Symbols `name` is asked for: the override when given (kept to those it serves), else its universe list."""
        configured = self.universe().provider(name).symbols
        if not self.symbols:
            return configured
        return tuple(s for s in self.symbols if s in configured)

    def universe(self) -> Universe:
        """The parsed universe file (read once per run)."""
        if self._universe is None:
            self._universe = load_universe(Path(self.universe_path))
        return self._universe

    def settings(self) -> Settings:
        """The environment's settings with this resource's universe, files directory and base URLs (read once)."""
        if self._settings is None:
            env = Settings.from_env()
            self._settings = Settings(
                database_url=env.database_url,
                kafka_bootstrap_servers=env.kafka_bootstrap_servers,
                universe_path=Path(self.universe_path),
                files_dir=Path(self.files_dir),
                base_urls={**env.base_urls, **self.base_urls},
            )
        return self._settings

    def limits_store(self) -> QuotaStore | None:
        """Where the providers' request limits are held for every process and run: the database of
        `MDP_DATABASE_URL` (`ops.provider_quota`, `ops.provider_rate`); None (this process) without one."""
        url = self.settings().database_url
        return quota_store(url) if url else None

    def provider(self, name: str) -> Provider:
        """The provider `name`, configured from the universe file and environment, its request limits
        shared through the database when there is one."""
        return build_provider(name, self.universe(), self.settings(), limits_store=self.limits_store())
