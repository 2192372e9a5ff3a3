"""The storage configuration applied to a database: roll-ups, compression, retention and expiry.

`apply_storage_config` runs at the end of every `migrate`, inside its transaction, and makes the
database match the configuration (idempotent: unchanged policies are left alone, changed ones
replaced, removed ones dropped):

- TimescaleDB: compression on the bar and tick hypertables (segmented by instrument and provider,
  ordered by time) with compression policies; retention policies on the hypertables, their revision
  tables and the roll-ups (which follow md.bars_1m); refresh policies on the roll-ups; and a job that
  runs `ops.expire_rows` for raw payloads and published outbox rows.
- Plain PostgreSQL: the roll-up views. Retention is the `storage_retention` Dagster job
  (`expire_plain`: drops whole partitions by the same rules, then `ops.expire_rows`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import psycopg
from psycopg import sql

from mdpipeline.storage.migrations import HYPERTABLES, TIME_PARTITIONED, storage_layout
from mdpipeline.storage.partitions import drop_partitions_before
from mdpipeline.storage.rollups import ROLLUPS, create_rollups, rollup_view
from mdpipeline.storage.storage_config import StorageConfig

SEGMENT_BY = "instrument_id, provider"


def apply_storage_config(conn: psycopg.Connection, config: StorageConfig, timescale: bool) -> None:
    """Make the database's roll-ups and policies match `config` (inside the caller's transaction)."""
    create_rollups(conn, config.rollups, timescale)
    if not timescale:
        return
    for table, (column, _) in HYPERTABLES.items():
        policy = config.policy(table)
        if not table.endswith("_revisions"):
            _compression(conn, table, column, policy.compress_after)
        _retention(conn, table, policy.retention)
    minute_retention = config.policy("md.bars_1m").retention
    for interval in ROLLUPS:
        view = rollup_view(interval)
        _retention(conn, view, minute_retention)
        _refresh_policy(conn, view, config)
    _expiry_job(conn, config)


def _jobs(conn: psycopg.Connection, relation: str, proc: str) -> list[tuple[int, dict, str]]:
    """(job id, config, schedule interval) of `proc` jobs on a hypertable or continuous aggregate."""
    schema, name = relation.split(".")
    rows = conn.execute(
        """
        select j.job_id, j.config, j.schedule_interval::text
        from timescaledb_information.jobs j
        left join timescaledb_information.continuous_aggregates c
          on c.materialization_hypertable_schema = j.hypertable_schema
         and c.materialization_hypertable_name = j.hypertable_name
        where j.proc_name = %s
          and ((j.hypertable_schema = %s and j.hypertable_name = %s)
               or (c.view_schema = %s and c.view_name = %s))
        """, (proc, schema, name, schema, name)).fetchall()
    return [(int(r[0]), r[1] or {}, str(r[2])) for r in rows]


def _same_interval(conn: psycopg.Connection, a: object, b: str | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    row = conn.execute("select %s::interval = %s::interval", (str(a), b)).fetchone()
    return bool(row and row[0])


def _compression(conn: psycopg.Connection, table: str, column: str, after: str | None) -> None:
    """Compression settings (once) and a compression policy of `after` (none when None)."""
    schema, name = table.split(".")
    enabled = conn.execute("select compression_enabled from timescaledb_information.hypertables"
                           " where hypertable_schema = %s and hypertable_name = %s", (schema, name)).fetchone()
    if after is not None and not (enabled and enabled[0]):
        conn.execute(sql.SQL("alter table {} set (timescaledb.compress, timescaledb.compress_segmentby = {},"
                             " timescaledb.compress_orderby = {})").format(
            sql.Identifier(schema, name), sql.Literal(SEGMENT_BY), sql.Literal(f"{column} desc")))
    _interval_policy(conn, table, "compression", "compress_after", after)


def _retention(conn: psycopg.Connection, relation: str, keep: str | None) -> None:
    """A retention policy dropping chunks older than `keep` (none when None)."""
    _interval_policy(conn, relation, "retention", "drop_after", keep)


def _interval_policy(conn: psycopg.Connection, relation: str, kind: str, key: str, wanted: str | None) -> None:
    """Keep a policy job of `kind` whose interval setting `key` equals `wanted`; replace or remove it otherwise."""
    jobs = _jobs(conn, relation, f"policy_{kind}")
    if len(jobs) == 1 and _same_interval(conn, jobs[0][1].get(key), wanted):
        return
    if jobs:
        conn.execute(f"select remove_{kind}_policy(%s, if_exists => true)", (relation,))
    if wanted is not None:
        conn.execute(f"select add_{kind}_policy(%s, %s::interval)", (relation, wanted))


def _refresh_policy(conn: psycopg.Connection, view: str, config: StorageConfig) -> None:
    """Refresh the whole history's invalidated buckets every `refresh_every`, up to `refresh_lag` ago."""
    every, lag = config.rollups.refresh_every, config.rollups.refresh_lag
    jobs = _jobs(conn, view, "policy_refresh_continuous_aggregate")
    if (len(jobs) == 1 and jobs[0][1].get("start_offset") is None
            and _same_interval(conn, jobs[0][1].get("end_offset"), lag) and _same_interval(conn, jobs[0][2], every)):
        return
    if jobs:
        conn.execute("select remove_continuous_aggregate_policy(%s, if_exists => true)", (view,))
    conn.execute("select add_continuous_aggregate_policy(%s, start_offset => null, end_offset => %s::interval,"
                 " schedule_interval => %s::interval)", (view, lag, every))


