"""Findings: what the anomaly detectors report, one row per finding, in one fixed schema.

Soft findings are not stored on the bars themselves: a missing bar has no row to carry a flag, so
every detector returns a findings frame (instrument, session_date, ts, kind, severity, detail,
value). `attach_flags` turns findings back into a `flags: list[str]` column for the rows that exist,
and `to_quarantine` turns hard ones (severity `error`) into quarantine rows with a reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date

import polars as pl

ERROR = "error"  # hard: the row must not be published (quarantine)
WARN = "warn"  # soft: the row is published with a flag, the check warns
INFO = "info"  # recorded for context (no trades, a move explained by a corporate action)

FINDINGS_SCHEMA: dict[str, pl.DataType] = {
    "instrument": pl.String(),  # the value of the instrument key column (symbol by default)
    "session_date": pl.Date(),
    "ts": pl.Datetime("us", "UTC"),  # bar start for intraday findings, null for daily ones
    "kind": pl.String(),
    "severity": pl.String(),
    "detail": pl.String(),
    "value": pl.Float64(),  # the measured number: robust z, ratio, run length, basis points ...
}


def empty_findings() -> pl.DataFrame:
    """A findings frame without rows."""
    return pl.DataFrame(schema=FINDINGS_SCHEMA)


def is_intraday(frame: pl.DataFrame) -> bool:
    """Intraday bars carry a `ts` column (bar start, UTC); daily bars only a `session_date`."""
    return "ts" in frame.columns


def time_columns(frame: pl.DataFrame) -> list[str]:
    """The columns that identify one instrument's bar in time (intraday frames also carry session_date)."""
    return ["session_date", "ts"] if is_intraday(frame) else ["session_date"]


def time_column(frame: pl.DataFrame) -> str:
    """The one column that orders an instrument's bars: `ts` intraday, `session_date` for daily bars.

    Detectors order bars with window expressions (`.over(key, order_by=...)`) instead of sorting the
    frame: a multi-column sort with a string key is by far the slowest step on large frames.
    """
    return "ts" if is_intraday(frame) else "session_date"


def make_findings(
    rows: pl.DataFrame, *, key: str, kind: str, severity: str, detail: pl.Expr, value: pl.Expr | None = None
) -> pl.DataFrame:
    """Select the findings columns from `rows` (the bars a detector flagged), in time order.

    `rows` is rechunked first: polars 2.1 can panic in `pl.format` when columns are split into
    chunks at different boundaries (as after joins and filters); flagged rows are few, so it is cheap.
    """
    return rows.rechunk().select(
        pl.col(key).cast(pl.String).alias("instrument"),
        pl.col("session_date").cast(pl.Date),
        (pl.col("ts") if "ts" in rows.columns else pl.lit(None)).cast(pl.Datetime("us", "UTC")).alias("ts"),
        pl.lit(kind, dtype=pl.String).alias("kind"),
        pl.lit(severity, dtype=pl.String).alias("severity"),
        detail.cast(pl.String).alias("detail"),
        (value if value is not None else pl.lit(None)).cast(pl.Float64).alias("value"),
    ).sort("instrument", "session_date", "ts", nulls_last=False)


def concat_findings(frames: Iterable[pl.DataFrame]) -> pl.DataFrame:
    """One findings frame, ordered by instrument, time and kind."""
    parts = [f.select(list(FINDINGS_SCHEMA)) for f in frames]
    if not parts:
        return empty_findings()
    return pl.concat(parts, how="vertical").sort("instrument", "session_date", "ts", "kind", nulls_last=False)


def count_by_kind(findings: pl.DataFrame, severities: Iterable[str] = (ERROR, WARN, INFO)) -> dict[str, int]:
    """How many findings of each kind (for metrics and the UI)."""
    counts = findings.filter(pl.col("severity").is_in(list(severities))).group_by("kind").len().sort("kind")
    return {str(k): int(n) for k, n in counts.iter_rows()}


def attach_flags(frame: pl.DataFrame, findings: pl.DataFrame, key: str = "symbol") -> pl.DataFrame:
    """`frame` with a `flags: list[str]` column: the kinds of the findings about each row (empty when none).

    Findings about bars that do not exist (missing ones) have no row to land on; they stay in the
    findings frame.
    """
    on = time_columns(frame)
    flags = (
        findings.filter(pl.col("severity") != INFO)
        .select(pl.col("instrument").alias("__instrument"), *on, "kind")
        .unique()
        .group_by("__instrument", *on)
        .agg(pl.col("kind").sort().alias("flags"))
    )
    return (
        frame.with_columns(pl.col(key).cast(pl.String).alias("__instrument"))
        .join(flags, on=["__instrument", *on], how="left", maintain_order="left", nulls_equal=True)
        .with_columns(pl.col("flags").fill_null(pl.lit([], dtype=pl.List(pl.String))))
        .drop("__instrument")
    )


def to_quarantine(frame: pl.DataFrame, findings: pl.DataFrame, key: str = "symbol") -> pl.DataFrame:
    """Rows of `frame` with an `error` finding, as quarantine rows (check_name, reason, row_data).

    The same shape `quarantine.split_valid` produces, so `storage.quarantine_store.replace_quarantine`
    stores them with the original row kept as JSON.
    """
    on = time_columns(frame)
    hard = (
        findings.filter(pl.col("severity") == ERROR)
        .group_by(pl.col("instrument").alias("__instrument"), *on)
        .agg(pl.col("kind").unique().sort().str.join(",").alias("check_name"),
             pl.col("detail").unique().sort().str.join("; ").alias("reason"))
    )
    rows = frame.with_columns(pl.col(key).cast(pl.String).alias("__instrument")).join(
        hard, on=["__instrument", *on], how="inner", maintain_order="left", nulls_equal=True).rechunk()
    keep = [c for c in frame.columns if c in ("symbol", "session_date", "raw_payload_id") or c.startswith("__")]
    data = [c for c in frame.columns if not c.startswith("__")]
    return rows.select(*keep, "check_name", "reason", pl.struct(data).struct.json_encode().alias("row_data"))


def in_window(findings: pl.DataFrame, start: date, end: date) -> pl.DataFrame:
    """Findings about sessions in [start, end] (detectors may look at earlier history for context)."""
    return findings.filter(pl.col("session_date").is_between(start, end))
