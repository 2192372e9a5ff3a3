"""The outbox relay against a real Apache Kafka broker that crashes, hangs or restarts.

Each test has a broker of its own (`own_broker`): SIGKILL while a drain is under way, SIGSTOP for
longer than the producer's message timeout, a restart. The contract checked is docs/events.md's:
nothing is marked published that the broker did not acknowledge, nothing is lost, a message may
arrive twice only when it was sent again after a failure, and then with the same event id; within
one producer session the idempotent producer never writes a message twice, even across a broker
crash.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter

import polars as pl
import psycopg
import pytest

from mdpipeline.devservices import LocalBroker
from mdpipeline.distribute.outbox import pending
from mdpipeline.distribute.publisher import PublishError
from mdpipeline.distribute.relay import DrainReport, drain
from mdpipeline.distribute.subscriber import Event, end_offsets, read_topic
from mdpipeline_tests.faults.helpers import kill, pending_bars

pytestmark = pytest.mark.faults

MANY = 20_000  # enough batches that a crash lands in the middle of the drain
BATCH = 2_000
SLOW_SENDS = {"batch.num.messages": 100, "linger.ms": 0}  # more produce requests, so a crash meets some in flight


def _held(servers: str, topic: str) -> int:
    """Messages the broker holds on topic (sum over partitions of high - low watermark)."""
    return sum(high - low for low, high in end_offsets(servers, topic).values())


def _crash_when(broker: LocalBroker, topic: str, at_least: int, *, restart_after: float | None) -> tuple[
        threading.Thread, list[int], list[BaseException]]:
    """A thread that SIGKILLs the broker once it holds `at_least` messages of topic (recording how many it
    held then) and, when `restart_after` is given, starts it again that many seconds later."""
    held_at_kill: list[int] = []
    errors: list[BaseException] = []
    servers = broker.bootstrap_servers

    def run() -> None:
        try:
            deadline = time.monotonic() + 120
            while (held := _held(servers, topic)) < at_least:
                assert time.monotonic() < deadline, "the drain never got going"
                time.sleep(0.005)
            kill(broker)
            held_at_kill.append(held)
            if restart_after is not None:
                time.sleep(restart_after)
                broker.start()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="crash-broker", daemon=True)
    thread.start()
    return thread, held_at_kill, errors


def _check_messages(events: list[Event], rows: pl.DataFrame) -> Counter[str]:
    """Every message is one of the outbox's events, as sent (key, header id = value id); copies per id."""
    by_id = dict(zip(rows["event_id"], zip(rows["key"], rows["value"], strict=True), strict=True))
    partitions: dict[str, set[int]] = {}
    for e in events:
        event_id = e.headers["mdp-event-id"]
        assert json.loads(e.value)["event_id"] == event_id
        assert (e.key, e.value) == by_id[event_id]
        partitions.setdefault(event_id, set()).add(e.partition)
    assert all(len(p) == 1 for p in partitions.values())  # a re-sent copy lands beside the first (same key)
    return Counter(e.headers["mdp-event-id"] for e in events)


def _pending_ids(conn: psycopg.Connection, topic: str) -> list[str]:
    return pending(conn, topics=(topic,))["event_id"].to_list()


def test_broker_killed_during_a_drain_and_restarted_in_time(conn: psycopg.Connection,
                                                             own_broker: LocalBroker) -> None:
    """Back before the producer's message timeout: the same drain finishes, every event exactly once."""
    servers = own_broker.bootstrap_servers
    topic, rows = pending_bars(conn, servers, MANY)
    thread, held_at_kill, errors = _crash_when(own_broker, topic, BATCH // 2, restart_after=1.0)

    report = drain(conn, servers, batch_size=BATCH, producer_config=SLOW_SENDS)
    thread.join(120)
    assert not errors, errors
    assert held_at_kill == [held_at_kill[0]]
    assert held_at_kill[0] < MANY  # the crash hit the drain in the middle
    assert report.total == MANY
    assert _pending_ids(conn, topic) == []

    copies = _check_messages(read_topic(servers, topic), rows)
    assert set(copies) == set(rows["event_id"])  # nothing lost
    assert max(copies.values()) == 1  # retries across the crash were deduplicated by the broker


def test_broker_killed_during_a_drain_for_longer_than_the_message_timeout(conn: psycopg.Connection,
                                                                          own_broker: LocalBroker) -> None:
    """The drain fails; what it marked was acknowledged; the next drain re-sends the rest, same event ids."""
    servers = own_broker.bootstrap_servers
    topic, rows = pending_bars(conn, servers, MANY)
    thread, held_at_kill, errors = _crash_when(own_broker, topic, BATCH // 2, restart_after=None)

    with pytest.raises(PublishError, match="confirmed"):
        drain(conn, servers, batch_size=BATCH, producer_config={**SLOW_SENDS, "message.timeout.ms": 3000})
    thread.join(60)
    assert not errors, errors
    left = _pending_ids(conn, topic)
    marked = set(rows["event_id"]) - set(left)
    assert 0 < len(marked) < MANY
    assert held_at_kill[0] < MANY

    own_broker.start()
    held = _check_messages(read_topic(servers, topic), rows)
    assert marked <= set(held)  # every row marked published survived the crash on the broker
    report = drain(conn, servers, batch_size=BATCH)
    assert report.total == len(left)
    assert _pending_ids(conn, topic) == []

    copies = _check_messages(read_topic(servers, topic), rows)
    assert set(copies) == set(rows["event_id"])  # nothing lost
    assert all(copies[i] == 1 for i in marked)  # acknowledged once, never sent again
    assert max(copies.values()) <= 2  # at most one redelivery (the re-send), deduplicable by event id
    assert sum(copies.values()) == MANY + sum(1 for i in left if held[i])  # extra copies are exactly the
    # messages the broker had written but not acknowledged before the producer gave up


def test_broker_stopped_longer_than_the_message_timeout(conn: psycopg.Connection, own_broker: LocalBroker) -> None:
    """A hung broker (SIGSTOP) fails the drain at the message timeout; the rows stay pending; a later drain
    delivers everything."""
    servers = own_broker.bootstrap_servers
    pid = own_broker.pid
    assert pid is not None
    topic, rows = pending_bars(conn, servers, 3 * 1_000)

    confirmed_first: list[int] = []  # the first set is small (sending starts at once), the next 1,000

    def hang_after_first_batch(report: DrainReport) -> None:
        if report.batches == 1:
            confirmed_first.append(report.total)
            os.kill(pid, signal.SIGSTOP)

    started = time.monotonic()
    try:
        with pytest.raises(PublishError, match="1000 of 1000 messages not confirmed"):
            drain(conn, servers, batch_size=1_000, producer_config={"message.timeout.ms": 3000},
                  on_batch=hang_after_first_batch)
        assert time.monotonic() - started < 30  # failed at the message timeout instead of hanging
        (first,) = confirmed_first
        assert 0 < first < 1_000
        assert _pending_ids(conn, topic) == rows["event_id"][first:].to_list()  # exactly the unconfirmed rows
    finally:
        os.kill(pid, signal.SIGCONT)
    own_broker.wait_ready()
    first_batch = set(rows["event_id"][:first])
    assert first_batch <= set(_check_messages(read_topic(servers, topic), rows))  # marked = on the broker

    report = drain(conn, servers, batch_size=1_000)
    assert report.total == 3_000 - first
    assert _pending_ids(conn, topic) == []
    copies = _check_messages(read_topic(servers, topic), rows)
    assert set(copies) == set(rows["event_id"])
    assert all(copies[i] == 1 for i in first_batch)
    assert max(copies.values()) <= 2
