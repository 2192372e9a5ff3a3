"""Reads of stored bars as polars frames: daily, minute and rolled-up bars, latest or as known at a time.

The latest values are the bar tables themselves (and the roll-up relations), read as they are. As of
a time T, a bar's version is the one learnt at or before T and not superseded by T: the current row
when `ingested_at <= T`, otherwise the revision with `ingested_at <= T < superseded_at` (see
`storage.loader`, which keeps the revisions).
"""

from __future__ import annotations

from datetime import date, datetime

import polars as pl
import psycopg
from psycopg import sql

from mdpipeline.contracts.frames import ROLLUP_BARS, STORED_BARS_1D, STORED_BARS_1M
from mdpipeline.storage.partitions import time_bounds
from mdpipeline.storage.reader import ArrowReader, read_frame
from mdpipeline.storage.rollups import rollup_query, rollup_view
from mdpipeline.storage.storage_config import RollupConfig, load_storage_config


def read_bars_1d(
    conn: psycopg.Connection,
    *,
    start: date,
    end: date,
    provider: str | None = None,
    symbols: list[str] | None = None,
    instrument_ids: list[int] | None = None,
    as_of: datetime | None = None,
    columns: list[str] | None = None,
    limit: int | None = None,
    ordered: bool = True,
    reader: ArrowReader | None = None,
) -> pl.DataFrame:
    """Stored daily bars in [start, end], optionally for one provider and some symbols or instruments.

    `as_of`: each bar as it was known at that time (bars learnt later are absent, corrected ones
    have their earlier value). `columns`: only those, in the stored order; `limit`: at most that many rows;
    `ordered=False`: in whatever order the server finds them (saves its sort when the caller orders them);
    `reader`: an open ADBC session for callers that read many times (see `read_frame`).
    """
    where = _where(start, end, provider, symbols, instrument_ids, ts=False)
    order = "session_date, instrument_id, provider" if ordered else None
    query = _versions("md.bars_1d", STORED_BARS_1D, where, as_of, order, columns)
    return read_frame(conn, query + _limit(limit), None, _only(STORED_BARS_1D, columns), reader)


def read_bars_1m(
    conn: psycopg.Connection,
    *,
    start: date,
    end: date,
    provider: str | None = None,
    symbols: list[str] | None = None,
    instrument_ids: list[int] | None = None,
    as_of: datetime | None = None,
    columns: list[str] | None = None,
    limit: int | None = None,
    ordered: bool = True,
    reader: ArrowReader | None = None,
) -> pl.DataFrame:
    """Stored one-minute bars of the sessions [start, end] (as known at `as_of` when given; `columns`: only
    those; `limit`: at most that many rows; `ordered=False`: unsorted, for callers that order rows themselves)."""
    where = _where(start, end, provider, symbols, instrument_ids, ts=True)
    order = "ts, instrument_id, provider" if ordered else None
    query = _versions("md.bars_1m", STORED_BARS_1M, where, as_of, order, columns)
    return read_frame(conn, query + _limit(limit), None, _only(STORED_BARS_1M, columns), reader)


def _limit(limit: int | None) -> sql.Composable:
    return sql.SQL("") if limit is None else sql.SQL(" limit {}").format(sql.Literal(limit))


def _only(schema: dict[str, pl.DataType], columns: list[str] | None) -> dict[str, pl.DataType]:
    return schema if columns is None else {c: t for c, t in schema.items() if c in columns}


