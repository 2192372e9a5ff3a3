"""Subscribe to topics and read events: the helper behind `mdpipeline tail` and consumer tests."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException


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

    Before the first message the wait is at least `join_timeout`: joining a consumer group takes
    seconds. Offsets are committed after each message is handed over (manual commit).
    """
    consumer = Consumer({
        "bootstrap.servers": bootstrap_servers,
        "group.id": group_id or f"mdpipeline-tail-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest" if from_beginning else "latest",
        "enable.auto.commit": False,
        "session.timeout.ms": 6000,
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
            yield Event(
                topic=msg.topic(), partition=msg.partition(), offset=msg.offset(),
                key=msg.key().decode() if msg.key() is not None else None,
                value=msg.value().decode(),
                headers={k: (v or b"").decode() for k, v in (msg.headers() or [])},
                timestamp=msg.timestamp()[1] if msg.timestamp()[0] else None,
            )
            consumer.commit(message=msg, asynchronous=False)
    finally:
        consumer.close()
