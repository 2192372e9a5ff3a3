"""Data-quality asset checks of one provider's daily bars: the Dagster wiring of `mdpipeline.quality`.

Two check definitions per provider on the stored bars `md/<provider>/bars_1d`, both partitioned
like the assets (Dagster 1.13 runs a check with `partitions_def` over exactly the run's partition
range); they read what is stored, after the corporate actions (so a split's ex-date is explained
whatever order the steps run in, e.g. the demo's step-by-step runs):

- one op with the checks completeness, staleness, return_outliers, price_gaps, volume_spikes and
  quality_metrics (the per-partition summary), symbol group by symbol group over the whole range;
- divergence: the stored bars against other providers' in md.bars_1d.

All of them are soft (WARN): hard failures are quarantined before they get here. Every result is
also written to `quality.check_results`, with the same metadata the UI shows.
"""


from collections.abc import Iterator, Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl

from mdpipeline.chunks import symbol_groups
from mdpipeline.orchestration.partitions import trading_day_partitions
from mdpipeline.orchestration.resources import DatabaseResource, ProvidersResource
from mdpipeline.orchestration.retries import retry_transient
from mdpipeline.quality.detectors import QualityReport, detect, merge_reports
from mdpipeline.quality.divergence import Divergence, divergence
from mdpipeline.quality.findings import WARN, count_by_kind
from mdpipeline.quality.measure import lookback_start
from mdpipeline.quality.metrics import counts_markdown, findings_markdown, json_safe, partition_metrics
from mdpipeline.quality.thresholds import Thresholds, load_thresholds
from mdpipeline.sessions import session_dates
from mdpipeline.storage.bars import read_bars_1d
from mdpipeline.storage.corporate_actions import actions_by_symbol
from mdpipeline.storage.frames import ALL_SYMBOLS
from mdpipeline.storage.quarantine_store import quarantined_by_check, record_check

DATASET = "bars_1d"

BAR_CHECKS: dict[str, str] = {
    "completeness": "Every served instrument has a bar for every exchange session; bars with volume 0 count as"
                    " 'no trades', not as missing.",
    "staleness": "No runs of identical closes longer than the configured number of bars.",
    "return_outliers": "Log returns inside the robust median/MAD band, unless a corporate action explains them.",
    "price_gaps": "Session opens close to the previous session's close (corporate actions taken out).",
    "volume_spikes": "Volume within k times the rolling median of the previous bars (split-adjusted).",
    "quality_metrics": "Per-partition summary: completeness %, rows quarantined, flags by kind.",
}
_KINDS = {"completeness": ("missing", "missing_session"), "staleness": ("stale",),
          "return_outliers": ("return_outlier", "corporate_action"), "price_gaps": ("price_gap",),
          "volume_spikes": ("volume_spike",)}


def quality_checks(
    provider: str,
    partitions: dg.PartitionsDefinition | None = None,
    *,
    other_providers: Sequence[str] = (),
    after: Sequence[dg.AssetKey] = (),
    config_path: Path | None = None,
) -> list[dg.AssetChecksDefinition]:
    """The quality checks of `provider`'s daily bars.

    `partitions` must be the assets' partitions definition (default: XNYS trading days).
    `other_providers`: the divergence check runs after their `md/<p>/bars_1d` in a shared run.
    `after`: assets the bar checks wait for (e.g. the corporate-actions asset, so a split's
    ex-date is explained). `config_path`: thresholds file (default `MDP_QUALITY_CONFIG` or
    config/quality.yaml).
    """
    partitions = partitions or trading_day_partitions()
    stored_key = dg.AssetKey(["md", provider, DATASET])

    def thresholds() -> Thresholds:
        return load_thresholds(provider, DATASET, config_path)

    @dg.multi_asset_check(
        name=f"{provider}_{DATASET}_quality",
        specs=[dg.AssetCheckSpec(name, asset=stored_key, description=text, partitions_def=partitions,
                                 additional_deps=list(after))
               for name, text in BAR_CHECKS.items()],
        can_subset=True,
        compute_kind="polars",
    )
    @retry_transient
    def bar_quality(context: dg.AssetCheckExecutionContext, db: DatabaseResource,
                    providers: ProvidersResource) -> Iterator[dg.AssetCheckResult]:
        start, end = _partition_range(context)
        limits = thresholds()
        universe = providers.universe()
        symbols = providers.symbols_for(provider)
        served = universe.symbology.filter(pl.col("symbol").is_in(list(symbols)))
        reports = []
        with db.connection() as conn:
            first = lookback_start(start, limits.lookback_sessions, universe.exchange_calendar)
            actions = actions_by_symbol(conn, first, end)
            quarantined = quarantined_by_check(conn, provider, DATASET, start, end)
            sessions = session_dates(start, end, universe.exchange_calendar)
            # Daily bands learn from the whole range, so the range is cut by symbols only.
            for group in symbol_groups(symbols or (ALL_SYMBOLS,), len(sessions), 1.0):
                named = None if ALL_SYMBOLS in group else list(group)
                bars = read_bars_1d(conn, start=start, end=end, provider=provider, symbols=named)
                history = read_bars_1d(conn, start=first, end=start - timedelta(days=1), provider=provider,
                                       symbols=named)
                instruments = served if named is None else served.filter(pl.col("symbol").is_in(named))
                reports.append(detect(bars, start, end, thresholds=limits, key="symbol",
                                      calendar_name=universe.exchange_calendar,
                                      instruments=instruments.select("symbol", "valid_from", "valid_to"),
                                      actions=actions, history=history))
        report = merge_reports(start, end, reports)
        results = _bar_results(report, quarantined, limits)
        selected = {key.name for key in context.selected_asset_check_keys}
        yield from _record_and_yield(db, stored_key, start, end, context.run.run_id,
                                     {n: r for n, r in results.items() if n in selected})

    @dg.asset_check(
        asset=stored_key,
        name="divergence",
        description="Close (and OHLC) within the configured basis points of other providers' bars of the same"
                    " instrument and session, read from md.bars_1d.",
        partitions_def=partitions,
        additional_deps=[dg.AssetKey(["md", p, DATASET]) for p in other_providers if p != provider],
        compute_kind="polars",
    )
    @retry_transient
    def divergence_check(context: dg.AssetCheckExecutionContext, db: DatabaseResource) -> dg.AssetCheckResult:
        start, end = _partition_range(context)
        limits = thresholds().divergence
        with db.connection() as conn:
            bars = read_bars_1d(conn, start=start, end=end)
        result = divergence(bars, key="instrument_id", bps=limits.bps, flag_columns=limits.columns,
                            provider=provider, compare_with=limits.compare_with)
        outcome = _divergence_result(result, bars, provider, start, end)
        return next(_record_and_yield(db, stored_key, start, end, context.run.run_id, {"divergence": outcome}))

    return [bar_quality, divergence_check]


