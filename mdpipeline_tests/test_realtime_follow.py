"""The long-running real-time job (`realtime_stream`): one run follows a raw partition and applies its ranges as
they land, recording each range as a `realtime/ticks` materialization with its lag check, like the per-range
runs do. Real broker, real database, real Dagster sensor evaluation and run (in process).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import dagster as dg
import psycopg

from mdpipeline.distribute.topics import TopicSpec, ensure_topics
from mdpipeline.orchestration.assembly import build_definitions
from mdpipeline.orchestration.realtime import (
    FOLLOW_TAG,
    LAG_CHECK,
    REALTIME_KEY,
    FollowConfig,
    raw_stream_follow_sensor,
)
from mdpipeline.orchestration.resources import KafkaResource
from mdpipeline.stream.landing import RawLanding
from mdpipeline.stream.synthetic import synthetic_frames
from mdpipeline_tests.pipeline_helpers import settings_for

START = datetime(2024, 6, 10, 14, 0, tzinfo=UTC)


def test_one_run_follows_the_stream_and_applies_every_range(database_url: str, conn: psycopg.Connection,
                                                           kafka_bootstrap: str) -> None:
    topic = TopicSpec(f"raw.stream.synthetic-{uuid.uuid4().hex[:8]}.v1", partitions=1)
    ensure_topics(kafka_bootstrap, (topic,))
    landing = RawLanding(kafka_bootstrap, topic.name, "synthetic")
    frames = list(synthetic_frames(["AAPL", "MSFT"], start=START, frames=25, per_frame=2, correction_every=0))
    for frame in frames:
        landing.land(frame)
    assert landing.flush() == 0

    instance = dg.DagsterInstance.ephemeral()
    sensor = raw_stream_follow_sensor((topic.name,), name="follow_test")
    with dg.build_sensor_context(instance=instance,
                                 resources={"kafka": KafkaResource(bootstrap_servers=kafka_bootstrap)}) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    [request] = result.run_requests or []
    assert request.tags == {FOLLOW_TAG: topic.name}

    defs = build_definitions(settings_for(database_url, kafka_bootstrap))
    job = defs.get_job_def("realtime_stream")
    config = FollowConfig(topic=topic.name, max_messages=10, stop_when_idle=True)  # 25 frames: ranges of 10, 10, 5
    run = job.execute_in_process(run_config=dg.RunConfig(ops={"follow_raw_stream": config}), instance=instance,
                                 tags=request.tags)
    assert run.success
    materializations = run.asset_materializations_for_node("follow_raw_stream")
    assert [m.asset_key for m in materializations] == [REALTIME_KEY] * 3
    assert [m.metadata["frames"].value for m in materializations] == [10, 10, 5]
    assert [m.metadata["frames_behind"].value for m in materializations] == [15, 5, 0]
    checks = run.get_asset_check_evaluations()
    assert [(c.check_name, c.passed) for c in checks] == [(LAG_CHECK, True)] * 3
    assert conn.execute("select count(*) from md.ticks").fetchone() == (50,)
    assert conn.execute("select next_offset from ops.stream_offsets").fetchone() == (25,)
