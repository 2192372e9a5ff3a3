"""Price outliers: log returns far outside a robust band, and price gaps across sessions.

Returns are close-to-close within an instrument (daily: across sessions; intraday: within a
session, with the session's first bar measured open-to-close, since the overnight move is the gap
check's business). Gaps compare a session's first open with the previous session's last close.

A corporate action on the ex-date moves raw prices on purpose: a split of ratio r by -ln(r), a cash
dividend d by ln(1 - d / previous close). That expected move is taken out before testing, so a
move the action explains is not flagged; it is reported as `corporate_action` (info) instead.

A single bad close (a spike) makes two returns abnormal: up into it and down out of it. When the
next return reverts at least half of an outlier, only the spiked bar is flagged; the gap after a
flagged bar is not counted either (it is measured from a close already known to be wrong).
"""

from __future__ import annotations

import polars as pl

from mdpipeline.quality.action_moves import expected_moves
from mdpipeline.quality.findings import INFO, WARN, concat_findings, is_intraday, make_findings, time_columns
from mdpipeline.quality.ordering import by_instrument, following, previous, with_segments
from mdpipeline.quality.robust import with_robust_z

PRICE_INPUTS = ("session_date", "ts", "open", "close")


def _ordered(frame: pl.DataFrame, key: str) -> pl.DataFrame:
    """The price columns in instrument-then-time order, with the previous close and `__first`
    (the bar opens its session)."""
    bars = with_segments(by_instrument(frame.select(key, *(c for c in PRICE_INPUTS if c in frame.columns)), key), key)
    prev_session = previous(pl.col("session_date"), key)
    return bars.with_columns(
        previous(pl.col("close"), key).alias("__prev_close"),
        (prev_session.is_null() | (pl.col("session_date") != prev_session)).alias("__first"),
    )


def return_outliers(
    frame: pl.DataFrame, *, key: str = "symbol", k: float = 8.0, window: int | None = None,
    min_periods: int = 5, min_sigma: float = 0.0005, min_abs: float = 0.0, actions: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Findings `return_outlier` (warn) and `corporate_action` (info, a move the action explains).

    A return is an outlier when it is more than `k` robust sigmas from the instrument's median and
    larger than `min_abs` (a log move): the absolute floor keeps fat-tailed minute data from
    flagging every lively minute of a quiet instrument.
    """
    bars = expected_moves(_ordered(frame, key), actions, key)
    intraday = is_intraday(frame)
    close_to_close = (pl.col("close") / pl.col("__prev_close")).log()
    raw = (pl.when(pl.col("__first")).then((pl.col("close") / pl.col("open")).log()).otherwise(close_to_close)
           if intraday else close_to_close)
    scored = bars.with_columns(raw.alias("__raw")).with_columns(
        (pl.col("__raw") - (pl.lit(0.0) if intraday else pl.col("__move"))).alias("__r"))
    band = {"window": window, "min_periods": min_periods, "floor": min_sigma}
    scored = with_robust_z(scored, "__r", "__seg", alias="__z", **band)
    if actions is not None and not actions.is_empty():
        scored = with_robust_z(scored, "__raw", "__seg", alias="__zraw", **band)
    else:
        scored = scored.with_columns(pl.lit(None, dtype=pl.Float64).alias("__zraw"))
    nxt = following(pl.col("__r"), key)
    out = (pl.col("__z").abs() > k) & (pl.col("__r").abs() > min_abs)
    reverts = out & (nxt * pl.col("__r") < 0) & ((pl.col("__r") + nxt).abs() <= 0.5 * pl.col("__r").abs())
    if intraday:  # the next bar's return only reverts within the session
        reverts = reverts & ~following(pl.col("__first"), key).fill_null(True)
    scored = scored.with_columns(out.fill_null(False).alias("__out"), reverts.fill_null(False).alias("__spike"))
    scored = scored.with_columns(previous(pl.col("__spike"), key).fill_null(False).alias("__reversal"))
    flagged = scored.filter(pl.col("__out") & ~pl.col("__reversal"))
    explained = scored.filter(~pl.col("__out") & (pl.col("__zraw").abs() > k) & (pl.col("__raw").abs() > min_abs)
                              & pl.col("__why").is_not_null())
    return concat_findings([
        make_findings(
            flagged, key=key, kind="return_outlier", severity=WARN,
            detail=pl.format("log return {} is {} robust sigmas from the median ({})",
                             pl.col("__r").round(4), pl.col("__z").round(1),
                             pl.when(pl.col("__spike")).then(pl.lit("spike: reverts next bar"))
                             .otherwise(pl.lit("jump"))),
            value=pl.col("__z")),
        make_findings(
            explained, key=key, kind="corporate_action", severity=INFO,
            detail=pl.format("log return {} explained by {}", pl.col("__raw").round(4), pl.col("__why")),
            value=pl.col("__zraw")),
    ])


def price_gaps(
    frame: pl.DataFrame, *, key: str = "symbol", k: float = 8.0, min_abs: float = 0.02, min_periods: int = 5,
    min_sigma: float = 0.0005, actions: pl.DataFrame | None = None, suspects: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Findings `price_gap` (warn): a session's first open far from the previous session's last close.

    Flagged when |log(open / previous close)|, less any corporate-action move, is both more than
    `k` robust sigmas from the instrument's usual gap and more than `min_abs` (a log move; 0.02 is
    about 2%), so a quiet instrument's ordinary gap is not an alarm; with fewer than `min_periods`
    gaps to learn from, `min_abs` alone decides. Gaps right after a bar in `suspects` (e.g. return
    outliers) are not counted.
    """
    bars = expected_moves(_ordered(frame, key), actions, key)
    gap = (pl.col("open") / pl.col("__prev_close")).log() - pl.col("__move")
    gaps = bars.filter(pl.col("__first") & pl.col("__prev_close").is_not_null()).with_columns(gap.alias("__gap"))
    gaps = with_robust_z(gaps, "__gap", "__seg", alias="__z", min_periods=min_periods, floor=min_sigma)
    flagged = gaps.filter(
        (pl.col("__gap").abs() > min_abs) & ((pl.col("__z").abs() > k) | pl.col("__z").is_null()))
    if suspects is not None and not suspects.is_empty():
        prev = _previous_bar(bars, key)
        bad = suspects.select(pl.col("instrument").alias("__pi"), pl.col("session_date").alias("__pd"),
                              pl.col("ts").alias("__pt")).unique()
        flagged = flagged.join(prev, on=[key, *time_columns(frame)], how="left").join(
            bad, on=["__pi", "__pd", "__pt"], how="anti", nulls_equal=True)
    return make_findings(
        flagged, key=key, kind="price_gap", severity=WARN,
        detail=pl.format("open {} vs previous close {}: log gap {} ({} robust sigmas)",
                         pl.col("open"), pl.col("__prev_close"), pl.col("__gap").round(4), pl.col("__z").round(1)),
        value=pl.col("__gap"))


def _previous_bar(bars: pl.DataFrame, key: str) -> pl.DataFrame:
    """For each bar (of an ordered frame), the instrument key as text and the time of the bar before it."""
    intraday = "ts" in bars.columns
    return bars.select(
        key, *time_columns(bars),
        pl.col(key).cast(pl.String).alias("__pi"),
        previous(pl.col("session_date"), key).alias("__pd"),
        (previous(pl.col("ts"), key) if intraday else pl.lit(None, dtype=pl.Datetime("us", "UTC"))).alias("__pt"),
    )
