"""The outbox relay: send pending outbox rows, then mark exactly the broker-confirmed ones published.

Order of effects per batch: send -> wait for every delivery report -> mark the confirmed event ids in
one statement. A crash before the mark re-sends those messages on the next drain (consumers
deduplicate by `event_id`); nothing is ever marked that the broker did not acknowledge. Messages
that produce() refuses outright (too large for the broker) are dead-lettered with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import polars as pl
import psycopg

from mdpipeline.distribute.dead_letter import dead_letter_events
from mdpipeline.distribute.outbox import mark_published, pending
from mdpipeline.distribute.publisher import Headers, PublishError, send
from mdpipeline.distribute.topics import DEAD_LETTER

EVENT_ID_HEADER = "mdp-event-id"
MAX_DEAD_LETTER_PAYLOAD = 4_096  # characters of a refused value kept in its dead letter (all stays in ops.outbox)


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
    """Kafka headers per row: the stored lineage headers plus `mdp-event-id`."""
    parsed = {h: [(k, str(v).encode()) for k, v in json.loads(h).items()] for h in rows["headers"].unique()}
    return [[*parsed[h], (EVENT_ID_HEADER, e.encode())] for h, e in zip(rows["headers"], rows["event_id"],
                                                                         strict=True)]


def drain(
    conn: psycopg.Connection,
    bootstrap_servers: str,
    *,
    provider: str | None = None,
    start: date | None = None,
    end: date | None = None,
    topics: tuple[str, ...] | None = None,
    batch_size: int = 50_000,
    producer_config: dict[str, Any] | None = None,
    flush_timeout: float = 120.0,
    on_batch: Callable[[DrainReport], None] | None = None,
) -> DrainReport:
    """Send every pending outbox row (of `provider`, the session range, `topics` when given), in outbox order.

    Raises PublishError after marking what was confirmed when any message failed; a later drain
    sends only the rest. Topics must exist (`ensure_topics`).
    """
    report = DrainReport()
    after = 0
    while True:
        batch = pending(conn, provider=provider, start=start, end=end, topics=topics, after_id=after,
                        limit=batch_size)
        if not batch.height:
            return report
        failures: list[str] = []
        for (topic,), rows in batch.group_by("topic", maintain_order=True):
            delivery = send(bootstrap_servers, str(topic), rows["key"].to_list(), rows["value"].to_list(),
                            message_headers(rows), flush_timeout=flush_timeout, producer_config=producer_config)
            mark_published(conn, str(topic), rows["event_id"].filter(pl.Series(delivery.delivered)).to_list())
            report.add(str(topic), delivery.confirmed, delivery.partitions)
            if delivery.rejected:
                report.dead_lettered += _dead_letter(conn, bootstrap_servers, str(topic), rows, delivery.rejected,
                                                     report, flush_timeout=flush_timeout,
                                                     producer_config=producer_config)
            if delivery.failed:
                failures.append(delivery.summary())
        report.batches += 1
        if on_batch is not None:
            on_batch(report)
        if failures:
            raise PublishError("; ".join(failures))
        after = int(batch["outbox_id"].max())  # type: ignore[arg-type]


def _dead_letter(
    conn: psycopg.Connection,
    bootstrap_servers: str,
    topic: str,
    rows: pl.DataFrame,
    rejected: dict[int, str],
    report: DrainReport,
    **send_options: Any,
) -> int:
    """Send refused messages to the dead-letter topic; mark the originals once that is confirmed."""
    index = sorted(rejected)
    picked = rows[index]
    letters = dead_letter_events(topic, picked["key"], picked["event_id"],
                                 pl.Series([rejected[i] for i in index], dtype=pl.String),
                                 picked["value"].str.slice(0, MAX_DEAD_LETTER_PAYLOAD))
    delivery = send(bootstrap_servers, DEAD_LETTER.name, letters["key"].to_list(), letters["value"].to_list(),
                    message_headers(letters.with_columns(picked["headers"])), **send_options)
    report.add(DEAD_LETTER.name, delivery.confirmed, delivery.partitions)
    done = 0
    for j, ok in enumerate(delivery.delivered):
        if ok:
            done += mark_published(conn, topic, [picked["event_id"][j]], dead_letter_reason=rejected[index[j]])
    if delivery.failed:
        raise PublishError(f"dead-lettering failed: {delivery.summary()}")
    return done
