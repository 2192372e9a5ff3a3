"""Run every anomaly detector over one partition range of bars, with the right context and order.

The detectors need history to learn a band from (a one-session partition has one daily return per
instrument), so earlier bars can be passed as `history`: they feed the bands, but only findings
about sessions inside [start, end] are reported. Rows outside the window are session-window errors
and are kept out of the soft detectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import polars as pl

from mdpipeline.quality.completeness import Completeness, completeness
from mdpipeline.quality.findings import concat_findings, in_window
from mdpipeline.quality.metrics import partition_metrics
from mdpipeline.quality.ordering import by_instrument
from mdpipeline.quality.outliers import price_gaps, return_outliers
from mdpipeline.quality.session_window import session_window
from mdpipeline.quality.staleness import stale_runs
from mdpipeline.quality.thresholds import Thresholds
from mdpipeline.quality.volume_spikes import volume_spikes
from mdpipeline.sessions import with_session_date

BAR_COLUMNS = ("session_date", "ts", "open", "high", "low", "close", "volume")


@dataclass(frozen=True)
class QualityReport:
    """Findings about [start, end] (every kind, one frame) and the completeness of the range."""

    start: date
    end: date
    rows: int
    findings: pl.DataFrame
    completeness: Completeness

    def of_kind(self, *kinds: str) -> pl.DataFrame:
        """Findings of the given kinds."""
        return self.findings.filter(pl.col("kind").is_in(kinds))

    def metrics(self, quarantined: dict[str, int] | None = None) -> dict[str, Any]:
        """Per-partition metrics (see metrics.partition_metrics)."""
        return partition_metrics(start=self.start, end=self.end, rows=self.rows, findings=self.findings,
                                 completeness=self.completeness, quarantined=quarantined)


def detect(
    frame: pl.DataFrame, start: date, end: date, *, thresholds: Thresholds, key: str = "symbol",
    calendar_name: str = "XNYS", instruments: pl.DataFrame | Sequence[str] | None = None,
    actions: pl.DataFrame | None = None, history: pl.DataFrame | None = None,
) -> QualityReport:
    """Completeness, session window, staleness, return outliers, price gaps and volume spikes.

    `frame`: validated bars of [start, end] (daily, or 1-minute with `ts`); `instruments`: what
    should be there (default: what is); `actions`: corporate actions (key, ex_date, action, ratio,
    amount) that explain moves; `history`: earlier bars of the same instruments, for context.
    """
    bars = with_session_date(frame, calendar_name)
    window = session_window(bars, start, end, key=key, calendar_name=calendar_name)
    inside = bars.filter(pl.col("session_date").is_between(start, end))
    cols = [key, *(c for c in BAR_COLUMNS if c in inside.columns)]
    context = inside.select(cols)
    if history is not None and not history.is_empty():
        earlier = with_session_date(history, calendar_name).filter(pl.col("session_date") < start)
        context = pl.concat([earlier.select(cols).cast(dict(context.schema)), context], how="vertical")
    context = by_instrument(context, key)  # once here, so each detector finds the frame already in order
    t = thresholds
    complete = completeness(inside, start, end, instruments=instruments, key=key, calendar_name=calendar_name)
    returns = return_outliers(context, key=key, k=t.returns.k, window=t.returns.window,
                              min_periods=t.returns.min_periods, min_sigma=t.returns.min_sigma,
                              min_abs=t.returns.min_abs, actions=actions)
    gaps = price_gaps(context, key=key, k=t.gaps.k, min_abs=t.gaps.min_abs, min_periods=t.gaps.min_periods,
                      min_sigma=t.gaps.min_sigma, actions=actions,
                      suspects=returns.filter(pl.col("kind") == "return_outlier"))
    stale = stale_runs(context, key=key, min_run=t.staleness.min_run,
                       require_zero_volume=t.staleness.require_zero_volume)
    volume = volume_spikes(context, key=key, k=t.volume.k, window=t.volume.window,
                           min_periods=t.volume.min_periods, actions=actions)
    soft = in_window(concat_findings([returns, gaps, stale, volume]), start, end)
    findings = concat_findings([window, complete.findings, soft])
    return QualityReport(start=start, end=end, rows=frame.height, findings=findings, completeness=complete)


def merge_reports(start: date, end: date, reports: Sequence[QualityReport]) -> QualityReport:
    """One report of [start, end] from reports of disjoint chunks of it (rows and bars add up)."""
    if not reports:
        return QualityReport(start=start, end=end, rows=0, findings=concat_findings([]),
                             completeness=Completeness(expected=0, present=0, no_trades=0,
                                                       findings=concat_findings([])))
    parts = [r.completeness for r in reports]
    complete = Completeness(expected=sum(p.expected for p in parts), present=sum(p.present for p in parts),
                            no_trades=sum(p.no_trades for p in parts),
                            findings=concat_findings([p.findings for p in parts]))
    return QualityReport(start=start, end=end, rows=sum(r.rows for r in reports),
                         findings=concat_findings([r.findings for r in reports]), completeness=complete)
