"""Bars inside the partition window and inside the exchange session.

A bar dated outside the run's sessions, or on a day the exchange is closed, is a hard error: it
belongs to another partition or to no session at all. A 1-minute bar on a session day but outside
the regular session (pre-market, after hours) is real data, so it is flagged, not dropped.
"""

from __future__ import annotations

from datetime import date

import polars as pl

from mdpipeline.quality.findings import ERROR, WARN, concat_findings, is_intraday, make_findings
from mdpipeline.sessions import session_bounds, session_dates, with_session_date


def session_window(
    frame: pl.DataFrame, start: date, end: date, *, key: str = "symbol", calendar_name: str = "XNYS"
) -> pl.DataFrame:
    """Findings `outside_window`, `non_session` (errors) and, for intraday bars, `extended_hours` (warn)."""
    bars = with_session_date(frame, calendar_name)
    sessions = pl.Series("session_date", session_dates(start, end, calendar_name), dtype=pl.Date)
    outside = bars.filter(~pl.col("session_date").is_between(start, end))
    closed = bars.filter(pl.col("session_date").is_between(start, end) & ~pl.col("session_date").is_in(sessions))
    found = [
        make_findings(outside, key=key, kind="outside_window", severity=ERROR,
                      detail=pl.format("session {} is outside the partition {} .. {}", pl.col("session_date"),
                                       pl.lit(start.isoformat()), pl.lit(end.isoformat()))),
        make_findings(closed, key=key, kind="non_session", severity=ERROR,
                      detail=pl.format("{} is not a {} session", pl.col("session_date"), pl.lit(calendar_name))),
    ]
    if is_intraday(bars):
        bounds = session_bounds(start, end, calendar_name).rename({"open": "__open", "close": "__close"})
        extended = bars.join(bounds, on="session_date", how="inner").filter(
            (pl.col("ts") < pl.col("__open")) | (pl.col("ts") >= pl.col("__close")))
        found.append(make_findings(
            extended, key=key, kind="extended_hours", severity=WARN,
            detail=pl.format("bar at {} is outside the regular session {} .. {}",
                             pl.col("ts").dt.strftime("%H:%M"), pl.col("__open").dt.strftime("%H:%M"),
                             pl.col("__close").dt.strftime("%H:%M UTC")),
            value=((pl.col("ts") - pl.col("__open")).dt.total_minutes()).cast(pl.Float64),
        ))
    return concat_findings(found)
