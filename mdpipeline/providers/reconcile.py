"""Rows parsed from overlapping payloads: keep each bar from the freshest payload that holds it.

A range backfill and a later single-day re-fetch both cover that day; the later fetch wins. Rows
that repeat within one payload (pages that overlap) are left for validation, which collapses exact
copies and quarantines conflicting ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import polars as pl

from mdpipeline.providers.base import RawPayload


def prefer_latest_payload(frame: pl.DataFrame, payloads: Sequence[RawPayload], key: list[str]) -> pl.DataFrame:
    """Drop rows whose key also appears in a payload fetched later (`payloads` ordered oldest first)."""
    if frame.is_empty() or len(payloads) < 2:
        return frame
    rank = pl.DataFrame(
        {"raw_payload_id": [p.payload_id for p in payloads], "__rank": list(range(len(payloads)))},
        schema={"raw_payload_id": pl.Int64, "__rank": pl.Int64},
    )
    ranked = frame.join(rank, on="raw_payload_id", how="left", maintain_order="left")
    return ranked.filter(pl.col("__rank") == pl.col("__rank").max().over(key)).drop("__rank")


def within_sessions(frame: pl.DataFrame, start: date, end: date, date_column: str = "session_date") -> pl.DataFrame:
    """Rows of sessions [start, end] only: a payload may cover more than the run asked for."""
    return frame.filter(pl.col(date_column).is_between(start, end))
