"""A quality report of a session range, from the database: what `mdpipeline quality` prints.

Per provider and dataset: rows stored (`md.bars_1d`, `md.bars_1m`, `md.ticks`, `ref.corporate_actions`),
rows quarantined by check name (`quality.quarantine`, every stage), and the latest check results
(`quality.check_results`) with their key metrics: completeness, flags by kind, divergence.

"Latest" is decided per session: for each asset, check and session of the range the most recent
result whose partition range covers that session counts, so a re-run of part of a range supersedes
the older result for those sessions only. The metrics of the counted results are added up
(completeness from the expected and present counts, flags per kind), and results of ranges that
reach outside the requested one count whole (a check result is about its run's range). Pure core:
no Dagster; plain SQL with psycopg.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import psycopg

# dataset -> (table, date column) of what is stored
STORED: dict[str, tuple[str, str]] = {
    "bars_1d": ("md.bars_1d", "session_date"),
    "bars_1m": ("md.bars_1m", "session_date"),
    "ticks": ("md.ticks", "session_date"),
    "corporate_actions": ("ref.corporate_actions", "ex_date"),
}
COMPLETENESS_KEYS = ("expected", "present", "missing", "no_trades")
# Where a dataset's completeness comes from, first found wins (they carry the same numbers).
COMPLETENESS_CHECKS = ("quality_metrics", "completeness")

_LATEST_RESULTS = """
with days as (
    select d::date as day from generate_series(%(start)s::date, %(end)s::date, interval '1 day') d
), latest as (
    select distinct on (r.asset_key, r.check_name, days.day) r.result_id
    from quality.check_results r join days on days.day between r.partition_start and r.partition_end
    order by r.asset_key, r.check_name, days.day, r.checked_at desc, r.result_id desc
)
select r.asset_key, r.check_name, r.partition_start, r.partition_end, r.passed, r.severity, r.metadata,
       r.checked_at
from quality.check_results r
where r.result_id in (select result_id from latest)
order by r.asset_key, r.check_name, r.partition_start, r.checked_at
"""


@dataclass
class CheckSummary:
    """The counted results of one check of one asset over the range, with their metrics added up."""

    asset: str
    check: str
    results: int = 0
    passed: int = 0
    severity: str = ""
    last_checked_at: datetime | None = None
    partitions: list[tuple[date, date]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        """Results that did not pass."""
        return self.results - self.passed

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {"asset": self.asset, "check": self.check, "results": self.results, "passed": self.passed,
                "failed": self.failed, "severity": self.severity,
                "last_checked_at": self.last_checked_at.isoformat() if self.last_checked_at else None,
                "partitions": [[s.isoformat(), e.isoformat()] for s, e in self.partitions],
                "metrics": self.metrics}


@dataclass
class DatasetQuality:
    """Quality of one provider's dataset over the range."""

    provider: str
    dataset: str
    rows_stored: int | None = None  # None: the dataset has no table of its own
    quarantined_by_check: dict[str, int] = field(default_factory=dict)
    checks: list[CheckSummary] = field(default_factory=list)

    @property
    def rows_quarantined(self) -> int:
        """Rows held back in quality.quarantine (all stages)."""
        return sum(self.quarantined_by_check.values())

    @property
    def completeness(self) -> dict[str, Any] | None:
        """expected / present / missing / no_trades / completeness_pct from the checks, None when unchecked."""
        by_name = {c.check: c for c in self.checks}
        for name in (*COMPLETENESS_CHECKS, *by_name):
            found = by_name.get(name)
            if found is not None and "expected" in found.metrics:
                return {k: found.metrics[k] for k in (*COMPLETENESS_KEYS, "completeness_pct") if k in found.metrics}
        return None

    @property
    def flags_by_kind(self) -> dict[str, int]:
        """Warn and error findings per kind (a kind several checks report is counted once: the largest count)."""
        out: dict[str, int] = {}
        for check in self.checks:
            for kind, n in (check.metrics.get("flags_by_kind") or {}).items():
                out[kind] = max(out.get(kind, 0), int(n))
        return dict(sorted(out.items()))

    @property
    def divergence(self) -> dict[str, Any] | None:
        """Divergence statistics of the `divergence` check, None when it did not run."""
        for check in self.checks:
            if "divergence" in check.metrics:
                return check.metrics["divergence"]
        return None

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {"provider": self.provider, "dataset": self.dataset, "rows_stored": self.rows_stored,
                "rows_quarantined": self.rows_quarantined, "quarantined_by_check": self.quarantined_by_check,
                "completeness": self.completeness, "flags_by_kind": self.flags_by_kind,
                "divergence": self.divergence, "checks": [c.as_dict() for c in self.checks]}


