"""What a run did, in a few lines: rows or messages per asset, checks, failures."""

from __future__ import annotations

from dataclasses import dataclass

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
    checks: dict[str, list[str]] = {}
    passed = failed = 0
    for ev in result.get_asset_check_evaluations():
        key = ev.asset_key.to_user_string()
        ok = ev.passed
        passed += ok
        failed += not ok
        checks.setdefault(key, []).append(f"{ev.check_name}:{'ok' if ok else ev.severity.value.lower()}")
    lines = []
    for ev in result.get_asset_materialization_events():
        mat = ev.materialization
        key = mat.asset_key.to_user_string()
        lines.append(AssetLine(asset=key, count=_count(dict(mat.metadata)), checks=" ".join(checks.get(key, []))))
    failures = [
        f"{ev.step_key}: {ev.step_failure_data.error.message.strip() if ev.step_failure_data.error else 'failed'}"
        for ev in result.all_events if ev.is_step_failure and ev.step_failure_data
    ]
    return RunSummary(run_id=result.run_id, success=result.success, assets=lines, checks_passed=passed,
                      checks_failed=failed, failures=failures)
