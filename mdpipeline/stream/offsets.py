"""Raw topic offsets: which ranges were processed (`ops.stream_offsets`) and reading ranges from Kafka.

New data is what lies between the stored offset and the partition's high watermark; a range is then
read until its last offset was seen.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import polars as pl
import psycopg
from confluent_kafka import Consumer, KafkaException, TopicPartition

from mdpipeline.distribute.subscriber import end_offsets

RAW_MESSAGES: dict[str, pl.DataType] = {
    "offset": pl.Int64(), "provider": pl.String(), "kind": pl.String(), "value": pl.String(),
    "received_at": pl.Datetime("us", "UTC"), "landed_at": pl.Datetime("ms", "UTC"),
}
DEFAULT_CONSUMER = "realtime"


class RangeUnavailableError(RuntimeError):
    """The raw range could not be read completely (broker down, or data gone)."""


def _consumer(bootstrap_servers: str, group: str) -> Consumer:
    return Consumer({"bootstrap.servers": bootstrap_servers, "group.id": group, "enable.auto.commit": False,
                     "auto.offset.reset": "earliest", "enable.partition.eof": False})


def stored_offset(conn: psycopg.Connection, topic: str, partition: int, consumer: str = DEFAULT_CONSUMER) -> int:
    """The first raw offset not processed yet (0 when the partition was never processed)."""
    row = conn.execute("select next_offset from ops.stream_offsets where consumer = %s and topic = %s"
                       " and partition = %s", (consumer, topic, partition)).fetchone()
    return int(row[0]) if row else 0


def claim_range(conn: psycopg.Connection, topic: str, partition: int, first: int, last: int, run_id: str,
                consumer: str = DEFAULT_CONSUMER) -> bool:
    """Advance the stored offset to last + 1 if [first, last] is next; False when it was already applied.

    Call inside the transaction that writes the range's effects: the row lock serialises concurrent
    runs, and the offset commits with the data or not at all. Offsets before `first` that are gone
    from the broker (retention) do not block: the range is next when stored <= first.
    """
    conn.execute("insert into ops.stream_offsets (consumer, topic, partition, next_offset, run_id)"
                 " values (%s, %s, %s, %s, %s) on conflict do nothing", (consumer, topic, partition, first, run_id))
    cur = conn.execute(
        "update ops.stream_offsets set next_offset = %s, run_id = %s, updated_at = now()"
        " where consumer = %s and topic = %s and partition = %s and next_offset <= %s",
        (last + 1, run_id, consumer, topic, partition, first))
    return cur.rowcount == 1


def _row(msg: object) -> dict[str, object]:
    headers = {k: (v or b"").decode() for k, v in (msg.headers() or [])}  # type: ignore[attr-defined]
    received = headers.get("mdp-received-at")
    return {
        "offset": msg.offset(), "provider": headers.get("mdp-provider"),  # type: ignore[attr-defined]
        "kind": headers.get("mdp-kind", "data"), "value": msg.value().decode(),  # type: ignore[attr-defined]
        "received_at": datetime.fromisoformat(received.replace("Z", "+00:00")) if received else None,
        "landed_at": datetime.fromtimestamp(msg.timestamp()[1] / 1000, UTC),  # type: ignore[attr-defined]
    }


def read_messages(
    bootstrap_servers: str, topic: str, partition: int, start: int, *, last: int | None = None,
    max_messages: int = 50_000, timeout: float = 30.0, idle: float = 1.0, group: str = "mdpipeline-realtime",
) -> pl.DataFrame:
    """Messages of one partition from offset `start`: through `last` (all of it, else RangeUnavailableError),
    or when `last` is None as many as arrive (at most `max_messages`) until `idle` seconds pass quietly."""
    consumer = _consumer(bootstrap_servers, group)
    rows: list[dict[str, object]] = []
    try:
        consumer.assign([TopicPartition(topic, partition, start)])
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        while len(rows) < max_messages:
            msg = consumer.poll(0.2)
            now = time.monotonic()
            if msg is None:
                if last is None and (now - quiet_since > idle or now > deadline):
                    break
                if last is not None and now > deadline:
                    raise RangeUnavailableError(f"{topic}[{partition}] offsets {start}..{last}: only read up to "
                                                f"{rows[-1]['offset'] if rows else 'nothing'} in {timeout}s")
                continue
            if msg.error():
                if msg.error().retriable():
                    continue
                raise KafkaException(msg.error())
            quiet_since = now
            if last is not None and msg.offset() > last:
                break
            rows.append(_row(msg))
            if last is not None and msg.offset() >= last:
                break
    finally:
        consumer.close()
    return pl.DataFrame(rows, schema=RAW_MESSAGES, orient="row") if rows else pl.DataFrame(schema=RAW_MESSAGES)


def next_range(bootstrap_servers: str, topic: str, partition: int, start: int, *, max_messages: int = 50_000,
               timeout: float = 10.0) -> tuple[int, int] | None:
    """The (first, last) offsets of at most `max_messages` new messages from `start`, None when there are none.

    From the partition's watermarks: offsets before the low one are gone (retention), so the range
    starts at the later of `start` and it. A `start` past the high watermark means the log lost
    what was processed (the topic was deleted and recreated): RangeUnavailableError, rather than
    waiting silently until new messages pass the old offsets.
    """
    marks = end_offsets(bootstrap_servers, topic, timeout=timeout)
    if partition not in marks:
        return None  # the topic (or partition) does not exist yet
    low, high = marks[partition]
    if start > high:
        raise RangeUnavailableError(f"{topic}[{partition}]: processed up to offset {start}, but the log ends at "
                                    f"{high}; the topic was recreated or lost data (reset its row in "
                                    "ops.stream_offsets to reprocess it)")
    first = max(start, low)
    if first >= high:
        return None
    return first, min(high, first + max_messages) - 1


def commit_consumer_offset(bootstrap_servers: str, topic: str, partition: int, next_offset: int,
                           group: str = "mdpipeline-realtime") -> bool:
    """Mirror the processed offset into the Kafka consumer group (for lag tooling); best effort."""
    consumer = _consumer(bootstrap_servers, group)
    try:
        consumer.commit(offsets=[TopicPartition(topic, partition, next_offset)], asynchronous=False)
        return True
    except KafkaException:
        return False
    finally:
        consumer.close()
