"""The real-time job's lag as Dagster sees it: each run's `realtime/ticks` materialization records how far the
raw stream is behind, and the `lag` asset check fails when that passes the configured bound.

Real broker, real database, real sensor evaluation and job runs (in process, on one instance).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import dagster as dg
import pytest

from mdpipeline.distribute.topics import TopicSpec, ensure_topics
from mdpipeline.orchestration.assembly import build_definitions
from mdpipeline.orchestration.realtime import LAG_CHECK, REALTIME_KEY, raw_stream_sensor
from mdpipeline.orchestration.resources import DatabaseResource, KafkaResource
from mdpipeline.stream.landing import RawLanding
from mdpipeline.stream.synthetic import synthetic_frames
from mdpipeline_tests.pipeline_helpers import settings_for

START = datetime(2024, 6, 10, 14, 0, tzinfo=UTC)


def test_runs_record_the_lag_and_the_check_fails_past_the_bound(
    database_url: str, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MDP_REALTIME_MAX_LAG_FRAMES", "4")
    monkeypatch.setenv("MDP_REALTIME_MAX_LAG_SECONDS", "0")  # no bound on seconds: the frames bound decides
    topic = TopicSpec(f"raw.stream.synthetic-{uuid.uuid4().hex[:8]}.v1", partitions=1)
    ensure_topics(kafka_bootstrap, (topic,))
    landing = RawLanding(kafka_bootstrap, topic.name, "synthetic")
    for frame in synthetic_frames(["AAPL", "MSFT"], start=START, frames=12, per_frame=2, correction_every=0):
        landing.land(frame)
    assert landing.flush() == 0

    defs = build_definitions(settings_for(database_url, kafka_bootstrap))
    job = defs.get_job_def("realtime_ticks")
    sensor = raw_stream_sensor((topic.name,), name="lag_raw_stream", max_messages=5)  # 12 frames: 3 runs
    instance = dg.DagsterInstance.ephemeral()
    resources = {"db": DatabaseResource(url=database_url), "kafka": KafkaResource(bootstrap_servers=kafka_bootstrap)}
    seen = []
    while True:
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            result = sensor(context)
        if isinstance(result, dg.SkipReason):
            break
        [request] = result.run_requests or []
        run = job.execute_in_process(run_config=request.run_config, instance=instance, tags=request.tags)
        assert run.success  # a lag past the bound fails the check, not the run: the range is applied
        [materialization] = run.asset_materializations_for_node("process_raw_range")
        assert materialization.asset_key == REALTIME_KEY
        [check] = run.get_asset_check_evaluations()
        assert check.check_name == LAG_CHECK
        seen.append((materialization.metadata["frames_behind"].value, materialization.metadata["trades"].value,
                     check.passed, check.severity))
        assert materialization.metadata["seconds_behind"].value >= 0
    assert seen == [(7, 10, False, dg.AssetCheckSeverity.ERROR), (2, 10, True, dg.AssetCheckSeverity.ERROR),
                    (0, 4, True, dg.AssetCheckSeverity.ERROR)]

    # The check is on the asset in the UI's terms too: its latest evaluation passed.
    record = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(REALTIME_KEY, LAG_CHECK)])[dg.AssetCheckKey(REALTIME_KEY, LAG_CHECK)]
    assert record.status.value == "SUCCEEDED"


def test_lag_bounds_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from mdpipeline.stream.lag import DEFAULT_MAX_LAG_FRAMES, DEFAULT_MAX_LAG_SECONDS, LagBounds, StreamLag

    monkeypatch.delenv("MDP_REALTIME_MAX_LAG_SECONDS", raising=False)
    monkeypatch.delenv("MDP_REALTIME_MAX_LAG_FRAMES", raising=False)
    assert LagBounds.from_env() == LagBounds(DEFAULT_MAX_LAG_SECONDS, DEFAULT_MAX_LAG_FRAMES)
    monkeypatch.setenv("MDP_REALTIME_MAX_LAG_SECONDS", "5")
    monkeypatch.setenv("MDP_REALTIME_MAX_LAG_FRAMES", "0")
    bounds = LagBounds.from_env()
    assert bounds == LagBounds(5.0, None)
    assert bounds.exceeded(StreamLag(frames_behind=10**9, seconds_behind=5.0, log_end=0)) == []
    assert bounds.exceeded(StreamLag(frames_behind=1, seconds_behind=5.5, log_end=0)) == ["5.5 s behind (bound 5 s)"]
    monkeypatch.setenv("MDP_REALTIME_MAX_LAG_SECONDS", "soon")
    with pytest.raises(ValueError, match="MDP_REALTIME_MAX_LAG_SECONDS must be a number"):
        LagBounds.from_env()


def test_range_backfills_never_select_the_realtime_asset(database_url: str, kafka_bootstrap: str) -> None:
    """realtime/ticks takes one raw range per run (its sensors give it): backfill, replay and demo leave it out."""
    from mdpipeline.orchestration.runner import select_assets

    defs = build_definitions(settings_for(database_url, kafka_bootstrap))
    graph = defs.resolve_asset_graph()
    for providers, select in ((None, None), (["synthetic"], None), (None, "*")):
        keys = select_assets(defs, providers, select).resolve(graph)
        assert keys
        assert REALTIME_KEY not in keys
