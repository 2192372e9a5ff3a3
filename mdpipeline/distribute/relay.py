"""The outbox relay: send pending outbox rows, then mark exactly the broker-confirmed ones published.

A drain holds an advisory lock per topic (concurrent relays of a topic take turns, so they never
send the same rows), reads pending rows in outbox order in sets, sends them with one producer, and
moves the confirmed ones to the sent history (`ops.outbox_sent`) with one statement per set. Order
of effects per set: send -> wait for every delivery report -> mark (move) the confirmed rows. A
crash before the mark re-sends those messages on the next drain (consumers deduplicate by
`event_id`); nothing is ever marked that the broker did not acknowledge. Messages that produce()
refuses outright (too large for the broker) are dead-lettered with the reason.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
import polars as pl
import psycopg
from confluent_kafka import KafkaError, Message, Producer

from mdpipeline.distribute.dead_letter import dead_letter_events
from mdpipeline.distribute.outbox import PendingScope, mark_published, move_sent, pending_in, refresh_statistics
from mdpipeline.distribute.publisher import (
    Headers,
    PublishError,
    make_producer,
    paused_gc,
    produce_one,
    send,
)
from mdpipeline.distribute.topics import DEAD_LETTER
from mdpipeline.storage.reader import ArrowReader

EVENT_ID_HEADER = "mdp-event-id"
MAX_DEAD_LETTER_PAYLOAD = 4_096  # characters of a refused value kept in its dead letter (ops.outbox_sent keeps all)
BATCH_ROWS = 20_000
FIRST_BATCH_ROWS = 200
BATCH_BYTES = 32 * 1024 * 1024  # values read per set (minute-bar sessions are 20-40 kB each)


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
    event_ids = rows["event_id"].cast(pl.Binary).to_list()
    if len(parsed) == 1:  # the usual batch: one run's lineage
        (common,) = parsed.values()
        return [[*common, (EVENT_ID_HEADER, e)] for e in event_ids]
    return [[*parsed[h], (EVENT_ID_HEADER, e)] for h, e in zip(rows["headers"].to_list(), event_ids, strict=True)]


@dataclass
class _Sent:
    """Delivery outcome of one batch: the rows the broker confirmed, and what failed."""

    event_ids: list[str]  # per row of the batch
    delivered: np.ndarray  # bool per row of the batch
    failed: list[str] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)  # row index -> why produce() refused it
    _index: dict[str, int] | None = None

    def on_error(self, err: KafkaError | None, msg: Message) -> None:
        """Delivery report of a failed message (the producer reports failures only)."""
        if err is None:
            return
        self.failed.append(f"{msg.topic()}: {err}")
        if self._index is None:  # built on the first failure only: a clean batch never pays for it
            self._index = {e: i for i, e in enumerate(self.event_ids)}
        value = msg.value() or b""
        row = self._index.get(value[_EVENT_ID_AT:_EVENT_ID_AT + 32].decode(errors="replace"))
        if row is not None:
            self.delivered[row] = False


# Every value starts with `{"event_id":"<32 hex>"` (the envelope), so a failed message names its row.
_EVENT_ID_AT = len('{"event_id":"')
# Only failures are reported back: a confirmed message costs no Python call (see _send).
RELAY_PRODUCER = {"delivery.report.only.error": True}
# With only failures reported there is little to serve: poll(0) after every message took 0.4 s per
# 200,000 daily-bar events (a fifth of the sending loop); every 1,000th is enough for failure reports.
POLL_EVERY = 1_000


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

    The drain holds an advisory lock per topic, so concurrent relays of a topic take turns instead
    of sending the same rows. The database work overlaps the sending: while batch k is produced, one
    helper thread reads batch k+1 (on a session of its own) and another marks batch k-1 published on
    `conn`; when the reads must see the caller's open transaction, both go through `conn`, one
    statement at a time, in that order. Raises PublishError after marking what was confirmed when
    any message failed; a later drain sends only the rest. Topics must exist (`ensure_topics`).
    """
    report = DrainReport()
    producer = make_producer(bootstrap_servers, {**RELAY_PRODUCER, **(producer_config or {})})
    scope = PendingScope(provider, start, end, topics)
    refresh_statistics(conn)
    locked = _lock_topics(conn, scope)
    try:
        with contextlib.ExitStack() as stack:
            reader = None  # reads on a session of their own, unless they must see the caller's open transaction
            if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                reader = stack.enter_context(ArrowReader(conn))
            db = stack.enter_context(ThreadPoolExecutor(max_workers=1, thread_name_prefix="mdp-relay-db"))
            # Reads on their own session run beside the marks: each took about as long as producing a
            # batch, so one after the other they held the relay back (docs/performance.md).
            reads = db if reader is None else stack.enter_context(
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="mdp-relay-read"))
            # A small first batch, so sending starts at once; later ones sized by what the values weigh.
            ahead = reads.submit(pending_in, conn, scope, limit=min(FIRST_BATCH_ROWS, batch_size), reader=reader)
            marked: Future[int] | None = None
            while True:
                batch = ahead.result()
                if not batch.height:
                    if marked is not None:
                        marked.result()
                    return report
                ahead = reads.submit(pending_in, conn, scope, after_id=int(batch["outbox_id"].max()),  # type: ignore[arg-type]
                                  limit=_next_rows(batch, batch_size, batch_bytes), reader=reader)
                sent = _send(producer, batch, flush_timeout)
                if marked is not None:
                    marked.result()  # the previous batch's mark failed: stop before sending more
                marked = db.submit(_mark, conn, batch, sent.delivered)
                confirmed = batch.filter(pl.Series(sent.delivered))
                for (topic,), rows in confirmed.group_by("topic", maintain_order=True):
                    report.add(str(topic), rows.height, {})
                if sent.rejected:  # the connection is the helper thread's until its queue is done
                    marked.result()
                    report.dead_lettered += _dead_letter(conn, bootstrap_servers, batch, sent.rejected, report,
                                                         flush_timeout=flush_timeout, producer_config=producer_config)
                report.batches += 1
                if on_batch is not None:
                    on_batch(report)
                unreported = batch.height - int(sent.delivered.sum()) - len(sent.rejected)
                if sent.failed or unreported:
                    marked.result()  # what was confirmed is marked before the error goes up
                    first = sent.failed[:3] or ["no delivery report before the flush timeout"]
                    raise PublishError(f"{unreported} of {batch.height} messages not confirmed by the broker"
                                       f" (first: {first}); they stay pending for the next drain")
    finally:
        _unlock_topics(conn, locked)


