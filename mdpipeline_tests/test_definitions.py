"""The code location is the merge of one Definitions per domain, with the resources bound once at the top."""

from __future__ import annotations

import dagster as dg

from mdpipeline.orchestration.assembly import build_definitions, resources
from mdpipeline.orchestration.domains import Deployment, domain_definitions
from mdpipeline.universe import load_universe
from mdpipeline_tests.pipeline_helpers import settings_for


def _asset_keys(defs: dg.Definitions) -> set[dg.AssetKey]:
    return {key for a in defs.assets or () if isinstance(a, dg.AssetsDefinition) for key in a.keys}


def test_each_asset_check_job_and_sensor_belongs_to_exactly_one_domain() -> None:
    settings = settings_for("", "")
    domains = domain_definitions(Deployment.of(load_universe(settings.universe_path)))
    merged = build_definitions(settings).get_repository_def()
    keys = [_asset_keys(d) for d in domains]
    assert sum(len(k) for k in keys) == len(set().union(*keys))  # no asset in two domains
    assert set().union(*keys) == set(merged.asset_graph.get_all_asset_keys())
    jobs = [j.name for d in domains for j in d.jobs or ()]
    sensors = [s.name for d in domains for s in d.sensors or ()]
    assert len(jobs) == len(set(jobs))
    assert len(sensors) == len(set(sensors))
    assert {s.name for s in merged.sensor_defs} == set(sensors)
    for domain in domains:  # a domain loads on its own, upstream assets of other domains being external
        dg.Definitions.merge(domain, dg.Definitions(resources=resources(settings))).get_repository_def()
