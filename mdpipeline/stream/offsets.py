"""Raw topic offsets: which ranges were processed (`ops.stream_offsets`) and reading ranges from Kafka.

New data is what lies between the stored offset and the partition's high watermark; a range is then
read until its last offset was seen.

The stored offset belongs to one incarnation of the topic (its Kafka topic id) and is checked against
the log as it is now (`resume_offset`): when the topic was deleted and recreated, when the log ends
before the stored offset (truncated), or when retention deleted frames before they were processed,
processing does not wait or skip silently: it resumes from the log start (a recreated topic), from the
first frame landed after the last processed one (a truncated log) or from the low watermark
(retention), logs why, and the real-time job records the interval as a gap (origin `log_reset`) for
gap repair. Offsets mirrored into the Kafka consumer group (for lag tooling) are waited for with a
deadline, so a hung broker cannot hold a run.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import polars as pl
import psycopg
from confluent_kafka import Consumer, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient

from mdpipeline.distribute.subscriber import end_offsets

log = logging.getLogger(__name__)

RAW_MESSAGES: dict[str, pl.DataType] = {
    "offset": pl.Int64(), "provider": pl.String(), "kind": pl.String(), "value": pl.String(),
    "received_at": pl.Datetime("us", "UTC"), "landed_at": pl.Datetime("ms", "UTC"),
    "encoding": pl.String(), "defect": pl.String(),
}
DEFAULT_CONSUMER = "realtime"
COMMIT_TIMEOUT = 10.0  # seconds to mirror an offset into the consumer group before giving up (best effort)


class RangeUnavailableError(RuntimeError):
    """The raw range could not be read completely (broker down, or data gone)."""


@dataclass(frozen=True)
class LogPosition:
    """A raw topic partition's log as it is now: its incarnation and watermarks."""

    topic_id: str | None
    low: int
    high: int


@dataclass(frozen=True)
class Processed:
    """What `ops.stream_offsets` holds for a partition."""

    next_offset: int
    topic_id: str | None
    last_received_at: datetime | None
    last_landed_at: datetime | None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class Resume:
    """Where processing continues, and why it is not the stored offset (None when it is)."""

    offset: int
    reset: str | None = None


def _consumer(bootstrap_servers: str, group: str) -> Consumer:
    return Consumer({"bootstrap.servers": bootstrap_servers, "group.id": group, "enable.auto.commit": False,
                     "auto.offset.reset": "earliest", "enable.partition.eof": False})


def topic_id(bootstrap_servers: str, topic: str, timeout: float = 10.0) -> str | None:
    """The Kafka topic id (a new one each time a topic of that name is created); None when absent."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    future = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout)[topic]
    try:
        return str(future.result(timeout=timeout).topic_id)
    except KafkaException as exc:
        if "UNKNOWN_TOPIC" in str(exc):
            return None
        raise


def log_position(bootstrap_servers: str, topic: str, partition: int, timeout: float = 10.0) -> LogPosition | None:
    """The partition's incarnation and watermarks; None when the topic (or partition) does not exist."""
    marks = end_offsets(bootstrap_servers, topic, timeout=timeout)
    if partition not in marks:
        return None
    low, high = marks[partition]
    return LogPosition(topic_id(bootstrap_servers, topic, timeout), low, high)


def processed(conn: psycopg.Connection, topic: str, partition: int, consumer: str = DEFAULT_CONSUMER,
              *, lock: bool = False) -> Processed | None:
    """The stored row of the partition (locked for the transaction with `lock`); None before the first range."""
    row = conn.execute("select next_offset, topic_id, last_received_at, last_landed_at, updated_at"
                       " from ops.stream_offsets where consumer = %s and topic = %s and partition = %s"
                       + (" for update" if lock else ""), (consumer, topic, partition)).fetchone()
    return Processed(int(row[0]), row[1], row[2], row[3], row[4]) if row else None


def stored_offset(conn: psycopg.Connection, topic: str, partition: int, consumer: str = DEFAULT_CONSUMER) -> int:
    """The first raw offset not processed yet (0 when the partition was never processed)."""
    found = processed(conn, topic, partition, consumer)
    return found.next_offset if found else 0


