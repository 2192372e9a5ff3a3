"""Dagster's event log in PostgreSQL with a small connection pool.

dagster-postgres opens a new connection for every event it stores (its engine uses no pool), which
costs about 5 ms per event; a single-run backfill of a year stores a planned event and a
materialization per asset and session, so that alone took minutes. This storage is the same class
with a pooled engine (one connection kept, a few more on demand), configured in `dagster.yaml` like
any storage class. With `DAGSTER_EVENT_BATCH_SIZE` set, Dagster also writes a ranged run's
materializations in batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dagster_postgres.event_log import PostgresEventLogStorage
from dagster_postgres.utils import create_pg_engine, pg_url_from_config

POOL_SIZE = 1
MAX_OVERFLOW = 4
POOL_RECYCLE_SECONDS = 3600


class PooledPostgresEventLogStorage(PostgresEventLogStorage):
    """`PostgresEventLogStorage` whose engine keeps connections in a pool."""

    def __init__(self, postgres_url: str, should_autocreate_tables: bool = True,
                 inst_data: Any = None) -> None:
        super().__init__(postgres_url, should_autocreate_tables=should_autocreate_tables, inst_data=inst_data)
        self._engine = create_pg_engine(self.postgres_url, None, isolation_level="AUTOCOMMIT",
                                        pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW,
                                        pool_recycle=POOL_RECYCLE_SECONDS, pool_pre_ping=True)

    @classmethod
    def from_config_value(cls, inst_data: Any,
                          config_value: Mapping[str, Any]) -> PooledPostgresEventLogStorage:
        """Built from the same config as `PostgresEventLogStorage` (postgres_url or postgres_db)."""
        return cls(postgres_url=pg_url_from_config(config_value),
                   should_autocreate_tables=config_value.get("should_autocreate_tables", True),
                   inst_data=inst_data)
