"""What the read API serves: stored bars (1d, 1m and the 5m/15m/1h roll-ups) and data-quality records,
by symbol and session range. Server-independent: any HTTP layer maps its routes onto `BARS` and `quality`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

import polars as pl
import psycopg

from mdpipeline.storage.bars import read_bars_1d, read_bars_1m, read_rollup
from mdpipeline.storage.reader import read_frame
from mdpipeline.storage.rollups import ROLLUPS

QUARANTINE: dict[str, pl.DataType] = {
    "dataset": pl.String(), "provider": pl.String(), "stage": pl.String(), "session_date": pl.Date(),
    "symbol": pl.String(), "check_name": pl.String(), "reason": pl.String(), "row_data": pl.String(),
    "run_id": pl.String(), "quarantined_at": pl.Datetime("us", "UTC"),
}


Query = Callable[[psycopg.Connection, list[str], date, date, str | None], pl.DataFrame]


def bars_query(interval: str) -> Query:
    """The query of stored bars of `interval`: 1d, 1m, or a roll-up of 1m (5m, 15m, 1h); no raw_payload_id."""
    def query(conn: psycopg.Connection, symbols: list[str], start: date, end: date,
              provider: str | None) -> pl.DataFrame:
        scope = {"start": start, "end": end, "provider": provider, "symbols": symbols}
        if interval == "1d":
            frame = read_bars_1d(conn, **scope)  # type: ignore[arg-type]
        elif interval == "1m":
            frame = read_bars_1m(conn, **scope)  # type: ignore[arg-type]
        else:
            frame = read_rollup(conn, interval, **scope)  # type: ignore[arg-type]
        return frame.drop([c for c in ("raw_payload_id",) if c in frame.columns])
    return query


BARS: dict[str, Query] = {interval: bars_query(interval) for interval in ("1d", "1m", *ROLLUPS)}
bars_1d = BARS["1d"]


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
