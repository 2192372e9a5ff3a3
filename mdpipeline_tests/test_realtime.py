"""The real-time path: raw frames on a topic -> sensor -> realtime_ticks runs -> md.ticks and md.ticks.v1.

Real broker (Apache Kafka), real database, real Dagster sensor evaluation and job runs.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import dagster as dg
import psycopg
import pytest

from mdpipeline.distribute.subscriber import read_topic
from mdpipeline.distribute.topics import TICKS, TopicSpec, ensure_topics
from mdpipeline.orchestration.assembly import build_definitions
from mdpipeline.orchestration.realtime import raw_stream_sensor
from mdpipeline.orchestration.resources import DatabaseResource, KafkaResource
from mdpipeline.stream.landing import RawLanding
from mdpipeline.stream.synthetic import synthetic_frames
from mdpipeline_tests.pipeline_helpers import settings_for
from mdpipeline_tests.test_events_schema import schema_for

START = datetime(2024, 6, 10, 14, 0, tzinfo=UTC)
BAD_FRAME = json.dumps([
    {"T": "t", "S": "AAPL", "i": 900001, "x": "V", "p": -1.0, "s": 10, "c": ["@"], "t": "2024-06-10T15:00:00Z"},
    {"T": "t", "S": "ZZZZ", "i": 900002, "x": "V", "p": 10.0, "s": 10, "c": ["@"], "t": "2024-06-10T15:00:00Z"},
])


def _expected_trades(frames: list[str]) -> dict[int, float]:
    """Trade id -> price that should remain after applying corrections and cancels (valid symbols only)."""
    alive: dict[int, float] = {}
    for frame in frames:
        for m in json.loads(frame):
            if m["T"] == "t" and m["p"] > 0 and m["S"] != "ZZZZ":
                alive[m["i"]] = m["p"]
            elif m["T"] == "c":
                alive.pop(m["oi"], None)
                alive[m["ci"]] = m["cp"]
            elif m["T"] == "x":
                alive.pop(m["i"], None)
    return alive


def _ticks(conn: psycopg.Connection) -> dict[int, float]:
    return dict(conn.execute("select sequence, price from md.ticks").fetchall())  # type: ignore[arg-type]


def _evaluate(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, database_url: str,
              kafka_bootstrap: str) -> list[dg.RunRequest]:
    resources = {"db": DatabaseResource(url=database_url), "kafka": KafkaResource(bootstrap_servers=kafka_bootstrap)}
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        result = sensor(context)
    if isinstance(result, dg.SkipReason):
        return []
    return list(result.run_requests or [])


@pytest.fixture
def raw_topic(kafka_bootstrap: str) -> str:
    topic = TopicSpec(f"raw.stream.synthetic-{uuid.uuid4().hex[:8]}.v1", partitions=1)
    ensure_topics(kafka_bootstrap, (topic,))
    return topic.name


def test_sensor_runs_ranges_and_the_job_applies_each_exactly_once(
    database_url: str, kafka_bootstrap: str, raw_topic: str
) -> None:
    frames = [*synthetic_frames(["AAPL", "MSFT", "NVDA"], start=START, frames=60, per_frame=3,
                                correction_every=25), BAD_FRAME]
    landing = RawLanding(kafka_bootstrap, raw_topic, "synthetic")
    for frame in frames[:40]:
        landing.land(frame)
    landing.gap(START, START, "ConnectionClosedError: no close frame received")
    for frame in frames[40:]:
        landing.land(frame)
    assert landing.flush() == 0

    defs = build_definitions(settings_for(database_url, kafka_bootstrap))
    job = defs.get_job_def("realtime_ticks")
    sensor = raw_stream_sensor((raw_topic,), name="test_raw_stream")
    instance = dg.DagsterInstance.ephemeral()

    requests = _evaluate(sensor, instance, database_url, kafka_bootstrap)
    assert [r.run_key for r in requests] == [f"{raw_topic}:0:0-{len(frames)}"]  # 61 frames + 1 gap marker
    first = job.execute_in_process(run_config=requests[0].run_config, instance=instance, tags=requests[0].tags)
    assert first.success

    expected = _expected_trades(frames)
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert _ticks(conn) == expected
        assert conn.execute("select next_offset from ops.stream_offsets").fetchone() == (len(frames) + 1,)
        rejected = conn.execute("select symbol, check_name from quality.quarantine where dataset = 'ticks'"
                                " order by symbol").fetchall()
        assert rejected == [("AAPL", "value_range"), ("ZZZZ", "symbology")]
        assert conn.execute("select count(*) from ops.stream_gaps").fetchone() == (1,)
        outbox = conn.execute("select count(*), count(published_at) from ops.outbox_events").fetchone()
    assert outbox is not None
    assert outbox[0] == outbox[1] > len(expected)  # every event relayed (new trades and cancels)

    # The same range again (a retried run): no second effect in the database.
    again = job.execute_in_process(run_config=requests[0].run_config, instance=instance)
    assert again.success
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert _ticks(conn) == expected
        assert conn.execute("select count(*) from ops.outbox_events").fetchone() == (outbox[0],)
        assert conn.execute("select count(*) from quality.quarantine").fetchone() == (2,)

    # Nothing new: no run. New frames: a run for exactly the new range.
    assert _evaluate(sensor, instance, database_url, kafka_bootstrap) == []
    more = list(synthetic_frames(["SPY"], start=START, frames=5, per_frame=2, seed=11, correction_every=0))
    more = [f.replace('"i":', '"i":7000') for f in more]  # trade ids distinct from the first batch
    for frame in more:
        landing.land(frame)
    landing.flush()
    requests = _evaluate(sensor, instance, database_url, kafka_bootstrap)
    assert [r.run_key for r in requests] == [f"{raw_topic}:0:{len(frames) + 1}-{len(frames) + 5}"]
    assert job.execute_in_process(run_config=requests[0].run_config, instance=instance).success
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert len(_ticks(conn)) == len(expected) + 10

    # md.ticks.v1 carries every event as docs/ describe it; after dedup nothing is missing.
    events = [e for e in read_topic(kafka_bootstrap, TICKS.name)
              if e.headers.get("mdp-raw-topic") == raw_topic]
    validator = schema_for(TICKS.name)
    values = [json.loads(e.value) for e in events]
    for value in values:
        validator.validate(value)
    ids = {v["event_id"] for v in values}
    with psycopg.connect(database_url, autocommit=True) as conn:
        stored_ids = {r[0] for r in conn.execute("select event_id from ops.outbox_events where topic = %s",
                                                 (TICKS.name,))}
    assert ids == stored_ids
    alive = {v["data"]["sequence"] for v in values if v["data"]["action"] == "new"} - {
        v["data"]["sequence"] for v in values if v["data"]["action"] == "cancel"}
    assert len(alive) == len(expected) + 10
    corrected = [v["data"] for v in values if v["data"]["corrects"] is not None]
    assert corrected
    assert all(c["action"] == "new" for c in corrected)
