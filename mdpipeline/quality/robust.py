"""Robust z-scores: distance from the median in units of the (scaled) median absolute deviation.

Median and MAD are not dragged by the outliers they are meant to find, unlike mean and standard
deviation. 1.4826 * MAD estimates the standard deviation of normally distributed values, so
`k` reads as "k sigmas".
"""

from __future__ import annotations

import polars as pl

MAD_TO_SIGMA = 1.4826


def with_robust_z(
    frame: pl.DataFrame, x: str, group: str, *, alias: str, window: int | None = None, min_periods: int = 5,
    floor: float = 0.0,
) -> pl.DataFrame:
    """`frame` with `alias` = (x - median) / max(1.4826 * MAD, floor) per `group`; null with too little data.

    window None: median and MAD over the whole group (one partition plus its look-back). With a
    window: trailing rolling median over the last `window` values (the current one included) and a
    rolling MAD of the deviations from those medians (the usual approximation, since polars has no
    exact rolling MAD); where the window holds fewer than `min_periods` values the whole-group
    numbers stand in. Rows must be in time order within each group (`ordering.by_instrument`);
    `group` is best a sorted integer id (`ordering.with_segments`), which polars groups by slices.
    `floor` keeps a quiet series (MAD 0, e.g. prices stuck on one tick) from turning every move into
    an outlier. Each statistic is materialized once, in its own step.
    """
    value = pl.col(x)
    out = frame.with_columns(value.median().over(group).alias("__med"), value.count().over(group).alias("__n"))
    out = out.with_columns((value - pl.col("__med")).abs().median().over(group).alias("__mad"))
    if window is not None:
        out = out.with_columns(
            pl.coalesce(value.rolling_median(window, min_samples=min_periods).over(group), "__med").alias("__roll"))
        # Deviations from the rolling median (from the group median while the window warms up: nulls
        # would send polars down a much slower rolling kernel).
        out = out.with_columns(
            pl.coalesce((value - pl.col("__roll")).abs().rolling_median(window, min_samples=min_periods).over(group),
                        "__mad").alias("__mad"),
            pl.col("__roll").alias("__med"),
        ).drop("__roll")
    scale = pl.max_horizontal(pl.col("__mad") * MAD_TO_SIGMA, pl.lit(floor))
    z = pl.when(pl.col("__n") >= min_periods).then((value - pl.col("__med")) / scale)
    return out.with_columns(z.alias(alias)).drop("__med", "__mad", "__n")