# -- results ---------------------------------------------------------------------------------------

_Outcome = tuple[bool, dict[str, Any], dict[str, Any]]  # passed, JSON metrics, UI-only metadata


def _bar_results(report: QualityReport, quarantined: dict[str, int], limits: Thresholds) -> dict[str, _Outcome]:
    """passed / metrics / UI metadata of every bar check."""
    found = report.findings
    out: dict[str, _Outcome] = {}
    for name, kinds in _KINDS.items():
        mine = found.filter(pl.col("kind").is_in(kinds))
        flagged = mine.filter(pl.col("severity") == WARN)
        metrics: dict[str, Any] = {"flagged": flagged.height, "by_kind": count_by_kind(mine),
                                   "instruments": flagged["instrument"].n_unique()}
        if name == "completeness":
            metrics |= report.completeness.as_dict()
            passed = report.completeness.pct >= limits.completeness.min_pct
        else:
            passed = flagged.is_empty()
        out[name] = (passed, metrics, {"findings": dg.MetadataValue.md(findings_markdown(mine))})
    summary = report.metrics(quarantined)
    flags = summary["flags_by_kind"]
    passed = (summary["rows_quarantined"] == 0 and not flags
              and report.completeness.pct >= limits.completeness.min_pct)
    table = counts_markdown({**{f"quarantined: {k}": v for k, v in summary["quarantined_by_check"].items()},
                             **{f"flag: {k}": v for k, v in flags.items()},
                             **{f"info: {k}": v for k, v in summary["info_by_kind"].items()}})
    out["quality_metrics"] = (passed, summary, {"summary": dg.MetadataValue.md(table)})
    return out


def _divergence_result(result: Divergence, bars: pl.DataFrame, provider: str, start: date, end: date) -> _Outcome:
    """passed / metrics / UI metadata of the divergence check (findings keyed by instrument id + symbol)."""
    names = bars.filter(pl.col("provider") == provider).select(
        pl.col("instrument_id").cast(pl.String).alias("instrument"), "symbol").unique("instrument")
    shown = result.findings.join(names, on="instrument", how="left").with_columns(
        pl.format("{} ({})", pl.col("instrument"), pl.col("symbol").fill_null("?")).alias("instrument")
    ).drop("symbol")
    metrics = partition_metrics(start=start, end=end, rows=bars.filter(pl.col("provider") == provider).height,
                                findings=result.findings, divergence=result)
    rows = {c: s["max"] for c, s in result.stats.items()}
    extra = {"findings": dg.MetadataValue.md(findings_markdown(shown)),
             "max_bps": dg.MetadataValue.md(counts_markdown({k: round(v) for k, v in rows.items()}, "column"))}
    return result.findings.is_empty(), metrics, extra


def _record_and_yield(db: DatabaseResource, key: dg.AssetKey, start: date, end: date, run_id: str,
                      results: dict[str, _Outcome]) -> Iterator[dg.AssetCheckResult]:
    """Store each outcome in quality.check_results, then hand it to Dagster."""
    with db.connection() as conn:
        for name, (passed, metrics, _) in results.items():
            record_check(conn, asset_key=key.to_user_string(), check_name=name, start=start, end=end,
                         passed=passed, severity="WARN", metadata=json_safe(metrics), run_id=run_id)
    for name, (passed, metrics, extra) in results.items():
        yield dg.AssetCheckResult(asset_key=key, check_name=name, passed=passed,
                                  severity=dg.AssetCheckSeverity.WARN,
                                  metadata={**_as_metadata(metrics), **extra})


def _as_metadata(metrics: dict[str, Any]) -> dict[str, Any]:
    """Plain numbers stay numbers in the UI; nested dicts become JSON metadata."""
    return {k: dg.MetadataValue.json(v) if isinstance(v, dict) else v for k, v in json_safe(metrics).items()}


# -- inputs ----------------------------------------------------------------------------------------

def _partition_range(context: dg.AssetCheckExecutionContext) -> tuple[date, date]:
    """The inclusive session range the check run covers."""
    keys = context.partition_key_range
    return date.fromisoformat(keys.start), date.fromisoformat(keys.end)
