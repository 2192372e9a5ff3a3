"""Completeness against the exchange calendar: which bars should exist, which do, which are missing.

Daily bars: one per instrument and session. One-minute bars: one per instrument and minute of the
regular session, from exchange-calendars' open and close (half days have fewer minutes). A bar that
is present with volume 0 means "no trades", which is not the same as "missing" (no bar at all):
the first is an `info` finding, the second a `warn` one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import polars as pl

from mdpipeline.quality.findings import INFO, WARN, concat_findings, is_intraday, make_findings
from mdpipeline.sessions import session_bounds, session_dates, with_session_date


@dataclass(frozen=True)
class Completeness:
    """Expected and present bars of a range, and the findings (missing, missing_session, no_trades)."""

    expected: int
    present: int
    no_trades: int
    findings: pl.DataFrame

    @property
    def missing(self) -> int:
        """Expected bars that are not there."""
        return self.expected - self.present

    @property
    def pct(self) -> float:
        """Present / expected, in percent (100 when nothing was expected)."""
        return 100.0 if self.expected == 0 else round(100.0 * self.present / self.expected, 4)

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe numbers for metrics."""
        return {"expected": self.expected, "present": self.present, "missing": self.missing,
                "no_trades": self.no_trades, "completeness_pct": self.pct}


def expected_sessions(
    instruments: pl.DataFrame | Sequence[str], start: date, end: date, *, key: str = "symbol",
    calendar_name: str = "XNYS",
) -> pl.DataFrame:
    """(key, session_date) for every instrument and session in [start, end].

    `instruments` is a list of keys or a frame with the key column and optionally `valid_from` /
    `valid_to` (symbology validity): an instrument is only expected while its key is valid.
    """
    table = instruments if isinstance(instruments, pl.DataFrame) else pl.DataFrame({key: list(instruments)})
    sessions = pl.DataFrame({"session_date": session_dates(start, end, calendar_name)},
                            schema={"session_date": pl.Date})
    grid = table.join(sessions, how="cross")
    if "valid_from" in grid.columns:
        grid = grid.filter(pl.col("session_date") >= pl.col("valid_from"))
    if "valid_to" in grid.columns:
        grid = grid.filter(pl.col("session_date") <= pl.col("valid_to"))
    return grid.select(key, "session_date").unique().sort(key, "session_date")


def expected_minutes(
    instruments: pl.DataFrame | Sequence[str], start: date, end: date, *, key: str = "symbol",
    calendar_name: str = "XNYS",
) -> pl.DataFrame:
    """(key, session_date, ts) for every instrument and regular-session minute in [start, end]."""
    days = expected_sessions(instruments, start, end, key=key, calendar_name=calendar_name)
    bounds = session_bounds(start, end, calendar_name)
    minutes = bounds.select(
        "session_date",
        pl.datetime_ranges("open", "close", "1m", closed="left", time_unit="us", time_zone="UTC").alias("ts"),
    ).explode("ts")
    return days.join(minutes, on="session_date", how="inner", maintain_order="left_right")  # by key, then ts


def completeness(
    frame: pl.DataFrame, start: date, end: date, *, instruments: pl.DataFrame | Sequence[str] | None = None,
    key: str = "symbol", calendar_name: str = "XNYS",
) -> Completeness:
    """Compare `frame` (daily or 1-minute bars) with the calendar; instruments default to those present.

    Intraday findings: `missing_session` once for an instrument with no bar in a whole session,
    `missing` per absent minute of a session that has bars. Daily: `missing` per absent session.
    Bars outside the expected grid (extended hours, other days) do not count as present; the
    session-window check reports them. Duplicates count once.
    """
    bars = with_session_date(frame, calendar_name)
    if instruments is None:
        instruments = bars.select(pl.col(key).unique().sort()).to_series().to_list()
    if is_intraday(bars):
        return _minute_completeness(bars, start, end, instruments, key, calendar_name)
    on = [key, "session_date"]
    grid = expected_sessions(instruments, start, end, key=key, calendar_name=calendar_name).with_columns(
        pl.col(key).cast(bars.schema[key]))
    present = bars.select(on)
    matched = grid.join(present, on=on, how="semi")
    absent = grid.join(present, on=on, how="anti")
    no_trades = grid.join(bars.filter(pl.col("volume") == 0).select(on).unique(), on=on, how="semi")
    findings = concat_findings([
        make_findings(no_trades, key=key, kind="no_trades", severity=INFO,
                      detail=pl.lit("bar present with volume 0 (no trades)"), value=pl.lit(0.0)),
        make_findings(absent, key=key, kind="missing", severity=WARN, detail=pl.lit("no bar for the session"),
                      value=pl.lit(1.0)),
    ])
    return Completeness(expected=grid.height, present=matched.height, no_trades=no_trades.height,
                        findings=findings)


def _minute_completeness(
    bars: pl.DataFrame, start: date, end: date, instruments: pl.DataFrame | Sequence[str], key: str,
    calendar_name: str,
) -> Completeness:
    """Present minutes counted per (instrument, session) in one pass; the minute grid is only built
    for the sessions that come up short, to name the missing minutes."""
    bounds = session_bounds(start, end, calendar_name).rename({"open": "__open", "close": "__close"})
    days = expected_sessions(instruments, start, end, key=key, calendar_name=calendar_name).with_columns(
        pl.col(key).cast(bars.schema[key])).join(bounds, on="session_date", how="inner").with_columns(
        ((pl.col("__close") - pl.col("__open")).dt.total_minutes()).alias("expected"))
    regular = (
        bars.select(key, "session_date", "ts", "volume")
        .join(bounds, on="session_date", how="inner")
        .filter((pl.col("ts") >= pl.col("__open")) & (pl.col("ts") < pl.col("__close"))
                & (pl.col("ts").dt.truncate("1m") == pl.col("ts")))
        .join(days.select(key, "session_date"), on=[key, "session_date"], how="semi")
    )
    counts = regular.group_by(key, "session_date").agg(pl.col("ts").n_unique().alias("present"))
    per_session = days.join(counts, on=[key, "session_date"], how="left", maintain_order="left")
    empty = per_session.filter(pl.col("present").is_null())
    short = per_session.filter(pl.col("present") < pl.col("expected"))
    minutes = short.select(
        key, "session_date",
        pl.datetime_ranges("__open", "__close", "1m", closed="left", time_unit="us", time_zone="UTC").alias("ts"),
    ).explode("ts")
    absent = minutes.join(regular.select(key, "ts"), on=[key, "ts"], how="anti")
    idle = regular.filter(pl.col("volume") == 0).unique([key, "ts"])
    findings = concat_findings([
        make_findings(idle, key=key, kind="no_trades", severity=INFO,
                      detail=pl.lit("bar present with volume 0 (no trades)"), value=pl.lit(0.0)),
        make_findings(empty, key=key, kind="missing_session", severity=WARN,
                      detail=pl.format("no bar in the session ({} minutes expected)", pl.col("expected")),
                      value=pl.col("expected")),
        make_findings(absent, key=key, kind="missing", severity=WARN,
                      detail=pl.format("no bar for the minute {}", pl.col("ts").dt.strftime("%H:%M")),
                      value=pl.lit(1.0)),
    ])
    return Completeness(expected=int(days["expected"].sum()), present=int(per_session["present"].sum()),
                        no_trades=idle.height, findings=findings)
