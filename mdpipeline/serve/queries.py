"""What the read API serves: stored bars (1d, 1m and the 5m/15m/1h roll-ups) and data-quality records,
by symbol and session range.

Each query asks for at most `limit` rows (the caller passes its row limit plus one, to tell "exactly
the limit" from "more than the limit" without counting first). An empty symbol list is refused here
too: it must never mean "every symbol".
"""

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
INTERVALS = ("1d", "1m", *ROLLUPS)

Query = Callable[[psycopg.Connection, list[str], date, date, str | None, int], pl.DataFrame]


def _require(symbols: list[str]) -> None:
    if not symbols:
        raise ValueError("at least one symbol is required")


def bars_query(interval: str) -> Query:
    """The query of stored bars of `interval`: 1d, 1m, or a roll-up of 1m (5m, 15m, 1h); no raw_payload_id."""
    def query(conn: psycopg.Connection, symbols: list[str], start: date, end: date, provider: str | None,
              limit: int) -> pl.DataFrame:
        _require(symbols)
        scope = {"start": start, "end": end, "provider": provider, "symbols": symbols, "limit": limit}
        if interval == "1d":
            frame = read_bars_1d(conn, **scope)  # type: ignore[arg-type]
        elif interval == "1m":
            frame = read_bars_1m(conn, **scope)  # type: ignore[arg-type]
        else:
            frame = read_rollup(conn, interval, **scope)  # type: ignore[arg-type]
        return frame.drop([c for c in ("raw_payload_id",) if c in frame.columns])
    return query


BARS: dict[str, Query] = {interval: bars_query(interval) for interval in INTERVALS}
bars_1d = BARS["1d"]


def quality(conn: psycopg.Connection, symbols: list[str], start: date, end: date, provider: str | None,
            limit: int) -> pl.DataFrame:
    """Quarantined rows (with check name, reason and the original row) for the symbols and sessions."""
    _require(symbols)
    where = ["session_date between %s and %s", "symbol = any(%s)"]
    params: list[object] = [start, end, symbols]
    if provider:
        where.append("provider = %s")
        params.append(provider)
    params.append(limit)
    query = (f"select {', '.join(QUARANTINE)} from quality.quarantine where {' and '.join(where)}"
             " order by session_date, symbol, dataset, stage, check_name limit %s")
    return read_frame(conn, query, tuple(params), QUARANTINE)
