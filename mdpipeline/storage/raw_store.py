"""`raw.payloads`: what providers sent, byte for byte, content-addressed so nothing is stored twice."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, date, datetime

import psycopg
from psycopg.types.json import Jsonb

from mdpipeline.providers.base import RawPayload

_UPSERT = """
insert into raw.payloads (provider, dataset, session_date, request_key, endpoint, params, status,
                          content_type, body, sha256, fetched_at, first_run_id, last_run_id)
values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
on conflict (provider, dataset, session_date, request_key, sha256)
do update set last_run_id = excluded.last_run_id, last_seen_at = now()
returning payload_id, (xmax = 0) as inserted
"""


def save_payloads(
    conn: psycopg.Connection, payloads: Sequence[RawPayload], run_id: str
) -> tuple[list[RawPayload], int]:
    """Store payloads; a byte-identical re-fetch only refreshes `last_seen_at`.

    Returns the payloads with their ids and how many were new.
    """
    if not payloads:
        return [], 0
    now = datetime.now(UTC)
    stored: list[RawPayload] = []
    new = 0
    with conn.transaction(), conn.cursor() as cur:
        for p in payloads:
            cur.execute(_UPSERT, (
                p.provider, p.dataset, p.session_date, p.request_key, p.endpoint, Jsonb(p.params),
                p.status, p.content_type, p.body, p.sha256, p.fetched_at or now, run_id, run_id,
            ))
            payload_id, inserted = cur.fetchone()  # type: ignore[misc]
            new += bool(inserted)
            stored.append(dataclasses.replace(p, payload_id=payload_id))
    return stored, new


def load_payloads(
    conn: psycopg.Connection, provider: str, dataset: str, start: date, end: date
) -> list[RawPayload]:
    """The latest payload of each request of `provider`/`dataset` for sessions in [start, end]."""
    rows = conn.execute(
        """
        select distinct on (session_date, request_key)
               payload_id, session_date, request_key, endpoint, params, status, content_type, body,
               fetched_at
        from raw.payloads
        where provider = %s and dataset = %s and session_date between %s and %s
        order by session_date, request_key, last_seen_at desc, payload_id desc
        """,
        (provider, dataset, start, end),
    ).fetchall()
    return [
        RawPayload(
            provider=provider, dataset=dataset, session_date=r[1], request_key=r[2], endpoint=r[3],
            params=r[4], status=r[5], content_type=r[6], body=bytes(r[7]), fetched_at=r[8],
            payload_id=r[0],
        )
        for r in rows
    ]