def offset_after(bootstrap_servers: str, topic: str, partition: int, at: datetime, timeout: float = 10.0) -> int | None:
    """The first offset whose message timestamp is after `at`; None when there is none yet."""
    consumer = _consumer(bootstrap_servers, "mdpipeline-realtime")
    try:
        ms = int(at.timestamp() * 1000) + 1
        [found] = consumer.offsets_for_times([TopicPartition(topic, partition, ms)], timeout=timeout)
        return found.offset if found.offset >= 0 else None
    finally:
        consumer.close()


def resume_offset(bootstrap_servers: str, topic: str, partition: int, done: Processed | None,
                  log_now: LogPosition) -> Resume:
    """Where processing of the partition continues, given what was processed and the log as it is now."""
    if done is None:
        return Resume(log_now.low)
    where = f"{topic}[{partition}]"
    if done.topic_id and log_now.topic_id and done.topic_id != log_now.topic_id:
        return Resume(log_now.low, f"{where} was recreated (topic id {done.topic_id} -> {log_now.topic_id}) after "
                                   f"offsets up to {done.next_offset - 1} were processed; resuming from the log "
                                   f"start, offset {log_now.low}")
    if done.next_offset > log_now.high:
        after = (offset_after(bootstrap_servers, topic, partition, done.last_landed_at)
                 if done.last_landed_at else None)
        first = log_now.high if after is None else max(log_now.low, min(after, log_now.high))
        return Resume(first, f"{where} ends at offset {log_now.high} but offsets up to {done.next_offset - 1} were "
                             f"processed (the log was truncated or the topic recreated); resuming from offset "
                             f"{first}, the first frame landed after the last one processed")
    if done.next_offset < log_now.low:
        return Resume(log_now.low, f"{where}: offsets {done.next_offset}..{log_now.low - 1} were deleted "
                                   f"(retention) before they were processed; resuming from offset {log_now.low}")
    return Resume(done.next_offset)


@dataclass(frozen=True)
class Claim:
    """Outcome of claiming a range: applied or not, and the reset that made it next (if any)."""

    applied: bool
    reset: str | None = None
    previous: Processed | None = None


def claim_range(conn: psycopg.Connection, topic: str, partition: int, first: int, last: int, run_id: str,
                consumer: str = DEFAULT_CONSUMER, *, log_now: LogPosition | None = None,
                bootstrap_servers: str | None = None, last_received_at: datetime | None = None,
                last_landed_at: datetime | None = None) -> Claim:
    """Advance the stored offset to last + 1 if [first, last] is next; not applied when it was applied before.

    Call inside the transaction that writes the range's effects: the row lock serialises concurrent
    runs, and the offset commits with the data or not at all. With `log_now` (and the servers), the
    stored offset is checked against the log (`resume_offset`): a range starting where processing
    resumes after a reset is applied, and the claim says why. Without it, a range is next when the
    stored offset is at most `first`.
    """
    conn.execute("insert into ops.stream_offsets (consumer, topic, partition, next_offset, run_id, topic_id)"
                 " values (%s, %s, %s, %s, %s, %s) on conflict do nothing",
                 (consumer, topic, partition, first, run_id, log_now.topic_id if log_now else None))
    done = processed(conn, topic, partition, consumer, lock=True)
    assert done is not None
    if log_now is not None and bootstrap_servers is not None:
        resume = resume_offset(bootstrap_servers, topic, partition, done, log_now)
        if resume.offset != first:
            return Claim(False, previous=done)
        reset = resume.reset
    else:
        if done.next_offset > first:
            return Claim(False, previous=done)
        reset = None
    conn.execute(
        "update ops.stream_offsets set next_offset = %s, run_id = %s, updated_at = now(),"
        " topic_id = coalesce(%s, topic_id), last_received_at = coalesce(%s, last_received_at),"
        " last_landed_at = coalesce(%s, last_landed_at)"
        " where consumer = %s and topic = %s and partition = %s",
        (last + 1, run_id, log_now.topic_id if log_now else None, last_received_at, last_landed_at,
         consumer, topic, partition))
    if reset:
        log.warning("%s", reset)
    return Claim(True, reset=reset, previous=done)


