"""Reads of stored bars as polars frames."""

from __future__ import annotations

from datetime import date

import polars as pl
import psycopg

from mdpipeline.normalize.bars import STORED_BARS_1D
from mdpipeline.normalize.minute_bars import STORED_BARS_1M
from mdpipeline.storage.reader import read_frame


def read_bars_1d(
    conn: psycopg.Connection,
    *,
    start: date,
    end: date,
    provider: str | None = None,
    symbols: list[str] | None = None,
    instrument_ids: list[int] | None = None,
    columns: list[str] | None = None,
) -> pl.DataFrame:
    """Stored daily bars in [start, end], optionally for one provider and some symbols or instruments
    (`columns`: only those, in the stored order)."""
    return _read("md.bars_1d", STORED_BARS_1D, "session_date, instrument_id, provider",
                 conn, start, end, provider, symbols, instrument_ids, columns)


def read_bars_1m(
    conn: psycopg.Connection,
    *,
    start: date,
    end: date,
    provider: str | None = None,
    symbols: list[str] | None = None,
    instrument_ids: list[int] | None = None,
    columns: list[str] | None = None,
) -> pl.DataFrame:
    """Stored one-minute bars of the sessions [start, end] (`columns`: only those)."""
    return _read("md.bars_1m", STORED_BARS_1M, "ts, instrument_id, provider",
                 conn, start, end, provider, symbols, instrument_ids, columns)


def _read(table: str, schema: dict[str, pl.DataType], order: str, conn: psycopg.Connection, start: date,
          end: date, provider: str | None, symbols: list[str] | None,
          instrument_ids: list[int] | None, columns: list[str] | None = None) -> pl.DataFrame:
    if columns is not None:
        schema = {c: t for c, t in schema.items() if c in columns}
    where = ["session_date between %s and %s"]
    params: list[object] = [start, end]
    for column, value in (("provider", provider), ("symbol", symbols), ("instrument_id", instrument_ids)):
        if value:
            where.append(f"{column} = any(%s)" if isinstance(value, list) else f"{column} = %s")
            params.append(value)
    query = f"select {', '.join(schema)} from {table} where {' and '.join(where)} order by {order}"
    return read_frame(conn, query, tuple(params), schema)


def instruments_for_symbols(conn: psycopg.Connection, symbols: list[str]) -> list[int]:
    """Instruments that ever held any of `symbols`: history survives ticker changes (FB -> META)."""
    rows = conn.execute("select distinct instrument_id from ref.symbology where symbol = any(%s)", (symbols,))
    return sorted(r[0] for r in rows)