def quality_report(conn: psycopg.Connection, start: date, end: date,
                   provider: str | None = None) -> list[DatasetQuality]:
    """Quality of every (provider, dataset) with stored rows, quarantined rows or check results in [start, end]."""
    if start > end:
        raise ValueError(f"start {start} is after end {end}")
    found: dict[tuple[str, str], DatasetQuality] = {}

    def entry(p: str, d: str) -> DatasetQuality:
        return found.setdefault((p, d), DatasetQuality(provider=p, dataset=d))

    for dataset, (table, column) in STORED.items():
        rows = conn.execute(
            f"select provider, count(*) from {table} where {column} between %s and %s"
            " and (%s::text is null or provider = %s) group by provider",
            (start, end, provider, provider)).fetchall()
        for p, n in rows:
            entry(p, dataset).rows_stored = int(n)
    for p, d, check, n in conn.execute(
            "select provider, dataset, check_name, count(*) from quality.quarantine"
            " where session_date between %s and %s and (%s::text is null or provider = %s)"
            " group by provider, dataset, check_name order by check_name", (start, end, provider, provider)):
        entry(p, d).quarantined_by_check[str(check)] = int(n)
    for summary in _check_summaries(conn, start, end):
        parts = summary.asset.split("/")
        if len(parts) != 3 or (provider is not None and parts[1] != provider):
            continue
        entry(parts[1], parts[2]).checks.append(summary)
    for (_, dataset), quality in found.items():
        if quality.rows_stored is None and dataset in STORED:
            quality.rows_stored = 0
    return [found[k] for k in sorted(found)]


def report_json(start: date, end: date, provider: str | None, datasets: Iterable[DatasetQuality]) -> dict[str, Any]:
    """The report as one JSON document."""
    return {"start": start.isoformat(), "end": end.isoformat(), "provider": provider,
            "datasets": [d.as_dict() for d in datasets]}


def _check_summaries(conn: psycopg.Connection, start: date, end: date) -> list[CheckSummary]:
    """The latest result of each check per session, grouped by (asset, check), metrics added up."""
    summaries: dict[tuple[str, str], CheckSummary] = {}
    for asset, check, p_start, p_end, passed, severity, metadata, checked_at in conn.execute(
            _LATEST_RESULTS, {"start": start, "end": end}):
        summary = summaries.setdefault((asset, check), CheckSummary(asset=asset, check=check))
        summary.results += 1
        summary.passed += bool(passed)
        if not passed or not summary.severity:
            summary.severity = severity
        if summary.last_checked_at is None or checked_at > summary.last_checked_at:
            summary.last_checked_at = checked_at
        summary.partitions.append((p_start, p_end))
        summary.metrics = add_metrics(summary.metrics, metadata or {})
    return [summaries[k] for k in sorted(summaries)]


def add_metrics(total: Mapping[str, Any], more: Mapping[str, Any]) -> dict[str, Any]:
    """Two results' metrics as one: counts add up, per-kind counts add up per kind, completeness % is
    recomputed from expected and present, divergence adds pairs and keeps the largest bps."""
    out = dict(total)
    for key in ("rows", "rows_quarantined", "flagged", "quarantined", "extended_hours", "rows_valid", "rows_in",
                *COMPLETENESS_KEYS):
        if isinstance(more.get(key), int | float):
            out[key] = out.get(key, 0) + more[key]
    for key in ("flags_by_kind", "info_by_kind", "quarantined_by_check", "by_kind", "findings_by_kind"):
        if isinstance(more.get(key), Mapping):
            merged = dict(out.get(key) or {})
            for kind, n in more[key].items():
                merged[kind] = merged.get(kind, 0) + n
            out[key] = dict(sorted(merged.items()))
    if "expected" in out:
        out["completeness_pct"] = 100.0 if not out["expected"] else round(100.0 * out["present"] / out["expected"], 4)
    if isinstance(more.get("divergence"), Mapping):
        out["divergence"] = _add_divergence(out.get("divergence") or {}, more["divergence"])
    if isinstance(more.get("on_quarantine"), str):
        out["on_quarantine"] = more["on_quarantine"]
    if isinstance(more.get("error"), str) and more["error"] != "none":
        out["error"] = more["error"]  # why a blocking check failed (the last such reason)
    return out


def _add_divergence(total: Mapping[str, Any], more: Mapping[str, Any]) -> dict[str, Any]:
    """Pairs add up; per column the largest max and the sum of pairs over the threshold (a mean is only
    kept while there is a single result: means of different ranges do not add)."""
    if not total:
        return dict(more)
    out: dict[str, Any] = {"pairs_compared": total.get("pairs_compared", 0) + more.get("pairs_compared", 0),
                           "pairs_flagged": total.get("pairs_flagged", 0) + more.get("pairs_flagged", 0),
                           "threshold_bps": more.get("threshold_bps", total.get("threshold_bps"))}
    columns: dict[str, dict[str, float]] = {c: dict(v) for c, v in (total.get("bps") or {}).items()}
    for column, stats in (more.get("bps") or {}).items():
        now = columns.setdefault(column, {"max": 0.0, "over_threshold": 0})
        now["max"] = max(now.get("max", 0.0), stats.get("max", 0.0))
        now["over_threshold"] = now.get("over_threshold", 0) + stats.get("over_threshold", 0)
    out["bps"] = {c: {"max": v.get("max", 0.0), "over_threshold": v.get("over_threshold", 0)}
                  for c, v in sorted(columns.items())}
    return out
