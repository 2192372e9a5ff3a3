"""Raw topics that lose what was processed: recreated, emptied by retention, ending before the stored offset.

The stored offset (`ops.stream_offsets`) belongs to one incarnation of the topic. Each case runs the real
Dagster sensor and realtime_ticks job against the real broker after the fault, and checks that
processing neither waits forever nor skips new frames silently: it resumes where the frames it has
not seen begin, logs why, and records the interval in between as a gap (origin `log_reset`) from the
last processed frame's receive time, so gap repair backfills it.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime, timedelta

import dagster as dg
import psycopg
import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from mdpipeline.distribute.topics import TopicSpec, ensure_topics, raw_stream_topic
from mdpipeline.orchestration.assembly import build_definitions
from mdpipeline.orchestration.realtime import raw_stream_sensor
from mdpipeline.orchestration.resources import DatabaseResource, KafkaResource
from mdpipeline.stream.landing import RawLanding
from mdpipeline.stream.synthetic import history_frames, synthetic_history
from mdpipeline_tests.faults.invariants import assert_outbox_drained, assert_ticks_unique
from mdpipeline_tests.pipeline_helpers import settings_for

pytestmark = pytest.mark.faults

START = datetime(2024, 6, 10, 14, 0, tzinfo=UTC)
SYMBOLS = ["AAPL", "MSFT"]


def _frames(first_second: int, seconds: int) -> list[str]:
    """Synthetic trade frames, one per second (two trades each), ids unique per second."""
    trades = synthetic_history(SYMBOLS, START + timedelta(seconds=first_second),
                               START + timedelta(seconds=first_second + seconds) - timedelta(microseconds=1),
                               view="stream")
    return history_frames(trades, per_frame=2)


class Realtime:
    """The real sensor and job over one raw topic, on an ephemeral instance."""

    def __init__(self, database_url: str, servers: str, topic: str) -> None:
        self.job = build_definitions(settings_for(database_url, servers)).get_job_def("realtime_ticks")
        self.sensor = raw_stream_sensor((topic,), name=f"reset_{uuid.uuid4().hex[:6]}")
        self.instance = dg.DagsterInstance.ephemeral()
        self.resources = {"db": DatabaseResource(url=database_url), "kafka": KafkaResource(bootstrap_servers=servers)}

    def requests(self) -> list[dg.RunRequest]:
        with dg.build_sensor_context(instance=self.instance, resources=self.resources) as context:
            result = self.sensor(context)
        return [] if isinstance(result, dg.SkipReason) else list(result.run_requests or [])

    def run_all(self) -> list[str]:
        """Run every requested range until none is left; returns the run keys."""
        keys: list[str] = []
        for _ in range(10):
            requests = self.requests()
            if not requests:
                return keys
            for request in requests:
                keys.append(str(request.run_key))
                result = self.job.execute_in_process(run_config=request.run_config, instance=self.instance,
                                                     tags=request.tags)
                assert result.success
        raise AssertionError("the sensor kept requesting ranges")


def _land(servers: str, topic: str, frames: list[str]) -> None:
    landing = RawLanding(servers, topic, "synthetic")
    for frame in frames:
        landing.land(frame)
    assert landing.flush() == 0


def _recreate(servers: str, spec: TopicSpec) -> None:
    admin = AdminClient({"bootstrap.servers": servers})
    admin.delete_topics([spec.name], operation_timeout=15)[spec.name].result(15)
    deadline = time.monotonic() + 30
    while True:
        try:
            if ensure_topics(servers, (spec,)):
                return
        except Exception:  # the deletion is still under way
            pass
        assert time.monotonic() < deadline, "the topic could not be created again"
        time.sleep(0.2)


def _sequences(conn: psycopg.Connection) -> set[int]:
    return {r[0] for r in conn.execute("select sequence from md.ticks")}


def _ids(frames: list[str]) -> set[int]:
    import json

    return {m["i"] for f in frames for m in json.loads(f)}


@pytest.fixture
def topic(kafka_bootstrap: str) -> TopicSpec:
    spec = raw_stream_topic(f"synthetic-{uuid.uuid4().hex[:8]}")
    ensure_topics(kafka_bootstrap, (spec,))
    return spec


def test_a_recreated_topic_is_detected_and_processed_from_its_start(
    database_url: str, conn: psycopg.Connection, kafka_bootstrap: str, topic: TopicSpec,
    caplog: pytest.LogCaptureFixture,
) -> None:
    old = _frames(0, 20)
    _land(kafka_bootstrap, topic.name, old)
    realtime = Realtime(database_url, kafka_bootstrap, topic.name)
    assert realtime.run_all() == [f"{topic.name}:0:0-19"]
    last_received = conn.execute("select last_received_at from ops.stream_offsets").fetchone()

    _recreate(kafka_bootstrap, topic)
    new = _frames(100, 25)  # more frames than the old incarnation had: offsets 0..24 pass the stored 20
    _land(kafka_bootstrap, topic.name, new)
    with caplog.at_level(logging.WARNING, logger="mdpipeline.stream.offsets"):
        keys = realtime.run_all()
    assert keys == [f"{topic.name}:0:0-24"]  # from the new log's start, not from the stored offset 20
    assert _sequences(conn) == _ids(old) | _ids(new)
    assert "was recreated" in caplog.text

    [gap] = conn.execute("select origin, disconnected_at, reconnected_at, reason, raw_offset from ops.stream_gaps")\
        .fetchall()
    assert gap[0] == "log_reset"
    assert last_received is not None
    assert gap[1] == last_received[0]
    assert gap[2] >= gap[1]
    assert "recreated" in gap[3]
    assert gap[4] == 0
    assert conn.execute("select next_offset, topic_id is not null from ops.stream_offsets").fetchone() == (25, True)
    assert_ticks_unique(conn)
    assert_outbox_drained(conn, kafka_bootstrap)


def test_frames_deleted_before_processing_become_a_gap(
    database_url: str, conn: psycopg.Connection, kafka_bootstrap: str, topic: TopicSpec,
) -> None:
    first = _frames(0, 10)
    _land(kafka_bootstrap, topic.name, first)
    realtime = Realtime(database_url, kafka_bootstrap, topic.name)
    realtime.run_all()
    lost, kept = _frames(10, 10), _frames(20, 10)
    _land(kafka_bootstrap, topic.name, lost + kept)
    # Retention (here: delete_records) removes frames 10..19 before they were processed.
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    [future] = admin.delete_records([TopicPartition(topic.name, 0, 20)], request_timeout=15).values()
    future.result(15)

    assert realtime.run_all() == [f"{topic.name}:0:20-29"]
    assert _sequences(conn) == _ids(first) | _ids(kept)
    [(origin, reason)] = conn.execute("select origin, reason from ops.stream_gaps").fetchall()
    assert origin == "log_reset"
    assert "10..19 were deleted" in reason


def test_a_stored_offset_past_the_log_end_resumes_after_the_last_processed_frame(
    database_url: str, conn: psycopg.Connection, kafka_bootstrap: str, topic: TopicSpec,
) -> None:
    """Same topic id, but the log ends before the stored offset (a truncated log: an unclean leader election,
    a restored broker). Simulated by moving the stored offset past the end; frames landed after the last
    processed one must still be processed, not waited for until the offsets pass the stored one."""
    first = _frames(0, 10)
    _land(kafka_bootstrap, topic.name, first)
    realtime = Realtime(database_url, kafka_bootstrap, topic.name)
    realtime.run_all()
    conn.execute("update ops.stream_offsets set next_offset = 1000")
    time.sleep(0.01)
    later = _frames(50, 5)
    _land(kafka_bootstrap, topic.name, later)

    assert realtime.run_all() == [f"{topic.name}:0:10-14"]
    assert _sequences(conn) == _ids(first) | _ids(later)
    [(origin, reason)] = conn.execute("select origin, reason from ops.stream_gaps").fetchall()
    assert origin == "log_reset"
    assert "ends at offset 15 but offsets up to 999 were processed" in reason
