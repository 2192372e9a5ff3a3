"""The outbox relay: send pending outbox rows, then mark exactly the broker-confirmed ones published.

Rows are claimed in sets (`FOR UPDATE SKIP LOCKED`, so concurrent relays never send the same rows),
sent with one producer per drain, and marked in one statement per batch, all inside the batch's
transaction: claim -> send -> wait for every delivery report -> mark the confirmed ones -> commit.
A crash before the commit re-sends those messages on the next drain (consumers deduplicate by
`event_id`); nothing is ever marked that the broker did not acknowledge. Messages that produce()
refuses outright (too large for the broker) are dead-lettered with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import polars as pl
import psycopg
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from mdpipeline.distribute.dead_letter import dead_letter_events
from mdpipeline.distribute.outbox import PENDING_SCHEMA, mark_published
from mdpipeline.distribute.publisher import PERMANENT_PRODUCE_ERRORS, Headers, PublishError, make_producer, send
from mdpipeline.distribute.topics import DEAD_LETTER
from mdpipeline.storage.reader import read_frame

EVENT_ID_HEADER = "mdp-event-id"
MAX_DEAD_LETTER_PAYLOAD = 4_096  # characters of a refused value kept in its dead letter (all stays in ops.outbox)
BATCH_ROWS = 20_000
BATCH_BYTES = 64 * 1024 * 1024  # values claimed per batch (minute-bar sessions are ~20 kB each)


@dataclass
class DrainReport:
    """What one drain confirmed, per topic, and how many messages were dead-lettered."""

    confirmed: dict[str, int] = field(default_factory=dict)
    partitions: dict[str, dict[int, int]] = field(default_factory=dict)
    dead_lettered: int = 0
    batches: int = 0

    @property
    def total(self) -> int:
        """Messages confirmed on every topic."""
        return sum(self.confirmed.values())

    def add(self, topic: str, confirmed: int, partitions: dict[int, int]) -> None:
        """Count confirmed messages of a topic."""
        self.confirmed[topic] = self.confirmed.get(topic, 0) + confirmed
        into = self.partitions.setdefault(topic, {})
        for p, n in partitions.items():
            into[p] = into.get(p, 0) + n


def message_headers(rows: pl.DataFrame) -> list[Headers]:
    """Kafka headers per row: the stored lineage headers plus `mdp-event-id` (always last)."""
    parsed = {h: [(k, str(v).encode()) for k, v in json.loads(h).items()] for h in rows["headers"].unique()}
    return [[*parsed[h], (EVENT_ID_HEADER, e.encode())] for h, e in zip(rows["headers"], rows["event_id"],
                                                                         strict=True)]


@dataclass
class _Sent:
    """Delivery outcome of one batch: confirmed event ids per topic and what failed."""

    delivered: dict[str, list[str]] = field(default_factory=dict)
    partitions: dict[str, dict[int, int]] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)  # row index -> why produce() refused it

    def reporter(self, event_id: str) -> Callable[[KafkaError | None, Message], None]:
        """The delivery callback of the message carrying `event_id`."""
        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                self.failed.append(f"{msg.topic()}: {err}")
                return
            topic = msg.topic()
            self.delivered.setdefault(topic, []).append(event_id)
            counts = self.partitions.setdefault(topic, {})
            counts[msg.partition()] = counts.get(msg.partition(), 0) + 1
        return on_delivery


def drain(
    conn: psycopg.Connection,
    bootstrap_servers: str,
    *,
    provider: str | None = None,
    start: date | None = None,
    end: date | None = None,
    topics: tuple[str, ...] | None = None,
    batch_size: int = BATCH_ROWS,
    batch_bytes: int = BATCH_BYTES,
    producer_config: dict[str, Any] | None = None,
    flush_timeout: float = 120.0,
    on_batch: Callable[[DrainReport], None] | None = None,
) -> DrainReport:
    """Send every pending outbox row (of `provider`, the session range, `topics` when given), in outbox order.

    Raises PublishError after marking what was confirmed when any message failed; a later drain
    sends only the rest. Topics must exist (`ensure_topics`).
    """
    report = DrainReport()
    producer = make_producer(bootstrap_servers, producer_config)
    after = 0
    while True:
        with conn.transaction():
            batch = _claim(conn, provider, start, end, topics, after, batch_size, batch_bytes)
            if not batch.height:
                return report
            sent = _send(producer, batch, flush_timeout)
            for topic, ids in sent.delivered.items():
                mark_published(conn, topic, ids)
                report.add(topic, len(ids), sent.partitions.get(topic, {}))
            if sent.rejected:
                report.dead_lettered += _dead_letter(conn, bootstrap_servers, batch, sent.rejected, report,
                                                     flush_timeout=flush_timeout, producer_config=producer_config)
        report.batches += 1
        if on_batch is not None:
            on_batch(report)
        unreported = batch.height - sum(len(v) for v in sent.delivered.values()) - len(sent.rejected)
        if sent.failed or unreported:
            first = sent.failed[:3] or ["no delivery report before the flush timeout"]
            raise PublishError(f"{unreported} of {batch.height} messages not confirmed by the broker"
                               f" (first: {first}); they stay pending for the next drain")
        after = int(batch["outbox_id"].max())  # type: ignore[arg-type]


def _claim(conn: psycopg.Connection, provider: str | None, start: date | None, end: date | None,
           topics: tuple[str, ...] | None, after: int, rows: int, max_bytes: int) -> pl.DataFrame:
    """Lock and read the next pending rows in outbox order: at most `rows`, values up to `max_bytes` in total."""
    where = ["published_at is null", "outbox_id > %s"]
    params: list[object] = [after]
    if topics is not None:
        where.append("topic = any(%s)")
        params.append(list(topics))
    if provider is not None:
        where.append("provider = %s")
        params.append(provider)
    if start is not None and end is not None:
        where.append("session_date between %s and %s")
        params += [start, end]
    sizes = conn.execute(
        f"select outbox_id, octet_length(value) from ops.outbox where {' and '.join(where)}"
        " order by outbox_id limit %s", (*params, rows)).fetchall()
    ids, total = [], 0
    for outbox_id, size in sizes:
        if ids and total + size > max_bytes:
            break
        ids.append(outbox_id)
        total += size
    if not ids:
        return pl.DataFrame(schema=PENDING_SCHEMA)
    return read_frame(
        conn,
        "select outbox_id, topic, key, event_id, value, headers::text as headers, session_date from ops.outbox"
        " where outbox_id = any(%s) and published_at is null order by outbox_id for update skip locked",
        (ids,), PENDING_SCHEMA)


def _send(producer: Producer, batch: pl.DataFrame, flush_timeout: float) -> _Sent:
    """Produce every row of the batch and wait for all delivery reports."""
    sent = _Sent()
    headers = message_headers(batch)
    rows = zip(batch["topic"], batch["key"], batch["value"], batch["event_id"], strict=True)
    for i, (topic, key, value, event_id) in enumerate(rows):
        while True:
            try:
                producer.produce(topic, value=value.encode(), key=key.encode() if key is not None else None,
                                 headers=headers[i], on_delivery=sent.reporter(event_id))
                break
            except BufferError:
                producer.poll(0.5)  # local queue full: let deliveries drain
            except KafkaException as exc:
                error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                if error is not None and error.code() in PERMANENT_PRODUCE_ERRORS:
                    sent.rejected[i] = f"{error.name()}: {error.str()}"
                    break
                raise
        producer.poll(0)
    producer.flush(flush_timeout)
    return sent


def _dead_letter(
    conn: psycopg.Connection,
    bootstrap_servers: str,
    rows: pl.DataFrame,
    rejected: dict[int, str],
    report: DrainReport,
    **send_options: Any,
) -> int:
    """Send refused messages to the dead-letter topic; mark the originals once that is confirmed."""
    index = sorted(rejected)
    picked = rows[index]
    done = 0
    for (topic,), group in picked.with_columns(pl.Series("__reason", [rejected[i] for i in index])).group_by(
            "topic", maintain_order=True):
        letters = dead_letter_events(str(topic), group["key"], group["event_id"], group["__reason"],
                                     group["value"].str.slice(0, MAX_DEAD_LETTER_PAYLOAD))
        delivery = send(bootstrap_servers, DEAD_LETTER.name, letters["key"].to_list(), letters["value"].to_list(),
                        message_headers(letters.with_columns(group["headers"])), **send_options)
        report.add(DEAD_LETTER.name, delivery.confirmed, delivery.partitions)
        for j, ok in enumerate(delivery.delivered):
            if ok:
                done += mark_published(conn, str(topic), [group["event_id"][j]],
                                       dead_letter_reason=group["__reason"][j])
        if delivery.failed:
            raise PublishError(f"dead-lettering failed: {delivery.summary()}")
    return done