def _lock_topics(conn: psycopg.Connection, scope: PendingScope) -> list[str]:
    """Take the relay's advisory lock of each topic in scope (sorted, so two relays cannot deadlock)."""
    if scope.topics is not None:
        topics = sorted(set(scope.topics))
    else:
        where, params = scope.where()
        topics = [r[0] for r in conn.execute(f"select distinct topic from ops.outbox where {where} order by 1",
                                             params).fetchall()]
    for topic in topics:
        conn.execute("select pg_advisory_lock(hashtext(%s))", (f"mdpipeline.relay:{topic}",))
    return topics


def _unlock_topics(conn: psycopg.Connection, topics: list[str]) -> None:
    for topic in reversed(topics):
        conn.execute("select pg_advisory_unlock(hashtext(%s))", (f"mdpipeline.relay:{topic}",))


def _next_rows(batch: pl.DataFrame, rows: int, max_bytes: int) -> int:
    """How many rows the next read may take so its values stay within `max_bytes` (judged by this batch)."""
    average = max(1.0, float(batch["value"].str.len_bytes().mean() or 1.0))  # type: ignore[arg-type]
    return max(1, min(rows, int(max_bytes / average)))


def _mark(conn: psycopg.Connection, batch: pl.DataFrame, delivered: np.ndarray) -> int:
    """Move the broker-confirmed rows of `batch` to the sent history, in one statement; returns the rows moved.

    By id range only when the batch holds every id of its range: a range with gaps may hide a row
    that a transaction still open at the read committed since (its id was taken earlier), and that
    row was never sent.
    """
    ids = batch["outbox_id"]
    lowest, highest = int(ids.min()), int(ids.max())  # type: ignore[arg-type]
    if delivered.all() and highest - lowest + 1 == batch.height:  # the usual case: no id list to send
        return move_sent(conn, "outbox_id between %s and %s", [lowest, highest])
    if delivered.any():
        return move_sent(conn, "outbox_id = any(%s)", [ids.filter(pl.Series(delivered)).to_list()])
    return 0


def _send(producer: Producer, batch: pl.DataFrame, flush_timeout: float) -> _Sent:
    """Produce every row of the batch and wait until the broker settled each one.

    The producer reports failures only: a row counts as confirmed when no failure was reported and
    nothing was left in flight when the flush returned (otherwise nothing of the batch counts). The
    garbage collector is paused while the messages are produced (`paused_gc`: a header list each).
    """
    sent = _Sent(event_ids=batch["event_id"].to_list(), delivered=np.ones(batch.height, dtype=bool))
    with paused_gc():
        headers = message_headers(batch)
        values = batch["value"].cast(pl.Binary).to_list()
        keys = batch["key"].cast(pl.Binary).to_list()
        for i, (topic, key, value) in enumerate(zip(batch["topic"].to_list(), keys, values, strict=True)):
            refused = produce_one(producer, topic, value, key, headers[i], sent.on_error)
            if refused is not None:
                sent.rejected[i] = refused
                sent.delivered[i] = False
            if i % POLL_EVERY == 0:
                producer.poll(0)
    if producer.flush(flush_timeout) > 0:  # still in flight: which of them arrive is unknown
        sent.delivered[:] = False
        sent.failed.append("no delivery report before the flush timeout")
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
