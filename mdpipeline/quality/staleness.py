"""Stale data: the same close bar after bar, a feed that stopped updating but kept sending.

A run is a sequence of consecutive bars of one instrument with an identical close (with
`require_zero_volume`, also volume 0 on every bar: the usual shape of a carried-forward bar). Every
bar of a run of at least `min_run` bars is flagged `stale`, with the run length as the value.
"""

from __future__ import annotations

import polars as pl

from mdpipeline.quality.findings import WARN, make_findings, time_columns
from mdpipeline.quality.ordering import by_instrument, previous


def stale_runs(
    frame: pl.DataFrame, *, key: str = "symbol", min_run: int = 4, require_zero_volume: bool = False
) -> pl.DataFrame:
    """Findings `stale` (warn) for every bar in a run of >= `min_run` identical closes.

    Intraday frames need `session_date` beside `ts` (`sessions.with_session_date` adds it).
    """
    candidate = (pl.col("volume") == 0) if require_zero_volume else pl.lit(True)
    bars = by_instrument(frame.select(key, *time_columns(frame), "close", "volume"), key).with_columns(
        candidate.fill_null(False).alias("__candidate"))
    continues = (
        (pl.col("close") == previous(pl.col("close"), key))
        & pl.col("__candidate")
        & previous(pl.col("__candidate"), key)
    ).fill_null(False)
    # Runs are contiguous row ranges: their length is last index - first index + 1, no grouping needed.
    row = pl.int_range(pl.len(), dtype=pl.Int64)
    runs = (
        bars.with_columns(continues.alias("__continues"))
        .with_columns(
            pl.when(~pl.col("__continues")).then(row).forward_fill().alias("__first"),
            pl.when(~pl.col("__continues").shift(-1).fill_null(False)).then(row).backward_fill().alias("__last"),
        )
        .with_columns((pl.col("__last") - pl.col("__first") + 1).alias("__length"))
        .filter(pl.col("__candidate") & (pl.col("__length") >= min_run))
    )
    zero = " with volume 0" if require_zero_volume else ""
    return make_findings(
        runs, key=key, kind="stale", severity=WARN,
        detail=pl.format("close {} unchanged for {} bars" + zero, pl.col("close"), pl.col("__length")),
        value=pl.col("__length"),
    )
