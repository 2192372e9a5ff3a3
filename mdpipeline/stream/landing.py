"""Landing raw frames on `raw.stream.<provider>.v1`: bytes exactly as received, lineage in headers.

Raw ingestion is separate from processing: the collector only lands; the real-time job
(`mdpipeline.stream.process`) reads offset ranges later. Gap markers record disconnections.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError, Message

from mdpipeline.distribute.publisher import make_producer

KIND_HEADER = "mdp-kind"  # data | gap


def rfc3339(at: datetime) -> str:
    """UTC RFC 3339 with microseconds."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class RawLanding:
    """An idempotent acks=all producer onto one raw topic; counts what the broker confirmed."""

    bootstrap_servers: str
    topic: str
    provider: str
    producer_config: dict[str, Any] = field(default_factory=dict)
    landed: int = 0
    failed: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._producer = make_producer(self.bootstrap_servers, {"linger.ms": 5, **self.producer_config})
        self.connection = uuid.uuid4().hex[:12]

    def new_connection(self) -> None:
        """A new websocket connection: frames after this carry a new connection id."""
        self.connection = uuid.uuid4().hex[:12]

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is None:
            self.landed += 1
        else:
            self.failed.append(str(err))

    def _produce(self, value: bytes, kind: str, received_at: datetime) -> None:
        headers = [("mdp-provider", self.provider.encode()), ("mdp-received-at", rfc3339(received_at).encode()),
                   ("mdp-connection", self.connection.encode()), (KIND_HEADER, kind.encode())]
        while True:
            try:
                self._producer.produce(self.topic, value=value, headers=headers, on_delivery=self._on_delivery)
                break
            except BufferError:
                self._producer.poll(0.2)
        self._producer.poll(0)

    def land(self, frame: str | bytes, received_at: datetime | None = None) -> None:
        """Queue one frame (delivery confirmed asynchronously; `flush` waits)."""
        self._produce(frame.encode() if isinstance(frame, str) else frame, "data", received_at or datetime.now(UTC))

    def gap(self, disconnected_at: datetime, reconnected_at: datetime, reason: str) -> None:
        """Record that nothing was received between the two instants."""
        marker = {"kind": "gap", "provider": self.provider, "disconnected_at": rfc3339(disconnected_at),
                  "reconnected_at": rfc3339(reconnected_at), "reason": reason[:500]}
        self._produce(json.dumps(marker).encode(), "gap", reconnected_at)

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for outstanding deliveries; returns how many are still unconfirmed."""
        return self._producer.flush(timeout)
