"""Landing raw frames on `raw.stream.<provider>.v1`: bytes exactly as received, lineage in headers.

Raw ingestion is separate from processing: the collector only lands; the real-time job
(`mdpipeline.stream.process`) reads offset ranges later. Gap markers record disconnections.

Nothing the collector received is lost without a trace:
- Frames up to `MAX_FRAME_BYTES` (the collector's websocket limit) are landed as they are: the raw
  topics and the producer accept messages that large.
- A frame the producer refuses outright (larger than the topic accepts, e.g. on a topic created with
  an older limit) or that the broker never confirms (delivery failed after `message.timeout.ms`) is
  lost from the topic: its receive time joins the landing's *lost interval*, and `report_losses` lands
  a gap marker covering it (retried until the broker confirms one), so gap repair backfills it.
- `covered_until` says until when everything received is confirmed on the topic or covered by a
  confirmed gap marker; the collector stores it (`ops.stream_collectors`) so a restart records the
  time no collector ran.
"""

from __future__ import annotations

import itertools
import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message

from mdpipeline.distribute.publisher import make_producer

log = logging.getLogger(__name__)

KIND_HEADER = "mdp-kind"  # data | gap
MAX_FRAME_BYTES = 16 * 1024 * 1024  # the collector's websocket max_size; raw topics accept this much
MESSAGE_HEADROOM = 64 * 1024  # headers and record overhead on top of a frame


def rfc3339(at: datetime) -> str:
    """UTC RFC 3339 with microseconds."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class LostFrames:
    """Frames received in [first, last] that are not on the topic, and why."""

    first: datetime
    last: datetime
    frames: int
    reason: str

    def merge(self, other: LostFrames) -> LostFrames:
        """One interval covering both."""
        return LostFrames(min(self.first, other.first), max(self.last, other.last), self.frames + other.frames,
                          self.reason)


@dataclass
class RawLanding:
    """An idempotent acks=all producer onto one raw topic; counts what the broker confirmed."""

    bootstrap_servers: str
    topic: str
    provider: str
    producer_config: dict[str, Any] = field(default_factory=dict)
    landed: int = 0
    failed: list[str] = field(default_factory=list)
    max_frame_bytes: int = MAX_FRAME_BYTES

    def __post_init__(self) -> None:
        self._producer = make_producer(self.bootstrap_servers, {
            "linger.ms": 5, "message.max.bytes": self.max_frame_bytes + MESSAGE_HEADROOM, **self.producer_config})
        self.connection = uuid.uuid4().hex[:12]
        self.lost: LostFrames | None = None  # not landed and not yet covered by a gap marker in flight
        self.lost_total = 0  # frames lost from the topic in this landing's life (each covered by a gap marker)
        self.gaps_landed = 0
        self._in_flight: dict[int, datetime] = {}  # message -> the earliest receive time it stands for
        self._numbers = itertools.count()

    def new_connection(self) -> None:
        """A new websocket connection: frames after this carry a new connection id."""
        self.connection = uuid.uuid4().hex[:12]

    def _lose(self, lost: LostFrames) -> None:
        self.lost = lost if self.lost is None else self.lost.merge(lost)

    def _on_delivery(self, number: int, kind: str, covers: LostFrames, err: KafkaError | None,
                     _msg: Message) -> None:
        self._in_flight.pop(number, None)
        if err is None:
            if kind == "data":
                self.landed += 1
            else:
                self.gaps_landed += 1
            return
        self.failed.append(str(err))
        log.warning("%s: %s message not confirmed by the broker (%s); recorded as a gap", self.topic, kind, err)
        if kind == "data":
            self.lost_total += 1
        self._lose(covers)

    def _produce(self, value: bytes, kind: str, received_at: datetime, covers: LostFrames) -> None:
        headers = [("mdp-provider", self.provider.encode()), ("mdp-received-at", rfc3339(received_at).encode()),
                   ("mdp-connection", self.connection.encode()), (KIND_HEADER, kind.encode())]
        number = next(self._numbers)
        self._in_flight[number] = covers.first
        while True:
            try:
                self._producer.produce(self.topic, value=value, headers=headers,
                                       on_delivery=partial(self._on_delivery, number, kind, covers))
                break
            except BufferError:
                self._producer.poll(0.2)
            except KafkaException as exc:  # refused before sending (too large, invalid): it never will be sent
                self._in_flight.pop(number, None)
                self.failed.append(str(exc))
                if kind == "data":
                    self.lost_total += 1
                log.warning("%s: %s frame of %d bytes refused by the producer (%s); recorded as a gap",
                            self.topic, kind, len(value), exc)
                self._lose(LostFrames(covers.first, covers.last, covers.frames, f"{kind} refused: {exc}"))
                return
        self._producer.poll(0)

    def land(self, frame: str | bytes, received_at: datetime | None = None) -> None:
        """Queue one frame (delivery confirmed asynchronously; `flush` waits)."""
        at = received_at or datetime.now(UTC)
        data = frame.encode() if isinstance(frame, str) else frame
        if len(data) > self.max_frame_bytes:
            self.lost_total += 1
            log.warning("%s: frame of %d bytes is over the landing limit of %d bytes; recorded as a gap",
                        self.topic, len(data), self.max_frame_bytes)
            self._lose(LostFrames(at, at, 1, f"frame of {len(data)} bytes over the limit of {self.max_frame_bytes}"))
            return
        self._produce(data, "data", at, LostFrames(at, at, 1, "data frame not confirmed"))

    def gap(self, disconnected_at: datetime, reconnected_at: datetime, reason: str) -> None:
        """Record that nothing was received between the two instants."""
        marker = {"kind": "gap", "provider": self.provider, "disconnected_at": rfc3339(disconnected_at),
                  "reconnected_at": rfc3339(reconnected_at), "reason": reason[:500]}
        self._produce(json.dumps(marker).encode(), "gap", reconnected_at,
                      LostFrames(disconnected_at, reconnected_at, 0, reason))

    def report_losses(self) -> bool:
        """Land a gap marker covering the frames lost so far (if any); True when one was queued."""
        self._producer.poll(0)
        lost, self.lost = self.lost, None
        if lost is None:
            return False
        reason = (f"{lost.frames} frame(s) received but not landed on {self.topic}: {lost.reason}" if lost.frames
                  else lost.reason)
        self.gap(lost.first, lost.last, reason)
        return True

    def covered_until(self, alive_at: datetime) -> datetime:
        """Until when everything received is on the topic or in a confirmed gap marker, given that the
        collector received everything up to `alive_at` (now when connected, the disconnection otherwise)."""
        self._producer.poll(0)
        bound = alive_at
        if self._in_flight:
            bound = min(bound, *self._in_flight.values())
        if self.lost is not None:
            bound = min(bound, self.lost.first)
        return bound

    def poll(self) -> None:
        """Serve delivery reports."""
        self._producer.poll(0)

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for outstanding deliveries, then land a gap marker for any frame lost meanwhile (and wait for
        it); returns how many messages are still unconfirmed."""
        left = self._producer.flush(timeout)
        if self.report_losses():
            left = self._producer.flush(timeout)
        return left
