"""Subscribe to topics and read events: the helpers behind `mdpipeline tail`, lineage and consumer tests.

`consume` follows a topic as a consumer-group member until it goes quiet; `read_topic` reads a
topic's whole log as it stands, partition by partition up to the high watermarks taken at the start,
so it knows when it is done instead of waiting for silence.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition


@dataclass(frozen=True)
class Event:
    """One consumed message."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: str
    headers: dict[str, str]
    timestamp: int | None = None  # Kafka message timestamp (ms since the epoch), when the broker gives one


def consume(
    bootstrap_servers: str,
    topic: str,
    *,
    from_beginning: bool = True,
    limit: int | None = None,
    idle_timeout: float = 5.0,
    group_id: str | None = None,
    join_timeout: float = 20.0,
) -> Iterator[Event]:
    """Yield messages of `topic` until `limit` or until nothing arrived for `idle_timeout` seconds.

    Before the first message the wait is at least `join_timeout`: joining a consumer group can take
    seconds (a broker's `group.initial.rebalance.delay.ms`, 3 s by default). Offsets are committed
    after each message is handed over (manual commit).
    """
    consumer = Consumer({
        "bootstrap.servers": bootstrap_servers,
        "group.id": group_id or f"mdpipeline-tail-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest" if from_beginning else "latest",
        "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    seen = 0
    last = time.monotonic()
    try:
        while limit is None or seen < limit:
            msg = consumer.poll(0.5)
            if msg is None:
                if time.monotonic() - last > (idle_timeout if seen else max(idle_timeout, join_timeout)):
                    return
                continue
            if msg.error():
                if msg.error().retriable():
                    continue
                raise KafkaException(msg.error())
            last = time.monotonic()
            seen += 1
            yield _event(msg)
            consumer.commit(message=msg, asynchronous=False)
    finally:
        consumer.close()


def _event(msg: Message) -> Event:
    return Event(
        topic=msg.topic(), partition=msg.partition(), offset=msg.offset(),
        key=msg.key().decode() if msg.key() is not None else None,
        value=msg.value().decode(),
        headers={k: (v or b"").decode() for k, v in (msg.headers() or [])},
        timestamp=msg.timestamp()[1] if msg.timestamp()[0] else None,
    )


def end_offsets(bootstrap_servers: str, topic: str, *, timeout: float = 15.0) -> dict[int, tuple[int, int]]:
    """(low, high) watermarks per partition of `topic`: the first offset kept and the next offset to be
    written. Their difference is what the partition holds. Empty when the topic does not exist."""
    consumer = _reader(bootstrap_servers)
    try:
        return _watermarks(consumer, topic, timeout)
    finally:
        consumer.close()


def _reader(bootstrap_servers: str) -> Consumer:
    """A consumer for assigned partitions: it never joins its (unique) group nor commits offsets."""
    return Consumer({"bootstrap.servers": bootstrap_servers, "group.id": f"mdpipeline-read-{uuid.uuid4().hex[:8]}",
                     "enable.auto.commit": False})


def _watermarks(consumer: Consumer, topic: str, timeout: float) -> dict[int, tuple[int, int]]:
    """Watermarks per partition; retriable errors (a leader not known yet, e.g. just after the topic was
    created or the broker restarted) are retried until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
            if metadata is None or metadata.error is not None:
                if metadata is not None and metadata.error.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise KafkaException(metadata.error)
                return {}
            return {p: tuple(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout))  # type: ignore[misc]
                    for p in sorted(metadata.partitions)}
        except KafkaException as exc:
            error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            passing = error is not None and (error.retriable() or error.code() in _LEADERSHIP_MOVING)
            if not passing or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# Answers of a broker that just (re)started and is still electing partition leaders.
_LEADERSHIP_MOVING = frozenset({KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                                KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN})


def read_topic(bootstrap_servers: str, topic: str, *, timeout: float = 60.0) -> list[Event]:
    """Every message `topic` holds now: each partition from its low to its high watermark, in offset order.

    No consumer group and no idle wait: it stops once each partition's last offset was read, and
    raises TimeoutError when that does not happen within `timeout` seconds. Empty when the topic
    does not exist.
    """
    consumer = _reader(bootstrap_servers)
    try:
        deadline = time.monotonic() + timeout
        marks = {p: (low, high) for p, (low, high) in _watermarks(consumer, topic, timeout).items() if high > low}
        ends = {p: high for p, (_, high) in marks.items()}
        consumer.assign([TopicPartition(topic, p, low) for p, (low, _) in marks.items()])
        by_partition: dict[int, list[Event]] = {p: [] for p in ends}
        remaining = set(ends)
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: partitions {sorted(remaining)} not read to their end in {timeout}s")
            msg = consumer.poll(0.5)
            if msg is None:  # a log may end in records no message stands for (transaction markers)
                positions = consumer.position([TopicPartition(topic, p) for p in remaining])
                remaining -= {tp.partition for tp in positions if tp.offset >= ends[tp.partition]}
                continue
            if msg.error():
                if msg.error().retriable():
                    continue
                raise KafkaException(msg.error())
            if msg.offset() < ends[msg.partition()]:
                by_partition[msg.partition()].append(_event(msg))
            if msg.offset() >= ends[msg.partition()] - 1:
                remaining.discard(msg.partition())
    finally:
        consumer.close()
    return [e for p in sorted(by_partition) for e in by_partition[p]]
