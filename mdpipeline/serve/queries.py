"""What the read API serves: stored daily bars and data-quality records, by symbol and session range.

Each query asks for at most `limit` rows (the caller passes its row limit plus one, to tell "exactly
the limit" from "more than the limit" without counting first). An empty symbol list is refused here
too: it must never mean "every symbol".
"""

from __future__ import annotations

from datetime import date

import polars as pl
import psycopg

from mdpipeline.normalize.bars import STORED_BARS_1D
from mdpipeline.storage.reader import read_frame

BARS_1D: dict[str, pl.DataType] = {c: t for c, t in STORED_BARS_1D.items() if c != "raw_payload_id"}
QUARANTINE: dict[str, pl.DataType] = {
    "dataset": pl.String(), "provider": pl.String(), "stage": pl.String(), "session_date": pl.Date(),
    "symbol": pl.String(), "check_name": pl.String(), "reason": pl.String(), "row_data": pl.String(),
    "run_id": pl.String(), "quarantined_at": pl.Datetime("us", "UTC"),
}


def _select(conn: psycopg.Connection, table: str, columns: dict[str, pl.DataType], order: str, symbols: list[str],
            start: date, end: date, provider: str | None, limit: int) -> pl.DataFrame:
    if not symbols:
        raise ValueError("at least one symbol is required")
    where = ["session_date between %s and %s", "symbol = any(%s)"]
    params: list[object] = [start, end, symbols]
    if provider:
        where.append("provider = %s")
        params.append(provider)
    params.append(limit)
    query = (f"select {', '.join(columns)} from {table} where {' and '.join(where)} order by {order} limit %s")
    return read_frame(conn, query, tuple(params), columns)


def bars_1d(conn: psycopg.Connection, symbols: list[str], start: date, end: date, provider: str | None,
            limit: int) -> pl.DataFrame:
    """Stored daily bars (without internal lineage ids), at most `limit` rows."""
    return _select(conn, "md.bars_1d", BARS_1D, "session_date, instrument_id, provider", symbols, start, end,
                   provider, limit)


def quality(conn: psycopg.Connection, symbols: list[str], start: date, end: date, provider: str | None,
            limit: int) -> pl.DataFrame:
    """Quarantined rows (with check name, reason and the original row) for the symbols and sessions."""
    return _select(conn, "quality.quarantine", QUARANTINE,
                   "session_date, symbol, dataset, stage, check_name", symbols, start, end, provider, limit)