def read_rollup(
    conn: psycopg.Connection,
    interval: str,
    *,
    start: date,
    end: date,
    provider: str | None = None,
    symbols: list[str] | None = None,
    instrument_ids: list[int] | None = None,
    as_of: datetime | None = None,
    config: RollupConfig | None = None,
    limit: int | None = None,
) -> pl.DataFrame:
    """Minute bars of the sessions [start, end] rolled up to `interval` (5m, 15m, 1h).

    The latest values come from the roll-up relation (a continuous aggregate on TimescaleDB, a view
    on plain PostgreSQL); as of a time, the minute bars known then are aggregated by the same SQL on
    both layouts (`config`: the bucketing, by default the storage configuration's).
    """
    view = rollup_view(interval)
    where = _where(start, end, provider, symbols, instrument_ids, ts=True)
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in ROLLUP_BARS)
    order = sql.SQL(" order by ts, instrument_id, provider")
    if as_of is None:
        query = sql.SQL("select {} from {} where {}").format(columns, sql.Identifier(*view.split(".")), where) + order
    else:
        known = _versions("md.bars_1m", STORED_BARS_1M, where, as_of, None)
        rolled = rollup_query(interval, config or load_storage_config().rollups,
                              sql.SQL("({}) as known").format(known))
        query = sql.SQL("select {} from ({}) as rolled").format(columns, rolled) + order
    return read_frame(conn, query + _limit(limit), None, ROLLUP_BARS)


def _where(start: date, end: date, provider: str | None, symbols: list[str] | None,
           instrument_ids: list[int] | None, ts: bool) -> sql.Composed:
    """The read's filter; `ts` adds bounds on the bar start (chunk exclusion on tables chunked on `ts`)."""
    parts = [sql.SQL("session_date between {} and {}").format(sql.Literal(start), sql.Literal(end))]
    if ts:
        lower, upper = time_bounds(start, end)
        parts.append(sql.SQL("ts >= {}::timestamptz and ts < {}::timestamptz").format(
            sql.Literal(lower.isoformat()), sql.Literal(upper.isoformat())))
    for column, value in (("provider", provider), ("symbol", symbols), ("instrument_id", instrument_ids)):
        if value:
            op = "{} = any({})" if isinstance(value, list) else "{} = {}"
            parts.append(sql.SQL(op).format(sql.Identifier(column), sql.Literal(value)))
    return sql.SQL(" and ").join(parts)


def _versions(table: str, schema: dict[str, pl.DataType], where: sql.Composable, as_of: datetime | None,
              order: str | None, columns: list[str] | None = None) -> sql.Composed:
    """The rows of `table` matching `where`: the current ones, or the versions known at `as_of`
    (`columns`: only those of `schema`)."""
    picked = sql.SQL(", ").join(sql.Identifier(c) for c in schema if columns is None or c in columns)
    name = sql.Identifier(*table.split("."))
    if as_of is None:
        query = sql.SQL("select {} from {} where {}").format(picked, name, where)
    else:
        at = sql.Literal(as_of)
        everything = sql.SQL(", ").join(sql.Identifier(c) for c in schema)
        known = sql.SQL(
            "select {cols} from {t} where {w} and ingested_at <= {at}"
            " union all select {cols} from {r} where {w} and ingested_at <= {at} and superseded_at > {at}"
        ).format(cols=everything, t=name, w=where, at=at, r=sql.Identifier(*f"{table}_revisions".split(".")))
        query = sql.SQL("select {} from ({}) as known").format(picked, known) if (
            order is not None or columns is not None) else known
    return query + sql.SQL(f" order by {order}") if order is not None else query


def instruments_for_symbols(conn: psycopg.Connection, symbols: list[str]) -> list[int]:
    """Instruments that ever held any of `symbols`: history survives ticker changes (FB -> META)."""
    rows = conn.execute("select distinct instrument_id from ref.symbology where symbol = any(%s)", (symbols,))
    return sorted(r[0] for r in rows)


def stored_providers(conn: psycopg.Connection, dataset: str, start: date, end: date) -> list[str]:
    """Providers with stored `dataset` bars (md.<dataset>) in the sessions [start, end]."""
    rows = conn.execute(sql.SQL("select distinct provider from md.{} where session_date between %s and %s"
                                " order by 1").format(sql.Identifier(dataset)), (start, end)).fetchall()
    return [r[0] for r in rows]


def stored_symbols(conn: psycopg.Connection, dataset: str, provider: str, start: date, end: date) -> list[str]:
    """Symbols with stored `dataset` bars of `provider` in the sessions [start, end]."""
    rows = conn.execute(sql.SQL("select distinct symbol from md.{} where provider = %s and session_date"
                                " between %s and %s order by 1").format(sql.Identifier(dataset)),
                        (provider, start, end)).fetchall()
    return [r[0] for r in rows]
