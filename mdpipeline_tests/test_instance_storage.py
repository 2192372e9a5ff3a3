"""The event log storage of the local instance writes what Dagster's stock PostgreSQL storage writes.

`PooledPostgresEventLogStorage` stores a ranged run's materialization batches and its planned check
rows its own way (one compiled statement over the rows). The same ranged run on the stock class and
on ours, each in a database of its own, must leave the same events, partitions, tags, asset records
and check executions.
"""

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
import yaml
from dagster_postgres.event_log import PostgresEventLogStorage
from psycopg import sql as psql

from mdpipeline.orchestration.instance_storage import PooledPostgresEventLogStorage

SESSIONS = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-04-01")
FIRST, LAST = "2024-01-02", "2024-03-28"
RANGE_TAGS = {"dagster/asset_partition_range_start": FIRST, "dagster/asset_partition_range_end": LAST}


@dg.asset(partitions_def=SESSIONS, backfill_policy=dg.BackfillPolicy.single_run())
def upstream(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """A ranged step that reports its range once, as the dataset chain does."""
    return dg.MaterializeResult(metadata={"sessions": len(context.partition_keys)})


@dg.asset(partitions_def=SESSIONS, backfill_policy=dg.BackfillPolicy.single_run(), deps=[upstream],
          check_specs=[dg.AssetCheckSpec("rows_ok", asset="downstream"),
                       dg.AssetCheckSpec("schema_ok", asset="downstream")])
def downstream(context: dg.AssetExecutionContext) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """A ranged step with two checks, planned for every session of the range."""
    yield dg.MaterializeResult(metadata={"first": context.partition_keys[0]})
    yield dg.AssetCheckResult(check_name="rows_ok", passed=True)
    yield dg.AssetCheckResult(check_name="schema_ok", passed=False, severity=dg.AssetCheckSeverity.WARN)


def _instance(url: str, storage: type[PostgresEventLogStorage]) -> dg.DagsterInstance:
    """An instance configured as `dagster.yaml` configures one: runs and events in the database at url,
    events through `storage`."""
    home = Path(tempfile.mkdtemp(prefix="mdp-dagster-"))
    config = {"postgres_url": url}
    (home / "dagster.yaml").write_text(yaml.safe_dump({
        "run_storage": {"module": "dagster_postgres.run_storage", "class": "PostgresRunStorage", "config": config},
        "event_log_storage": {"module": storage.__module__, "class": storage.__name__, "config": config},
        "schedule_storage": {"module": "dagster_postgres.schedule_storage", "class": "PostgresScheduleStorage",
                             "config": config},
        "telemetry": {"enabled": False},
    }))
    return dg.DagsterInstance.from_config(str(home))


@pytest.fixture
def databases(pg_server_url: str) -> Iterator[tuple[str, str]]:
    """Two empty databases: (psycopg url, SQLAlchemy url) each."""
    names = [f"dagster_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    base = pg_server_url.rsplit("/", 1)[0]
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        for name in names:
            admin.execute(psql.SQL("create database {}").format(psql.Identifier(name)))
    yield tuple(f"{base}/{name}" for name in names)  # type: ignore[misc]
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        for name in names:
            admin.execute(psql.SQL("drop database {} with (force)").format(psql.Identifier(name)))


def _latest(instance: dg.DagsterInstance, url: str) -> list[tuple[str, str, str]]:
    """Per asset, the partition of the event its asset record calls the latest, and of the row stored
    under that record's id."""
    found = []
    for record in instance.get_asset_records([upstream.key, downstream.key]):
        latest = record.asset_entry.last_materialization_record
        assert latest is not None
        with psycopg.connect(url) as conn:
            row = conn.execute("select partition from event_logs where id = %s", (latest.storage_id,)).fetchone()
        assert row is not None
        (partition,) = row
        found.append((record.asset_entry.asset_key.to_user_string(), latest.partition_key, partition))
    return sorted(found)


def _stored(url: str) -> dict[str, Any]:
    """What a run left in Dagster's tables, free of ids and times."""
    with psycopg.connect(url) as conn:
        events = conn.execute("select dagster_event_type, asset_key, partition, step_key, count(*)"
                              " from event_logs where dagster_event_type is not null"
                              " group by 1, 2, 3, 4 order by 1, 2, 3, 4").fetchall()
        # Each tag row belongs to a materialization of its own asset; a pointer tag is compared by the
        # event it names, a data version (derived from the run's id) by being there.
        tags = conn.execute("select t.asset_key, e.partition, t.key, case when t.key like '%event_pointer%'"
                            " then (select p.asset_key || p.partition from event_logs p where p.id = t.value::bigint)"
                            " else (t.value <> '')::text end from asset_event_tags t"
                            " join event_logs e on e.id = t.event_id and e.asset_key = t.asset_key"
                            " order by 1, 2, 3").fetchall()
        loose_tags = conn.execute("select count(*) from asset_event_tags t left join event_logs e on e.id = t.event_id"
                                  " and e.asset_key = t.asset_key where e.id is null").fetchone()
        checks = conn.execute("select asset_key, check_name, partition, execution_status, count(*)"
                              " from asset_check_executions group by 1, 2, 3, 4 order by 1, 2, 3, 4").fetchall()
        planned_events = conn.execute("select count(distinct evaluation_event) from asset_check_executions"
                                      " where execution_status = 'PLANNED'").fetchone()
    return {"events": events, "tags": tags, "loose_tags": loose_tags, "checks": checks,
            "planned_events": planned_events}


def test_a_ranged_run_leaves_the_same_rows_as_the_stock_storage(
    databases: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "1000")  # as `mdpipeline dev up` configures it
    monkeypatch.setenv("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", "1")
    results: dict[type, dict[str, Any]] = {}
    partitions: dict[type, set[str]] = {}
    for storage, url in zip((PostgresEventLogStorage, PooledPostgresEventLogStorage), databases, strict=True):
        instance = _instance(url.replace("postgresql://", "postgresql+psycopg2://"), storage)
        try:
            assert type(instance.event_log_storage) is storage
            run = dg.materialize([upstream, downstream], instance=instance, tags=RANGE_TAGS)
            assert run.success
            partitions[storage] = set(instance.get_materialized_partitions(downstream.key))
            results[storage] = {**_stored(url), "latest": _latest(instance, url)}
        finally:
            instance.dispose()

    sessions = {k for k in SESSIONS.get_partition_keys() if FIRST <= k <= LAST}
    assert partitions[PooledPostgresEventLogStorage] == partitions[PostgresEventLogStorage] == sessions
    ours, stock = results[PooledPostgresEventLogStorage], results[PostgresEventLogStorage]
    assert ours == stock
    # What is compared is not empty: a materialization and a tag per asset and session, the asset rows
    # pointing at the range's last session, and a planned row per check and session.
    materialized = [row for row in ours["events"] if row[0] == "ASSET_MATERIALIZATION"]
    assert sorted((row[1], row[2]) for row in materialized) == sorted(
        (f'["{name}"]', key) for name in ("downstream", "upstream") for key in sessions)
    assert len(ours["tags"]) >= 2 * len(sessions)
    assert ours["loose_tags"] == (0,)
    assert ours["latest"] == [("downstream", LAST, LAST), ("upstream", LAST, LAST)]
    planned = [row for row in ours["checks"] if row[3] == "PLANNED"]
    assert sorted((row[1], row[2]) for row in planned) == sorted(
        (name, key) for name in ("rows_ok", "schema_ok") for key in sessions)
    assert ours["planned_events"] == (2,)
