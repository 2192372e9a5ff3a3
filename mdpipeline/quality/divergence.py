"""Cross-provider divergence: the same instrument and bar from two providers, compared in basis points.

Two vendors rarely agree to the cent (different trade filters, late prints), but they should agree
within a few basis points on the close. For every pair of providers holding the same bar
(instrument, session_date, and ts for intraday bars) the difference of each price column is
1e4 * |a - b| / ((a + b) / 2); a pair is flagged when any column in `flag_columns` exceeds `bps`.
With three or more providers each pair is reported, so the odd one out shows in every pair it is in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from mdpipeline.quality.findings import WARN, empty_findings, make_findings, time_columns

PRICE_COLUMNS = ("open", "high", "low", "close")


@dataclass(frozen=True)
class Divergence:
    """Pairs compared, per-column statistics in basis points, and the flagged pairs as findings."""

    pairs: int
    stats: dict[str, dict[str, float | int]]
    findings: pl.DataFrame
    threshold_bps: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe numbers for metrics."""
        return {"pairs_compared": self.pairs, "pairs_flagged": self.findings.height,
                "threshold_bps": self.threshold_bps, "bps": self.stats}


def divergence(
    frame: pl.DataFrame, *, key: str = "symbol", bps: float = 50.0, flag_columns: Sequence[str] = PRICE_COLUMNS,
    provider: str | None = None, compare_with: Sequence[str] | None = None,
) -> Divergence:
    """Compare providers' bars in `frame` (which has a `provider` column).

    `provider`: only pairs that include it (the check of one provider's asset); `compare_with`:
    only pairs with these other providers (None: every other provider).
    """
    on = [key, *time_columns(frame)]
    cols = [c for c in PRICE_COLUMNS if c in frame.columns]
    bars = frame.select(*on, "provider", *cols)
    left = bars if provider is None else bars.filter(pl.col("provider") == provider)
    right = bars if compare_with is None else bars.filter(pl.col("provider").is_in(list(compare_with)))
    if bars.select(pl.col("provider").n_unique()).item() < 2:  # one provider: no pairs, spare the self-join
        left = left.head(0)
    pairs = left.join(right, on=on, how="inner", suffix="_b").filter(
        (pl.col("provider") < pl.col("provider_b")) if provider is None else (pl.col("provider_b") != provider))
    diff = {c: (1e4 * (pl.col(c) - pl.col(f"{c}_b")).abs() / ((pl.col(c) + pl.col(f"{c}_b")) / 2)) for c in cols}
    pairs = pairs.with_columns(**{f"bps_{c}": e for c, e in diff.items()})
    flag_cols = [f"bps_{c}" for c in flag_columns if c in cols]
    worst = pl.max_horizontal(*flag_cols) if flag_cols else pl.lit(0.0)
    pairs = pairs.with_columns(worst.alias("__worst"))
    stats = {
        c: {k: (float(v) if isinstance(v, float) else int(v or 0)) for k, v in pairs.select(
            pl.col(f"bps_{c}").max().fill_null(0.0).round(2).alias("max"),
            pl.col(f"bps_{c}").mean().fill_null(0.0).round(2).alias("mean"),
            (pl.col(f"bps_{c}") > bps).sum().alias("over_threshold"),
        ).row(0, named=True).items()}
        for c in cols
    }
    flagged = pairs.filter(pl.col("__worst") > bps)
    if flagged.is_empty():
        return Divergence(pairs=pairs.height, stats=stats, findings=empty_findings(), threshold_bps=bps)
    parts = [pl.when(pl.col(f"bps_{c}") > bps).then(pl.format(f"{c} {{}} bps", pl.col(f"bps_{c}").round(1)))
             for c in cols]
    findings = make_findings(
        flagged, key=key, kind="divergence", severity=WARN,
        detail=pl.format("{} vs {}: {}", pl.col("provider"), pl.col("provider_b"),
                         pl.concat_str(parts, separator=", ", ignore_nulls=True)),
        value=pl.col("__worst"),
    )
    return Divergence(pairs=pairs.height, stats=stats, findings=findings, threshold_bps=bps)


def merge_divergence(parts: Sequence[Divergence], bps: float) -> Divergence:
    """One divergence of disjoint chunks: pairs and counts add up, maxima take the max, means are weighted."""
    pairs = sum(p.pairs for p in parts)
    columns = sorted({c for p in parts for c in p.stats}, key=PRICE_COLUMNS.index)
    stats: dict[str, dict[str, float | int]] = {}
    for c in columns:
        mine = [p for p in parts if c in p.stats]
        weight = sum(p.pairs for p in mine)
        stats[c] = {
            "max": max(float(p.stats[c]["max"]) for p in mine),
            "mean": round(sum(float(p.stats[c]["mean"]) * p.pairs for p in mine) / weight, 2) if weight else 0.0,
            "over_threshold": sum(int(p.stats[c]["over_threshold"]) for p in mine),
        }
    found = [p.findings for p in parts if p.findings.height]
    findings = pl.concat(found).sort("instrument", "session_date", "ts", nulls_last=False) if found else \
        empty_findings()
    return Divergence(pairs=pairs, stats=stats, findings=findings, threshold_bps=bps)
