"""`ops.provider_quota` and `ops.provider_rate`: request limits of each provider, held by the database so
that every process and run using the database shares them.

- Daily quota: one row per (provider, quota day), the day being the provider's own (its midnight in
  the quota time zone, computed from the database server's clock). Taking a request is one atomic
  `insert ... on conflict do update ... where used < limit returning`: the row lock serialises
  concurrent takers, so two processes can never both take the last request.
- Request rate: one row per provider holding the GCRA "theoretical arrival time" (a token bucket
  expressed as one timestamp). Reserving a slot advances it atomically and says how long the caller
  must wait before sending, so concurrent callers get distinct, evenly spaced slots.

Every statement runs on its own (autocommit) and uses `now()` of the database, so the processes need
no agreement on their clocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import psycopg

DDL = """
create table if not exists ops.provider_quota (
    provider    text        not null,
    quota_day   date        not null,  -- the provider's day (midnight in its quota time zone)
    used        integer     not null default 0,
    exhausted   boolean     not null default false,  -- the provider said its daily quota is spent
    updated_at  timestamptz not null default now(),
    primary key (provider, quota_day)
);
create table if not exists ops.provider_rate (
    provider    text        primary key,
    tat         timestamptz not null  -- GCRA theoretical arrival time: when the bucket is full again
);
"""

_TAKE = """
insert into ops.provider_quota as q (provider, quota_day, used)
values (%(provider)s, (now() at time zone %(tz)s)::date, 1)
on conflict (provider, quota_day) do update set used = q.used + 1, updated_at = now()
    where not q.exhausted and (%(limit)s::integer is null or q.used < %(limit)s::integer)
returning quota_day, used
"""
_TODAY = """
select (now() at time zone %(tz)s)::date, coalesce(q.used, 0), coalesce(q.exhausted, false)
from (select 1) one
left join ops.provider_quota q on q.provider = %(provider)s and q.quota_day = (now() at time zone %(tz)s)::date
"""
_EXHAUST = """
insert into ops.provider_quota as q (provider, quota_day, exhausted)
values (%(provider)s, (now() at time zone %(tz)s)::date, true)
on conflict (provider, quota_day) do update set exhausted = true, updated_at = now()
"""
_RESERVE = """
insert into ops.provider_rate as r (provider, tat) values (%(provider)s, now() + make_interval(secs => %(t)s))
on conflict (provider) do update set tat = greatest(r.tat, now()) + make_interval(secs => %(t)s)
returning greatest(0.0, extract(epoch from r.tat - now())::float8 - %(t)s - %(tau)s)
"""


@dataclass(frozen=True)
class QuotaDay:
    """A provider's usage on one of its days."""

    day: date
    used: int
    exhausted: bool = False


def take_request(conn: psycopg.Connection, provider: str, limit: int | None, tz: str) -> QuotaDay | None:
    """Count one request on the provider's current day; None (nothing counted) when the day's `limit` is
    reached or the provider said the quota is spent. `limit` None counts without a cap."""
    if limit is not None and limit <= 0:
        return None
    row = conn.execute(_TAKE, {"provider": provider, "limit": limit, "tz": tz}).fetchone()
    return QuotaDay(row[0], int(row[1])) if row else None


def quota_today(conn: psycopg.Connection, provider: str, tz: str) -> QuotaDay:
    """Requests counted on the provider's current day (0 when none)."""
    row = conn.execute(_TODAY, {"provider": provider, "tz": tz}).fetchone()
    assert row is not None
    return QuotaDay(row[0], int(row[1]), bool(row[2]))


def exhaust_day(conn: psycopg.Connection, provider: str, tz: str) -> None:
    """Mark the provider's current day as spent (its own answer said so): no more requests until its midnight."""
    conn.execute(_EXHAUST, {"provider": provider, "tz": tz})


def reserve_slot(conn: psycopg.Connection, provider: str, rate_per_second: float, burst: int) -> float:
    """Take the next request slot of a shared token bucket (`rate_per_second`, `burst`); seconds to wait."""
    interval = 1.0 / rate_per_second
    tolerance = (max(1, burst) - 1) * interval
    row = conn.execute(_RESERVE, {"provider": provider, "t": interval, "tau": tolerance}).fetchone()
    assert row is not None
    return float(row[0])


__all__ = ["DDL", "QuotaDay", "exhaust_day", "quota_today", "reserve_slot", "take_request"]
