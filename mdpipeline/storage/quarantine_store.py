"""`quality.quarantine` and `quality.check_results`: rejected rows with reasons, and check outcomes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

import polars as pl
import psycopg
from psycopg.types.json import Jsonb

from mdpipeline.contracts.frames import QUARANTINE_COLUMNS, REJECT_COLUMNS
from mdpipeline.contracts.sql import column_definitions
from mdpipeline.storage.binary_copy import copy_frame


def as_rejects(rows: pl.DataFrame, stage: str) -> pl.DataFrame:
    """Quarantined rows of a step (check_name, reason, row_data, ...) as a rejects frame of `stage`."""
    frame = rows.with_columns(pl.lit(stage).alias("stage"))
    return frame.select(
        pl.col(c).cast(t) if c in frame.columns else pl.lit(None, dtype=t).alias(c) for c, t in REJECT_COLUMNS.items()
    )


def replace_quarantine(
    conn: psycopg.Connection,
    rows: pl.DataFrame,
    *,
    dataset: str,
    provider: str,
    stage: str | Sequence[str],
    start: date,
    end: date,
    run_id: str,
    symbols: Sequence[str] | None = None,
    without_symbol: bool = True,
) -> int:
    """Replace the quarantine of (dataset, provider, stages) for sessions in [start, end] by `rows`.

    `stage` is one stage (every row gets it) or several (the rows carry a `stage` column). With
    `symbols`, only those symbols' rows are replaced, plus (when `without_symbol`) the rows that
    name no symbol. A re-run therefore reports the current rejects exactly once instead of piling up copies.
    """
    stages = [stage] if isinstance(stage, str) else list(stage)
    frame = rows.with_columns(pl.lit(dataset).alias("dataset"), pl.lit(provider).alias("provider"),
                              pl.lit(run_id).alias("run_id"))
    if isinstance(stage, str):
        frame = frame.with_columns(pl.lit(stage).alias("stage"))
    frame = frame.select(
        pl.col(c).cast(t) if c in frame.columns else pl.lit(None, dtype=t).alias(c)
        for c, t in QUARANTINE_COLUMNS.items()
    )
    where = "dataset = %s and provider = %s and stage = any(%s) and session_date between %s and %s"
    params: list[object] = [dataset, provider, stages, start, end]
    if symbols is not None:
        where += " and (symbol = any(%s)" + (" or symbol is null or symbol = ''" if without_symbol else "") + ")"
        params.append(list(symbols))
    with conn.transaction():
        conn.execute(f"delete from quality.quarantine where {where}", params)
        if frame.height:
            staged = column_definitions(QUARANTINE_COLUMNS)
            conn.execute(f"create temporary table _quarantine ({staged}) on commit drop")
            with conn.cursor() as cur:
                copy_frame(cur, "_quarantine", frame)
            conn.execute(
                f"insert into quality.quarantine ({', '.join(QUARANTINE_COLUMNS)}) "
                f"select {', '.join(c if c != 'row_data' else 'row_data::jsonb' for c in QUARANTINE_COLUMNS)} "
                "from _quarantine"
            )
            conn.execute("drop table _quarantine")
    return frame.height


def quarantined_by_check(conn: psycopg.Connection, provider: str, dataset: str, start: date,
                         end: date) -> dict[str, int]:
    """Rows of `provider`'s `dataset` with sessions in [start, end] in quality.quarantine, by check name."""
    rows = conn.execute(
        "select check_name, count(*) from quality.quarantine where dataset = %s and provider = %s"
        " and session_date between %s and %s group by check_name order by check_name",
        (dataset, provider, start, end),
    ).fetchall()
    return {str(name): int(n) for name, n in rows}


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
