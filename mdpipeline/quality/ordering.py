"""Bars in instrument-then-time order, and "the bar before / after" of the same instrument.

Time-series detectors need each instrument's bars in time order. Sorting by (string key, time) is
by far the slowest step on large frames (a row-encoded multi-column sort), so the order is taken
from one Int64 composite: the key's categorical code in the high 32 bits, seconds (or days) since
the frame's first bar in the low 32. On an ordered frame "previous bar of the same instrument" is
a shift masked at instrument boundaries, with no grouping at all.
"""

from __future__ import annotations

import polars as pl

from mdpipeline.quality.findings import time_column


def same_instrument(key: str, offset: int = 1) -> pl.Expr:
    """True where the bar `offset` rows earlier (negative: later) belongs to the same instrument."""
    return (pl.col(key) == pl.col(key).shift(offset)).fill_null(False)


def previous(expr: pl.Expr, key: str) -> pl.Expr:
    """`expr` of the instrument's previous bar (null on its first bar); the frame must be ordered."""
    return pl.when(same_instrument(key)).then(expr.shift(1))


def following(expr: pl.Expr, key: str) -> pl.Expr:
    """`expr` of the instrument's next bar (null on its last bar); the frame must be ordered."""
    return pl.when(same_instrument(key, -1)).then(expr.shift(-1))


def with_segments(frame: pl.DataFrame, key: str) -> pl.DataFrame:
    """An ordered frame with `__seg`: a sorted integer id per instrument, cheaper to group by than the key."""
    return frame.with_columns((~same_instrument(key)).cum_sum().cast(pl.UInt32).set_sorted().alias("__seg"))


def is_ordered(frame: pl.DataFrame, key: str) -> bool:
    """Whether each instrument's bars are contiguous and in time order (in whatever instrument order)."""
    if frame.height < 2:
        return True
    t, same = pl.col(time_column(frame)), same_instrument(key)
    checks = frame.select(
        (~same | (t >= t.shift(1))).all().alias("in_time"),
        ((~same).sum() == pl.col(key).n_unique()).alias("contiguous"),
    )
    return bool(checks.row(0) == (True, True))


def by_instrument(frame: pl.DataFrame, key: str) -> pl.DataFrame:
    """`frame` sorted by instrument, then time (stable); returned as is when already in that order."""
    if is_ordered(frame, key):
        return frame
    t = time_column(frame)
    code = (pl.col(key) - pl.col(key).min() if frame.schema[key].is_integer()
            else pl.col(key).cast(pl.String).cast(pl.Categorical).to_physical())
    since = (pl.col(t).dt.epoch("s") if t == "ts" else pl.col(t).cast(pl.Int64))
    since = since - since.min()
    if frame.select(since.max()).item() >= 2**32:  # more than a century of seconds: sort the plain way
        return frame.sort(key, t, maintain_order=True)
    composite = code.cast(pl.Int64) * 2**32 + since
    # Codes follow first appearance, not the alphabet: fine for grouping, and findings are sorted anyway.
    # Sub-second ties keep their input order (stable sort).
    return frame.with_columns(composite.alias("__order")).sort("__order", maintain_order=True).drop("__order")