def _expiry_job(conn: psycopg.Connection, config: StorageConfig) -> None:
    """A TimescaleDB job running ops.expire_rows with the raw payload and outbox retention."""
    wanted = config.expiry()
    rows = conn.execute("select job_id, config, schedule_interval::text from timescaledb_information.jobs"
                        " where proc_schema = 'ops' and proc_name = 'expire_rows'").fetchall()
    if len(rows) == 1 and wanted and (rows[0][1] or {}) == wanted and _same_interval(conn, rows[0][2],
                                                                                   config.expire_every):
        return
    for row in rows:
        conn.execute("select delete_job(%s)", (row[0],))
    if wanted:
        conn.execute("select add_job('ops.expire_rows', %s::interval, config => %s::jsonb)",
                     (config.expire_every, json.dumps(wanted)))


@dataclass(frozen=True)
class Expired:
    """What a plain-layout retention pass removed."""

    dropped_partitions: list[str]
    cutoffs: dict[str, str]


def retention_job_count(conn: psycopg.Connection) -> int:
    """TimescaleDB scheduler jobs that expire data (retention policies and the expiry procedure)."""
    row = conn.execute("select count(*) from timescaledb_information.jobs where proc_name in"
                       " ('policy_retention', 'expire_rows')").fetchone()
    return int(row[0]) if row else 0


def expire_plain(conn: psycopg.Connection, config: StorageConfig) -> Expired:
    """Retention on the plain layout: drop partitions wholly older than each table's retention, expire rows.

    The same rules as the TimescaleDB policies: a partition goes once every row in it is older than
    the retention (by session date), revision tables follow their table, raw payloads and published
    outbox rows are deleted by `ops.expire_rows`. On TimescaleDB this does nothing (its jobs do it).
    """
    if storage_layout(conn) != "postgres-partitioned":
        return Expired([], {})
    dropped: list[str] = []
    cutoffs: dict[str, str] = {}
    for table in TIME_PARTITIONED:
        keep = config.policy(table).retention
        if keep is None:
            continue
        row = conn.execute("select (current_date - %s::interval)::date", (keep,)).fetchone()
        cutoff = row[0]  # type: ignore[index]
        cutoffs[table] = cutoff.isoformat()
        with conn.transaction():
            dropped += drop_partitions_before(conn, table, cutoff)
    expiry = config.expiry()
    if expiry:
        conn.execute("call ops.expire_rows(null, %s::jsonb)", (json.dumps(expiry),))
    return Expired(dropped, cutoffs)
