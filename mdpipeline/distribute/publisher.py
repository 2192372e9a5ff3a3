"""Broker-confirmed publishing: a message counts as published only once the broker acknowledged it.

`send` reports per message (delivered or why not) and never raises for a message's failure, so a
caller can record exactly what the broker confirmed; `publish` is the all-or-error form.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import polars as pl
from confluent_kafka import KafkaError, KafkaException, Message, Producer

PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "compression.type": "lz4",
    "linger.ms": 20,
    "batch.num.messages": 10000,
    "message.timeout.ms": 60000,
}

Headers = list[tuple[str, bytes]]

# Errors raised by produce() itself that no retry can fix: the message must go to the dead-letter topic.
PERMANENT_PRODUCE_ERRORS = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE,
    KafkaError.INVALID_MSG,
    KafkaError.INVALID_RECORD,
})


class PublishError(RuntimeError):
    """Some messages were not acknowledged by the broker; nothing may be reported as published."""


@dataclass(frozen=True)
class PublishReport:
    """What the broker confirmed."""

    topic: str
    confirmed: int
    partitions: dict[int, int]


@dataclass
class Delivery:
    """Per-message outcome of one `send`: index i refers to the i-th message given."""

    topic: str
    delivered: np.ndarray  # bool per message: acknowledged by the broker
    failed: dict[int, str] = field(default_factory=dict)  # delivery failed or never reported (retry later)
    rejected: dict[int, str] = field(default_factory=dict)  # refused before sending: cannot ever be sent
    partitions: dict[int, int] = field(default_factory=dict)

    @property
    def confirmed(self) -> int:
        """Number of broker-acknowledged messages."""
        return int(self.delivered.sum())

    def summary(self) -> str:
        """One line naming counts and the first failures."""
        first = list(self.failed.values())[:3] + list(self.rejected.values())[:3]
        return (f"{self.topic}: {self.confirmed}/{len(self.delivered)} confirmed, {len(self.failed)} failed, "
                f"{len(self.rejected)} rejected (first: {first})")


CONNECT_WAIT_SECONDS = 1.0  # how long a new producer waits for a broker before its first message


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Python's cyclic garbage collector paused for a bulk produce.

    A send allocates containers per message (header lists, delivery callbacks) that live until its
    flush; that many surviving objects set off full collections of the whole heap again and again
    (building the header lists of 200,000 relay messages took 0.41-0.79 s with the collector on,
    0.05-0.07 s paused; docs/performance.md). Producing makes no cyclic garbage; what other threads
    make meanwhile is collected once the collector resumes, before the flush waits on the broker.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def make_producer(bootstrap_servers: str, producer_config: dict[str, Any] | None = None) -> Producer:
    """An idempotent, acks=all producer with the project's defaults, already connected to a broker.

    An idempotent producer needs a producer id before it sends anything; created without a broker
    connection, librdkafka asks again only on a later timer, which cost every fresh producer about
    half a second before its first delivery (measured against the embedded broker). Fetching the
    cluster metadata once connects it at once. A broker that is down does not fail this: after
    `CONNECT_WAIT_SECONDS` the producer is returned as it is and its messages wait for the broker.
    """
    producer = Producer({"bootstrap.servers": bootstrap_servers, **PRODUCER_DEFAULTS, **(producer_config or {})})
    with contextlib.suppress(KafkaException):  # no broker yet: produce() queues, the reports tell the rest
        producer.list_topics(timeout=CONNECT_WAIT_SECONDS)
    return producer


def send(
    cluster: str | Producer,
    topic: str,
    keys: Sequence[str | None],
    values: Sequence[str],
    headers: Headers | Sequence[Headers],
    *,
    flush_timeout: float = 120.0,
    producer_config: dict[str, Any] | None = None,
) -> Delivery:
    """Send values (UTF-8) with keys to `topic` and wait for every delivery report.

    `headers` is one list for all messages or one list per message. Never raises for a message's
    failure: the returned Delivery says which messages the broker confirmed, which failed (a re-send
    may succeed) and which produce() refused outright (e.g. larger than the broker accepts). `cluster`
    is the bootstrap servers (a producer with the project's defaults and `producer_config` is made) or a
    producer to use.
    """
    n = len(values)
    per_message = bool(n) and len(headers) == n and (not headers or isinstance(headers[0], list))
    producer = cluster if isinstance(cluster, Producer) else make_producer(cluster, producer_config)
    result = Delivery(topic=topic, delivered=np.zeros(n, dtype=bool))

    def on_delivery(i: int, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            result.failed[i] = str(err)
            return
        result.delivered[i] = True
        result.partitions[msg.partition()] = result.partitions.get(msg.partition(), 0) + 1

    common = None if per_message else headers
    with paused_gc():
        for i, (key, value) in enumerate(zip(keys, values, strict=True)):
            refused = produce_one(producer, topic, value.encode(), key.encode() if key is not None else None,
                                  headers[i] if common is None else common, partial(on_delivery, i))
            if refused is not None:
                result.rejected[i] = refused
            producer.poll(0)
    producer.flush(flush_timeout)
    for i in np.flatnonzero(~result.delivered):
        if int(i) not in result.rejected:
            result.failed.setdefault(int(i), "no delivery report before the flush timeout")
    return result


def produce_one(producer: Producer, topic: str, value: bytes, key: bytes | None, headers: Any,
                on_delivery: Callable[[KafkaError | None, Message], None]) -> str | None:
    """produce() one message, waiting while the local queue is full; the reason when produce()
    refuses it for good (e.g. larger than the broker accepts), else None. Other errors raise."""
    while True:
        try:
            producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
            return None
        except BufferError:
            producer.poll(0.5)  # local queue full: let deliveries drain
        except KafkaException as exc:
            error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if error is not None and error.code() in PERMANENT_PRODUCE_ERRORS:
                return f"{error.name()}: {error.str()}"
            raise


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
    header_list = [(k, v.encode()) for k, v in headers.items()]
    delivery = send(bootstrap_servers, topic, events["key"].to_list(), events["value"].to_list(), header_list,
                    flush_timeout=flush_timeout, producer_config=producer_config)
    if delivery.confirmed != events.height:
        raise PublishError(delivery.summary())
    return PublishReport(topic=topic, confirmed=delivery.confirmed, partitions=delivery.partitions)