def _header(value: bytes | None) -> str:
    return (value or b"").decode("utf-8", "replace")


def _row(msg: object) -> dict[str, object]:
    """One raw message as a row; a value that is not UTF-8 is kept as base64 with a defect."""
    headers = {k: _header(v) for k, v in (msg.headers() or [])}  # type: ignore[attr-defined]
    received = headers.get("mdp-received-at")
    try:
        received_at = datetime.fromisoformat(received.replace("Z", "+00:00")) if received else None
    except ValueError:
        received_at = None
    data: bytes = msg.value() or b""  # type: ignore[attr-defined]
    try:
        value, encoding, defect = data.decode(), "utf-8", None
    except UnicodeDecodeError as exc:
        value, encoding = base64.b64encode(data).decode(), "base64"
        defect = f"not UTF-8 ({exc.reason} at byte {exc.start} of {len(data)})"
    if not data:
        defect = "empty frame"
    return {
        "offset": msg.offset(), "provider": headers.get("mdp-provider") or None,  # type: ignore[attr-defined]
        "kind": headers.get("mdp-kind", "data"), "value": value, "received_at": received_at,
        "landed_at": datetime.fromtimestamp(msg.timestamp()[1] / 1000, UTC),  # type: ignore[attr-defined]
        "encoding": encoding, "defect": defect,
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


def next_range(bootstrap_servers: str, topic: str, partition: int, done: Processed | int | None, *,
               max_messages: int = 50_000, timeout: float = 10.0) -> tuple[int, int] | None:
    """The (first, last) offsets of at most `max_messages` new messages, None when there are none.

    `done` is what was processed (`processed`; a bare offset is taken as the stored one of this
    incarnation). The range starts where `resume_offset` says: after a recreated or truncated topic,
    or frames deleted before processing, that is not the stored offset, and the reason is logged
    (the run that applies the range records the gap).
    """
    log_now = log_position(bootstrap_servers, topic, partition, timeout)
    if log_now is None:
        return None  # the topic (or partition) does not exist yet
    if isinstance(done, int):
        done = Processed(done, log_now.topic_id, None, None)
    resume = resume_offset(bootstrap_servers, topic, partition, done, log_now)
    if resume.reset:
        log.warning("%s", resume.reset)
    if resume.offset >= log_now.high:
        return None
    return resume.offset, min(log_now.high, resume.offset + max_messages) - 1


def commit_consumer_offset(bootstrap_servers: str, topic: str, partition: int, next_offset: int,
                           group: str = "mdpipeline-realtime", timeout: float = COMMIT_TIMEOUT) -> bool:
    """Mirror the processed offset into the Kafka consumer group (for lag tooling); best effort, waited for at
    most `timeout` seconds.

    A synchronous commit has no deadline of its own (it waits for the group coordinator), so it runs in a
    daemon thread: when the broker hangs, the caller goes on and the commit finishes (or not) on its own.
    (An admin client's alter-offsets request with a timeout would do, but destroying the client while
    that request is outstanding trips an assertion in librdkafka that aborts the process.)
    """
    done = threading.Event()
    outcome: dict[str, BaseException] = {}

    def commit() -> None:
        consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": group, "enable.auto.commit": False,
                             "socket.timeout.ms": max(10_000, int(timeout * 1000))})
        try:
            consumer.commit(offsets=[TopicPartition(topic, partition, next_offset)], asynchronous=False)
        except KafkaException as exc:
            outcome["error"] = exc
        finally:
            consumer.close()
            done.set()

    threading.Thread(target=commit, name=f"offset-mirror-{topic}", daemon=True).start()
    if not done.wait(timeout):
        log.warning("could not mirror %s[%d] offset %d into group %s within %.0fs; left to finish in the background",
                    topic, partition, next_offset, group, timeout)
        return False
    if "error" in outcome:
        log.warning("could not mirror %s[%d] offset %d into group %s: %s", topic, partition, next_offset, group,
                    outcome["error"])
        return False
    return True
