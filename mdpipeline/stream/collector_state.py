"""A collector's coverage in `ops.stream_collectors`: until when everything it received is safely landed.

The collector saves `covered_until` about once a second (and when it stops). When a collector of the
same name starts again, after a crash, a SIGKILL, a reboot or a plain stop, it reads the previous
value and lands a gap marker from there to its first connection: the time no collector ran is
recorded in `ops.stream_gaps` and repaired, instead of being lost without a trace.

The database is optional for collecting: when it is unreachable the collector keeps landing frames,
logs a warning, and the stored coverage simply stays behind (a later restart then records a longer,
overlapping gap, which repair deduplicates).
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from datetime import datetime

import psycopg

from mdpipeline.storage.database import connect

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Coverage:
    """What a previous run of a collector left behind."""

    covered_until: datetime | None
    last_frame_at: datetime | None
    pid: int | None
    host: str | None


class CollectorState:
    """Reads and saves one collector's row (blocking calls: run them off the event loop)."""

    def __init__(self, database_url: str, name: str, provider: str, topic: str) -> None:
        self.database_url = database_url
        self.name = name
        self.provider = provider
        self.topic = topic
        self._conn: psycopg.Connection | None = None

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.database_url)
        return self._conn

    def start(self) -> Coverage | None:
        """Register this run (pid, host, start time) and return what the previous run left (None: first run).

        The previous `covered_until` stays stored until this run has covered the time since.
        """
        conn = self._connection()
        with conn.transaction():
            row = conn.execute("select covered_until, last_frame_at, pid, host from ops.stream_collectors"
                               " where name = %s for update", (self.name,)).fetchone()
            conn.execute(
                "insert into ops.stream_collectors (name, provider, topic, pid, host) values (%s, %s, %s, %s, %s)"
                " on conflict (name) do update set provider = excluded.provider, topic = excluded.topic,"
                " pid = excluded.pid, host = excluded.host, started_at = now(), updated_at = now()",
                (self.name, self.provider, self.topic, os.getpid(), socket.gethostname()))
        return Coverage(*row) if row else None

    def save(self, covered_until: datetime, last_frame_at: datetime | None, frames: int) -> bool:
        """Store the coverage (never moving it back); False (logged) when the database is unreachable."""
        try:
            self._connection().execute(
                "update ops.stream_collectors set covered_until = greatest(covered_until, %s),"
                " last_frame_at = coalesce(%s, last_frame_at), frames = %s, updated_at = now() where name = %s",
                (covered_until, last_frame_at, frames, self.name))
            return True
        except psycopg.Error as exc:
            log.warning("collector %s: could not save its coverage (%s); it stays at the last saved value",
                        self.name, exc)
            if self._conn is not None:
                self._conn.close()
            return False

    def close(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            self._conn.close()


def read_coverage(conn: psycopg.Connection, name: str) -> Coverage | None:
    """The stored row of collector `name` (for operators and tests)."""
    row = conn.execute("select covered_until, last_frame_at, pid, host from ops.stream_collectors where name = %s",
                       (name,)).fetchone()
    return Coverage(*row) if row else None
