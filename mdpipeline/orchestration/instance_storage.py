"""Dagster's event log in PostgreSQL with a small connection pool.

dagster-postgres opens a new connection for every event it stores (its engine uses no pool), which
costs about 5 ms per event; a single-run backfill of a year stores a planned event and a
materialization per asset and session, so that alone took minutes. This storage is the same class
with a pooled engine (one connection kept, a few more on demand), configured in `dagster.yaml` like
any storage class. With `DAGSTER_EVENT_BATCH_SIZE` set, Dagster also writes a ranged run's
materializations in batches.

Two writes are also cheaper here, with the same rows as the stock class: a batch of materializations
(one per asset and session of a ranged run) is inserted as one compiled statement executed over the
rows, where the stock class compiles a multi-row VALUES statement of every row's parameters; and a
check planned over a range of sessions stores one execution row per session with the planned event
serialized once, not once per row. Both costs grew with the number of sessions a run covers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from dagster import DagsterEventType, EventLogEntry
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable, SqlEventLogStorageTable
from dagster._serdes import serialize_value
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

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """A batch of materializations as one statement executed over its rows; any other batch as
        the stock class stores it."""
        kinds = {event.get_dagster_event().event_type for event in events}
        if kinds != {DagsterEventType.ASSET_MATERIALIZATION}:
            super().store_event_batch(events)
            return
        rows = [self._event_to_row(event) for event in events]
        insert = SqlEventLogStorageTable.insert().returning(SqlEventLogStorageTable.c.id,
                                                            sort_by_parameter_order=True)
        with self._connect() as conn:
            event_ids = [int(row[0]) for row in conn.execute(insert, rows)]
        with self.index_transaction() as conn:
            self._store_asset_event_tags(conn, events, event_ids)
            self._store_asset_event(conn, events[-1], event_ids[-1])  # the asset row keeps the latest

    def _store_asset_check_evaluation_planned(self, event: EventLogEntry, event_id: int | None) -> None:
        """One planned execution row per partition of the check's range, the event serialized once."""
        planned = cast(Any, event.get_dagster_event().event_specific_data)
        partitions = planned.partitions_subset.get_partition_keys() if planned.partitions_subset else [None]
        row = {"asset_key": planned.asset_key.to_string(), "check_name": planned.check_name,
               "run_id": event.run_id, "execution_status": AssetCheckExecutionRecordStatus.PLANNED.value,
               "evaluation_event": serialize_value(event),
               "evaluation_event_timestamp": self._event_insert_timestamp(event),
               "evaluation_event_storage_id": event_id}
        with self.index_connection() as conn:
            conn.execute(AssetCheckExecutionsTable.insert(), [{**row, "partition": key} for key in partitions])
