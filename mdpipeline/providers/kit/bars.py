"""Bar times: epoch timestamps to UTC bar starts and session dates, regular-session filtering, and
grouping sessions into request chunks (a year, a month)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import date
from typing import Literal

import polars as pl

from mdpipeline.sessions import exchange_timezone, session_bounds

log = logging.getLogger("mdpipeline.providers")


def epoch_utc(expr: pl.Expr, unit: Literal["s", "ms"]) -> pl.Expr:
    """Epoch integers (or their text) in `unit` -> UTC datetime (us); values that do not parse -> null."""
    ticks = expr.cast(pl.String).str.strip_chars().cast(pl.Int64, strict=False)
    return pl.from_epoch(ticks, time_unit=unit).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")


def bar_time(ts: pl.Expr, dataset: str, tz: str) -> pl.Expr:
    """A bar's start `ts` (UTC) as the column its dataset keys on: `session_date` (the date in `tz`, the
    exchange's time zone unless the provider stamps daily bars otherwise) for bars_1d, `ts` for bars_1m."""
    if dataset == "bars_1d":
        return ts.dt.convert_time_zone(tz).dt.date().alias("session_date")
    return ts.alias("ts")


def sessions_by(sessions: Sequence[date], fmt: str) -> list[tuple[str, list[date]]]:
    """Sessions grouped by `day.strftime(fmt)` (e.g. "%Y" or "%Y-%m"), in order."""
    groups: dict[str, list[date]] = {}
    for day in sessions:
        groups.setdefault(day.strftime(fmt), []).append(day)
    return list(groups.items())


def regular_hours(frame: pl.DataFrame, calendar_name: str) -> pl.DataFrame:
    """Minute bars that start inside a regular session (half days included); rows without ts are kept."""
    if frame.is_empty():
        return frame
    local_day = pl.col("ts").dt.convert_time_zone(exchange_timezone(calendar_name)).dt.date()
    days = frame.select(local_day.min().alias("lo"), local_day.max().alias("hi")).row(0)
    if days[0] is None:
        return frame
    bounds = session_bounds(days[0], days[1], calendar_name).rename(
        {"session_date": "__day", "open": "__open", "close": "__close"})
    joined = frame.with_columns(local_day.alias("__day")).join(bounds, on="__day", how="left", maintain_order="left")
    inside = pl.col("ts").is_null() | ((pl.col("ts") >= pl.col("__open")) & (pl.col("ts") < pl.col("__close")))
    kept = joined.filter(inside.fill_null(False)).select(frame.columns)
    if kept.height < frame.height:
        log.debug("dropped %d minute bars outside regular sessions", frame.height - kept.height)
    return kept


__all__ = ["bar_time", "epoch_utc", "regular_hours", "sessions_by"]
