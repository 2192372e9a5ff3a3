"""Fault injection and outbox set-up shared by the fault tests."""

from __future__ import annotations

import os
import signal
import time
import uuid
from datetime import date

import polars as pl
import psycopg

from mdpipeline.contracts.events import BARS_1D_EVENT_FIELDS
from mdpipeline.devservices import LocalBroker
from mdpipeline.distribute.outbox import outbox_rows, replace_pending
from mdpipeline.distribute.topics import BARS_1D, TopicSpec, ensure_topics
from mdpipeline_tests.pipeline_helpers import canonical_bars

SESSION = date(2024, 6, 3)


def kill(broker: LocalBroker) -> None:
    """SIGKILL the broker's JVM (no shutdown hook runs) and wait until it is gone."""
    pid = broker.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while broker.is_running():
        assert time.monotonic() < deadline, "the killed broker did not exit"
        time.sleep(0.02)


def pending_bars(conn: psycopg.Connection, servers: str, n: int, *, partitions: int = 3) -> tuple[str, pl.DataFrame]:
    """A new topic and n committed, pending outbox rows of daily-bar events for it; returns (topic, rows)."""
    topic = TopicSpec(f"test.faults.{uuid.uuid4().hex[:8]}", partitions=partitions)
    ensure_topics(servers, (topic,))
    rows = outbox_rows(canonical_bars(n, SESSION), BARS_1D.name, BARS_1D_EVENT_FIELDS,
                       {"mdp-run-id": uuid.uuid4().hex}).with_columns(pl.lit(topic.name).alias("topic"))
    with conn.transaction():
        replace_pending(conn, rows, provider="synthetic", start=SESSION, end=SESSION, topics=(topic.name,))
    return topic.name, rows
