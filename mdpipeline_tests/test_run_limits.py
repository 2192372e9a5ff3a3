"""Runs that hold a provider pool, and the real-time jobs, carry a `dagster/max_runtime` limit the daemon enforces."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml

from mdpipeline.orchestration.assembly import build_definitions
from mdpipeline.orchestration.run_limits import MAX_RUNTIME_TAG, max_runtime_seconds
from mdpipeline_tests.pipeline_helpers import settings_for

ROOT = Path(__file__).resolve().parent.parent


def _pools(job: dg.JobDefinition) -> set[str]:
    return {node.definition.pool for node in job.graph.node_dict.values() if getattr(node.definition, "pool", None)}


def test_every_job_that_holds_a_provider_pool_has_a_max_runtime() -> None:
    defs = build_definitions(settings_for("postgresql://x@127.0.0.1/x", "127.0.0.1:1"))
    holding = []
    for job in defs.resolve_all_job_defs():
        if job.name.startswith("__"):
            continue  # the implicit asset job: UI backfills, bounded by the instance's max_runtime_seconds
        if any(p.startswith("provider_") for p in _pools(job)):
            holding.append(job.name)
            assert float(job.tags[MAX_RUNTIME_TAG]) == max_runtime_seconds("PROVIDER"), job.name
    assert holding, "no job holds a provider pool: the check would prove nothing"
    assert float(defs.get_job_def("realtime_ticks").tags[MAX_RUNTIME_TAG]) == 1800
    assert float(defs.get_job_def("stream_gap_repair").tags[MAX_RUNTIME_TAG]) == 3600


def test_limits_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MDP_PROVIDER_RUN_MAX_RUNTIME", "600")
    assert max_runtime_seconds("PROVIDER") == 600
    monkeypatch.setenv("MDP_PROVIDER_RUN_MAX_RUNTIME", "0")
    with pytest.raises(ValueError, match="positive"):
        max_runtime_seconds("PROVIDER")
    monkeypatch.setenv("MDP_PROVIDER_RUN_MAX_RUNTIME", "an hour")
    with pytest.raises(ValueError, match="must be a number"):
        max_runtime_seconds("PROVIDER")


@pytest.mark.parametrize("path", ["mdpipeline/devservices/dagster.yaml", "deploy/dagster.yaml"])
def test_both_instances_monitor_runs_with_a_ceiling_and_retry_dead_workers(path: str) -> None:
    config = yaml.safe_load((ROOT / path).read_text())
    assert config["run_monitoring"]["enabled"] is True
    assert config["run_monitoring"]["max_runtime_seconds"] > 0
    # a run whose worker died is relaunched; a failed asset is not (steps retry transient faults themselves)
    assert config["run_retries"] == {"enabled": True, "max_retries": 1, "retry_on_asset_or_op_failure": False}
