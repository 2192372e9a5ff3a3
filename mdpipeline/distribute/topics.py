"""Topic names (`md.<dataset>.<interval>.v<N>`) and their creation with explicit settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from confluent_kafka.admin import AdminClient, NewTopic


@dataclass(frozen=True)
class TopicSpec:
    """A topic and the settings it is created with."""

    name: str
    partitions: int = 6
    replication_factor: int = 1
    config: dict[str, str] = field(default_factory=dict)


BARS_1D = TopicSpec("md.bars.1d.v1", partitions=6, config={"cleanup.policy": "delete", "retention.ms": "-1"})
BARS_1M = TopicSpec("md.bars.1m.v1", partitions=12, config={"cleanup.policy": "delete"})
TICKS = TopicSpec("md.ticks.v1", partitions=12, config={"cleanup.policy": "delete"})
QUOTES = TopicSpec("md.quotes.v1", partitions=12, config={"cleanup.policy": "delete"})
CORPORATE_ACTIONS = TopicSpec("md.corporate_actions.v1", partitions=3, config={"retention.ms": "-1"})
QUALITY = TopicSpec("md.quality.v1", partitions=3)
# Messages that could not be serialized or sent, with the reason (docs/events.md).
DEAD_LETTER = TopicSpec("md.dead_letter.v1", partitions=1, config={"retention.ms": "-1"})
RAW_STREAM_MAX_MESSAGE_BYTES = 16 * 1024 * 1024 + 64 * 1024
ALL_TOPICS = (BARS_1D, BARS_1M, TICKS, QUOTES, CORPORATE_ACTIONS, QUALITY, DEAD_LETTER)


def raw_stream_topic(provider: str) -> TopicSpec:
    """The topic a real-time collector lands `provider`'s raw websocket frames on.

    One partition: frames stay in arrival order (a correction follows the trade it corrects) and one
    offset range per run covers everything new. Messages up to 16 MiB plus headers (a collector's
    largest frame, `mdpipeline.stream.landing.MAX_FRAME_BYTES`) are accepted, not the broker's 1 MiB.
    """
    return TopicSpec(f"raw.stream.{provider}.v1", partitions=1,
                     config={"cleanup.policy": "delete", "max.message.bytes": str(RAW_STREAM_MAX_MESSAGE_BYTES)})


def ensure_topics(
    cluster: str | AdminClient, specs: tuple[TopicSpec, ...] = ALL_TOPICS, timeout: float = 15.0
) -> list[str]:
    """Create the topics that do not exist yet on `cluster` (bootstrap servers, or an admin client of it);
    returns the names created."""
    admin = cluster if isinstance(cluster, AdminClient) else AdminClient({"bootstrap.servers": cluster})
    existing = set(admin.list_topics(timeout=timeout).topics)
    missing = [s for s in specs if s.name not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication_factor, config=s.config)
         for s in missing],
        operation_timeout=timeout,
    )
    created: list[str] = []
    for name, fut in futures.items():
        try:
            fut.result(timeout=timeout)
            created.append(name)
        except Exception as err:
            if "TOPIC_ALREADY_EXISTS" not in str(err) and "already exists" not in str(err).lower():
                raise
    return created
