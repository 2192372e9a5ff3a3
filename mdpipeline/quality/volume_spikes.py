"""Volume spikes: a bar trading far more than the instrument usually does.

The baseline is the rolling median volume of the instrument's previous `window` bars (the bar
itself excluded, bars with volume 0 ignored: "no trades" is not a baseline). Volumes are counted in
split-adjusted shares, so a split's ex-date is not a spike. A bar whose volume is more than `k` times
the baseline is flagged `volume_spike`, with the ratio as the value.
"""

from __future__ import annotations

import polars as pl

from mdpipeline.quality.action_moves import with_split_log
from mdpipeline.quality.findings import WARN, make_findings, time_columns
from mdpipeline.quality.ordering import by_instrument, with_segments


def volume_spikes(
    frame: pl.DataFrame, *, key: str = "symbol", k: float = 10.0, window: int = 20, min_periods: int = 5,
    actions: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Findings `volume_spike` (warn) where volume / rolling median of previous volumes > k."""
    bars = with_segments(by_instrument(frame.select(key, *time_columns(frame), "volume"), key), key)
    bars = with_split_log(bars, actions, key)
    traded = pl.when(pl.col("__split_volume") > 0).then(pl.col("__split_volume"))
    baseline = traded.shift(1).rolling_median(window, min_samples=min_periods).over("__seg")
    flagged = bars.with_columns(baseline.alias("__baseline")).with_columns(
        (pl.col("__split_volume") / pl.col("__baseline")).alias("__ratio")).filter(pl.col("__ratio") > k)
    return make_findings(
        flagged, key=key, kind="volume_spike", severity=WARN,
        detail=pl.format("volume {} is {}x the median of the previous {} bars", pl.col("volume"),
                         pl.col("__ratio").round(1), pl.lit(window)),
        value=pl.col("__ratio"),
    )
