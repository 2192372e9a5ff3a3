"""`quality.quarantine` and `quality.check_results`: rejected rows with reasons, and check outcomes."""

from __future__ import annotations

from datetime import date
from typing import Any

import polars as pl
import psycopg
from psycopg.types.json import Jsonb

from mdpipeline.storage.binary_copy import copy_frame

_QUARANTINE_COLUMNS: dict[str, pl.DataType] = {
    "dataset": pl.String(),
    "provider": pl.String(),
    "stage": pl.String(),
    "session_date": pl.Date(),
    "symbol": pl.String(),
    "check_name": pl.String(),
    "reason": pl.String(),
    "row_data": pl.String(),
    "raw_payload_id": pl.Int64(),
    "run_id": pl.String(),
}


def replace_quarantine(
    conn: psycopg.Connection,
    rows: pl.DataFrame,
    *,
    dataset: str,
    provider: str,
    stage: str,
    start: date,
    end: date,
    run_id: str,
) -> int:
    """Replace the quarantine of (dataset, provider, stage) for sessions in [start, end] by `rows`.

    A re-run therefore reports the current rejects exactly once instead of piling up copies.
    """
    frame = rows.with_columns(
        pl.lit(dataset).alias("dataset"), pl.lit(provider).alias("provider"),
        pl.lit(stage).alias("stage"), pl.lit(run_id).alias("run_id"),
    )
    frame = frame.select(
        pl.col(c).cast(t) if c in frame.columns else pl.lit(None, dtype=t).alias(c)
        for c, t in _QUARANTINE_COLUMNS.items()
    )
    with conn.transaction():
        conn.execute(
            "delete from quality.quarantine where dataset = %s and provider = %s and stage = %s "
            "and session_date between %s and %s",
            (dataset, provider, stage, start, end),
        )
        conn.execute(
            "create temporary table _quarantine (dataset text, provider text, stage text, session_date date,"
            " symbol text, check_name text, reason text, row_data text, raw_payload_id bigint, run_id text)"
            " on commit drop"
        )
        with conn.cursor() as cur:
            copy_frame(cur, "_quarantine", frame)
        conn.execute(
            f"insert into quality.quarantine ({', '.join(_QUARANTINE_COLUMNS)}) "
            f"select {', '.join(c if c != 'row_data' else 'row_data::jsonb' for c in _QUARANTINE_COLUMNS)} "
            "from _quarantine"
        )
    return frame.height


def record_check(
    conn: psycopg.Connection,
    *,
    asset_key: str,
    check_name: str,
    start: date | None,
    end: date | None,
    passed: bool,
    severity: str,
    metadata: dict[str, Any],
    run_id: str,
) -> None:
    """Keep a check outcome in the database too, for reports outside Dagster."""
    conn.execute(
        "insert into quality.check_results (asset_key, check_name, partition_start, partition_end, passed,"
        " severity, metadata, run_id) values (%s, %s, %s, %s, %s, %s, %s, %s)",
        (asset_key, check_name, start, end, passed, severity, Jsonb(metadata), run_id),
    )
