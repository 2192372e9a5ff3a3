"""What a run did, in a few lines: rows or messages per asset, checks, failures."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

import dagster as dg


@dataclass(frozen=True)
class AssetLine:
    """One asset's outcome in a run."""

    asset: str
    count: str
    checks: str


@dataclass(frozen=True)
class RunSummary:
    """A run's outcome for humans."""

    run_id: str
    success: bool
    assets: list[AssetLine]
    checks_passed: int
    checks_failed: int
    failures: list[str]


def _count(metadata: dict[str, dg.MetadataValue]) -> str:
    for key in ("messages", "rows", "payloads", "instruments"):
        if key in metadata:
            value = metadata[key].value
            return f"{value} {key}"
    return ""


def run_summary(result: dg.ExecuteInProcessResult) -> RunSummary:
    """Summarise an in-process run from its event log."""
    checks: dict[str, dict[str, str]] = {}
    passed = failed = 0
    for ev in result.get_asset_check_evaluations():
        key = ev.asset_key.to_user_string()
        ok = ev.passed
        passed += ok
        failed += not ok
        outcome = "ok" if ok else ev.severity.value.lower()
        previous = checks.setdefault(key, {}).get(ev.check_name)
        checks[key][ev.check_name] = outcome if previous in (None, "ok") else previous  # keep the worst
    # A single-run backfill reports one materialization per session, each with the whole range's
    # metadata: show each asset once, with the number of sessions.
    first: dict[str, AssetLine] = {}
    sessions: Counter[str] = Counter()
    for ev in result.get_asset_materialization_events():
        mat = ev.materialization
        key = mat.asset_key.to_user_string()
        sessions[key] += 1
        first.setdefault(key, AssetLine(asset=key, count=_count(dict(mat.metadata)), checks=" ".join(
            f"{name}:{outcome}" for name, outcome in checks.get(key, {}).items())))
    lines = [replace(line, count=f"{line.count} ({sessions[key]} sessions)") if sessions[key] > 1 else line
             for key, line in first.items()]
    failures = [
        f"{ev.step_key}: {ev.step_failure_data.error.message.strip() if ev.step_failure_data.error else 'failed'}"
        for ev in result.all_events if ev.is_step_failure and ev.step_failure_data
    ]
    return RunSummary(run_id=result.run_id, success=result.success, assets=lines, checks_passed=passed,
                      checks_failed=failed, failures=failures)
