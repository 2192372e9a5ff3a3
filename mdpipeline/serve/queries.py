"""What the read API serves: stored daily bars and data-quality records, by symbol and session range."""

from __future__ import annotations

from datetime import date

import polars as pl
import psycopg

from mdpipeline.storage.bars import read_bars_1d
from mdpipeline.storage.reader import read_frame

QUARANTINE: dict[str, pl.DataType] = {
    "dataset": pl.String(), "provider": pl.String(), "stage": pl.String(), "session_date": pl.Date(),
    "symbol": pl.String(), "check_name": pl.String(), "reason": pl.String(), "row_data": pl.String(),
    "run_id": pl.String(), "quarantined_at": pl.Datetime("us", "UTC"),
}


def bars_1d(conn: psycopg.Connection, symbols: list[str], start: date, end: date,
            provider: str | None) -> pl.DataFrame:
    """Stored daily bars (without internal lineage columns)."""
    return read_bars_1d(conn, start=start, end=end, provider=provider, symbols=symbols).drop("raw_payload_id")


def quality(conn: psycopg.Connection, symbols: list[str], start: date, end: date,
            provider: str | None) -> pl.DataFrame:
    """Quarantined rows (with check name, reason and the original row) for the symbols and sessions."""
    where = ["session_date between %s and %s", "symbol = any(%s)"]
    params: list[object] = [start, end, symbols]
    if provider:
        where.append("provider = %s")
        params.append(provider)
    query = (f"select {', '.join(QUARANTINE)} from quality.quarantine where {' and '.join(where)}"
             " order by session_date, symbol, dataset, stage, check_name")
    return read_frame(conn, query, tuple(params), QUARANTINE)
