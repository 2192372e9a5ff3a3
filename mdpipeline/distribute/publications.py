"""`ops.publications`: one row per confirmed publication of a provider's session range to a topic."""

from __future__ import annotations

from datetime import date

import psycopg


def record_publication(conn: psycopg.Connection, *, topic: str, provider: str, start: date, end: date,
                       messages: int, run_id: str) -> None:
    """Record that `messages` of `provider`'s sessions [start, end] were confirmed on `topic` by `run_id`."""
    conn.execute(
        "insert into ops.publications (topic, provider, partition_start, partition_end, messages, run_id)"
        " values (%s, %s, %s, %s, %s, %s)",
        (topic, provider, start, end, messages, run_id),
    )
