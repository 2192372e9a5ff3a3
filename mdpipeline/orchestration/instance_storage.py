"""Dagster's event log in PostgreSQL with a small connection pool.

dagster-postgres opens a new connection for every event it stores (its engine uses no pool), which
costs about 5 ms per event; a single-run backfill of a year stores a planned event and a
materialization per asset and session, so that alone took minutes. This storage is the same class
with a pooled engine (one connection kept, a few more on demand), configured in `dagster.yaml` like
any storage class. With `DAGSTER_EVENT_BATCH_SIZE` set, Dagster also writes a ranged run's
materializations in batches.

Two writes are also cheaper here, with the same rows as the stock class: a batch of materializations
(one per asset and session of a ranged run) is inserted by one statement taking a column of values
each, where the stock class has SQLAlchemy compile a multi-row VALUES statement of every row's
parameters in Python; and a check planned over a range of sessions stores one execution row per
session with the planned event serialized once, not once per row. Both costs grew with the number of
sessions a run covers. Dagster's tables are named here by their SQL names (its schema module is
private); `test_instance_storage.py` compares what both classes store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import sqlalchemy as sa
from dagster import DagsterEventType, EventLogEntry, serialize_value
from dagster_postgres.event_log import PostgresEventLogStorage
from dagster_postgres.utils import create_pg_engine, pg_url_from_config

POOL_SIZE = 1
MAX_OVERFLOW = 4
POOL_RECYCLE_SECONDS = 3600

# Rows of Dagster's event log in the order given: the sequence hands out ids in the SELECT's order,
# so the returned ids, sorted, belong to the rows in order (as SQLAlchemy's own ordered bulk insert
# relies on for PostgreSQL).
_INSERT_EVENTS = sa.text(
    "insert into event_logs (run_id, event, dagster_event_type, timestamp, step_key, asset_key, partition)"
    " select r.run_id, r.event, r.kind, r.ts, r.step_key, r.asset_key, r.part from unnest("
    "cast(:run_id as text[]), cast(:event as text[]), cast(:kind as text[]), cast(:ts as timestamp[]),"
    " cast(:step_key as text[]), cast(:asset_key as text[]), cast(:part as text[]))"
    " with ordinality as r(run_id, event, kind, ts, step_key, asset_key, part, n) order by r.n returning id")
# Dagster's table of check executions, the columns a planned row sets.
_CHECK_EXECUTIONS = sa.table(
    "asset_check_executions", *(sa.column(name) for name in (
        "asset_key", "check_name", "partition", "run_id", "execution_status", "evaluation_event",
        "evaluation_event_timestamp", "evaluation_event_storage_id")))
_PLANNED = "PLANNED"  # AssetCheckExecutionRecordStatus.PLANNED


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
        """A batch of materializations by one statement taking a column of values each; any other batch as
        the stock class stores it."""
        kinds = {event.get_dagster_event().event_type for event in events}
        if kinds != {DagsterEventType.ASSET_MATERIALIZATION}:
            super().store_event_batch(events)
            return
        rows = [self._event_to_row(event) for event in events]
        columns = {"run_id": "run_id", "event": "event", "kind": "dagster_event_type", "ts": "timestamp",
                   "step_key": "step_key", "asset_key": "asset_key", "part": "partition"}
        with self._connect() as conn:
            returned = conn.execute(_INSERT_EVENTS, {name: [row[column] for row in rows]
                                                     for name, column in columns.items()})
            event_ids = sorted(int(row[0]) for row in returned)
        with self.index_transaction() as conn:
            self._store_asset_event_tags(conn, events, event_ids)
            self._store_asset_event(conn, events[-1], event_ids[-1])  # the asset row keeps the latest

    def _store_asset_check_evaluation_planned(self, event: EventLogEntry, event_id: int | None) -> None:
        """One planned execution row per partition of the check's range, the event serialized once."""
        planned = cast(Any, event.get_dagster_event().event_specific_data)
        partitions = planned.partitions_subset.get_partition_keys() if planned.partitions_subset else [None]
        row = {"asset_key": planned.asset_key.to_string(), "check_name": planned.check_name,
               "run_id": event.run_id, "execution_status": _PLANNED,
               "evaluation_event": serialize_value(event),
               "evaluation_event_timestamp": self._event_insert_timestamp(event),
               "evaluation_event_storage_id": event_id}
        with self.index_connection() as conn:
            conn.execute(_CHECK_EXECUTIONS.insert(), [{**row, "partition": key} for key in partitions])
