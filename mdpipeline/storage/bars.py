"""Reads of stored bars as polars frames."""

from __future__ import annotations

from datetime import date

import polars as pl
import psycopg

from mdpipeline.normalize.bars import STORED_BARS_1D
from mdpipeline.storage.reader import read_frame


def read_bars_1d(
    conn: psycopg.Connection,
    *,
    start: date,
    end: date,
    provider: str | None = None,
    symbols: list[str] | None = None,
) -> pl.DataFrame:
    """Stored daily bars in [start, end], optionally for one provider and some symbols."""
    where = ["session_date between %s and %s"]
    params: list[object] = [start, end]
    if provider:
        where.append("provider = %s")
        params.append(provider)
    if symbols:
        where.append("symbol = any(%s)")
        params.append(symbols)
    query = (
        f"select {', '.join(STORED_BARS_1D)} from md.bars_1d where {' and '.join(where)} "
        "order by session_date, instrument_id, provider"
    )
    return read_frame(conn, query, tuple(params), STORED_BARS_1D)
