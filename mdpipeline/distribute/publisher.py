"""Broker-confirmed publishing: a message counts as published only once the broker acknowledged it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl
from confluent_kafka import KafkaError, Message, Producer

PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "compression.type": "lz4",
    "linger.ms": 20,
    "batch.num.messages": 10000,
    "message.timeout.ms": 60000,
}


class PublishError(RuntimeError):
    """Some messages were not acknowledged by the broker; nothing may be reported as published."""


@dataclass(frozen=True)
class PublishReport:
    """What the broker confirmed."""

    topic: str
    confirmed: int
    partitions: dict[int, int]


def publish(
    bootstrap_servers: str,
    topic: str,
    events: pl.DataFrame,
    headers: dict[str, str],
    *,
    flush_timeout: float = 120.0,
    producer_config: dict[str, Any] | None = None,
) -> PublishReport:
    """Send `events` (key, value) to `topic` and wait for every delivery report.

    Raises PublishError naming the first failures when any message is not confirmed.
    """
    producer = Producer({"bootstrap.servers": bootstrap_servers, **PRODUCER_DEFAULTS, **(producer_config or {})})
    confirmed = 0
    partitions: dict[int, int] = {}
    failures: list[str] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        nonlocal confirmed
        if err is not None:
            failures.append(f"key {msg.key()!r}: {err}")
            return
        confirmed += 1
        partitions[msg.partition()] = partitions.get(msg.partition(), 0) + 1

    header_list = [(k, v.encode()) for k, v in headers.items()]
    for key, value in zip(events["key"], events["value"], strict=True):
        while True:
            try:
                producer.produce(topic, value=value.encode(), key=key.encode(), headers=header_list,
                                 on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.5)  # local queue full: let deliveries drain
        producer.poll(0)
    remaining = producer.flush(flush_timeout)
    if failures or remaining or confirmed != events.height:
        raise PublishError(
            f"{topic}: {confirmed}/{events.height} messages confirmed, {remaining} still queued, "
            f"{len(failures)} failed (first: {failures[:3]})"
        )
    return PublishReport(topic=topic, confirmed=confirmed, partitions=partitions)
