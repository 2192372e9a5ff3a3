"""The `storage_retention` job and its daily schedule: retention on the plain PostgreSQL layout.

On plain PostgreSQL nothing else expires data, so the schedule runs by default: it drops the whole
partitions older than each table's retention in `config/storage.yaml` and deletes expired raw
payloads and published outbox rows (`storage.policies.expire_plain`). On TimescaleDB the same rules
are policies that TimescaleDB's own scheduler runs; the job then only reports them.
"""

import dagster as dg

from mdpipeline.orchestration.resources import DatabaseResource
from mdpipeline.storage.migrations import storage_layout
from mdpipeline.storage.policies import expire_plain, retention_job_count
from mdpipeline.storage.storage_config import load_storage_config, storage_config_path

RETENTION_CRON = "30 4 * * *"  # daily, before the sessions of the day


@dg.op(description="Drop partitions and rows older than the storage configuration's retention (plain layout).")
def apply_retention(context: dg.OpExecutionContext, db: DatabaseResource) -> dg.Output[int]:
    """Apply the retention rules; reports what was dropped (or, on TimescaleDB, that its policies do it)."""
    config = load_storage_config()
    with db.connection() as conn:
        layout = storage_layout(conn)
        expired = expire_plain(conn, config)
        if layout == "timescaledb":
            jobs = retention_job_count(conn)
            context.log.info(f"TimescaleDB layout: {jobs} retention jobs of its scheduler apply"
                             f" {storage_config_path()}")
    for name in expired.dropped_partitions:
        context.log.info(f"dropped {name}")
    return dg.Output(len(expired.dropped_partitions), metadata={
        "layout": layout, "config": str(storage_config_path()),
        "dropped_partitions": dg.MetadataValue.json(expired.dropped_partitions),
        "cutoffs": dg.MetadataValue.json(expired.cutoffs)})


@dg.job(description="Retention by config/storage.yaml: drops old partitions on plain PostgreSQL (TimescaleDB runs"
                    " its own retention policies).")
def storage_retention() -> None:
    apply_retention()


storage_retention_schedule = dg.ScheduleDefinition(
    job=storage_retention, cron_schedule=RETENTION_CRON, execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily retention pass (plain PostgreSQL layout; a report on TimescaleDB).")
