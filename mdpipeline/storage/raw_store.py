"""`raw.payloads`: what providers sent, byte for byte, content-addressed so nothing is stored twice."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, date, datetime

import psycopg
from psycopg.types.json import Jsonb

from mdpipeline.providers.base import RawPayload

_UPSERT = """
insert into raw.payloads (provider, dataset, session_date, session_end, request_key, endpoint, params,
                          status, content_type, body, sha256, fetched_at, first_run_id, last_run_id)
values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
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
                p.provider, p.dataset, p.session_date, p.last_session, p.request_key, p.endpoint, Jsonb(p.params),
                p.status, p.content_type, p.body, p.sha256, p.fetched_at or now, run_id, run_id,
            ))
            payload_id, inserted = cur.fetchone()  # type: ignore[misc]
            new += bool(inserted)
            stored.append(dataclasses.replace(p, payload_id=payload_id))
    return stored, new


def load_payloads(
    conn: psycopg.Connection, provider: str, dataset: str, start: date, end: date
) -> list[RawPayload]:
    """The latest payload of each request of `provider`/`dataset` overlapping sessions [start, end].

    Ordered oldest fetch first, so callers that keep the last copy of a bar keep the freshest.
    """
    rows = conn.execute(
        """
        select * from (
            select distinct on (session_date, request_key)
                   payload_id, session_date, session_end, request_key, endpoint, params, status,
                   content_type, body, fetched_at, last_seen_at
            from raw.payloads
            where provider = %s and dataset = %s and session_date <= %s and session_end >= %s
            order by session_date, request_key, last_seen_at desc, payload_id desc
        ) latest
        order by last_seen_at, payload_id
        """,
        (provider, dataset, end, start),
    ).fetchall()
    return [
        RawPayload(
            provider=provider, dataset=dataset, session_date=r[1], session_end=r[2], request_key=r[3],
            endpoint=r[4], params=r[5], status=r[6], content_type=r[7], body=bytes(r[8]), fetched_at=r[9],
            payload_id=r[0],
        )
        for r in rows
    ]
