"""Versioned DDL for the `raw`, `ref`, `md`, `quality` and `ops` schemas.

One decision point (`timescale_available`) picks the physical layout at migration time: TimescaleDB
hypertables when the extension can be created, native range partitioning on plain PostgreSQL 14+.
The logical tables are identical either way, so the rest of the code never asks which it got.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from mdpipeline.storage.provider_quota import DDL as PROVIDER_QUOTA_DDL
from mdpipeline.storage.stream_state import DDL as STREAM_STATE_DDL

# Time-partitioned tables: name -> (partition column, chunk interval).
TIME_PARTITIONED: dict[str, tuple[str, str]] = {
    "md.bars_1d": ("session_date", "1 year"),
    "md.bars_1m": ("session_date", "1 month"),
    "md.ticks": ("session_date", "1 day"),
}

_BARS_COLUMNS = """
    instrument_id   bigint           not null,
    symbol          text             not null,
    session_date    date             not null,
    provider        text             not null,
    open            double precision not null,
    high            double precision not null,
    low             double precision not null,
    close           double precision not null,
    volume          double precision not null,
    vwap            double precision,
    trades          bigint,
    raw_payload_id  bigint,
    run_id          text             not null,
    ingested_at     timestamptz      not null
"""

BASE_DDL = f"""
create schema if not exists raw;
create schema if not exists ref;
create schema if not exists md;
create schema if not exists quality;
create schema if not exists ops;

create table if not exists raw.payloads (
    payload_id    bigint generated always as identity primary key,
    provider      text        not null,
    dataset       text        not null,
    session_date  date        not null,
    session_end   date        not null,
    request_key   text        not null,
    endpoint      text        not null,
    params        jsonb       not null,
    status        integer     not null,
    content_type  text        not null,
    body          bytea       not null,
    sha256        text        not null,
    fetched_at    timestamptz not null,
    first_run_id  text        not null,
    last_run_id   text        not null,
    last_seen_at  timestamptz not null default now(),
    unique (provider, dataset, session_date, request_key, sha256)
);
create index if not exists payloads_by_partition
    on raw.payloads (provider, dataset, session_date, session_end);

create table if not exists ref.instruments (
    instrument_id bigint primary key,
    name          text not null,
    mic           text not null,
    currency      text not null,
    asset_class   text not null,
    figi          text,
    isin          text,
    updated_at    timestamptz not null default now()
);
create table if not exists ref.symbology (
    instrument_id bigint not null references ref.instruments,
    symbol        text   not null,
    valid_from    date   not null,
    valid_to      date   not null,
    primary key (symbol, valid_from),
    check (valid_from <= valid_to)
);
create table if not exists ref.corporate_actions (
    instrument_id  bigint not null,
    ex_date        date   not null,
    action         text   not null check (action in ('split', 'cash_dividend')),
    ratio          double precision,
    amount         double precision,
    currency       text,
    provider       text   not null,
    raw_payload_id bigint,
    learned_at     timestamptz not null default now(),
    primary key (instrument_id, ex_date, action, provider)
);

create table if not exists md.bars_1d ({_BARS_COLUMNS},
    primary key (instrument_id, provider, session_date)
) {{partition_clause_bars_1d}};
create table if not exists md.bars_1m ({_BARS_COLUMNS},
    ts timestamptz not null,
    primary key (instrument_id, provider, session_date, ts)
) {{partition_clause_bars_1m}};
create table if not exists md.ticks (
    instrument_id  bigint           not null,
    symbol         text             not null,
    session_date   date             not null,
    ts             timestamptz      not null,
    provider       text             not null,
    price          double precision not null,
    size           double precision not null,
    exchange       text,
    conditions     text,
    sequence       bigint           not null,
    raw_payload_id bigint,
    run_id         text             not null,
    ingested_at    timestamptz      not null,
    primary key (instrument_id, provider, session_date, ts, sequence)
) {{partition_clause_ticks}};

create table if not exists quality.quarantine (
    quarantine_id  bigint generated always as identity primary key,
    dataset        text        not null,
    provider       text        not null,
    stage          text        not null,
    session_date   date,
    symbol         text,
    check_name     text        not null,
    reason         text        not null,
    row_data       jsonb       not null,
    raw_payload_id bigint,
    run_id         text        not null,
    quarantined_at timestamptz not null default now()
);
create index if not exists quarantine_by_partition
    on quality.quarantine (dataset, provider, stage, session_date);

create table if not exists quality.check_results (
    result_id       bigint generated always as identity primary key,
    asset_key       text        not null,
    check_name      text        not null,
    partition_start date,
    partition_end   date,
    passed          boolean     not null,
    severity        text        not null,
    metadata        jsonb       not null,
    run_id          text        not null,
    checked_at      timestamptz not null default now()
);

create table if not exists ops.publications (
    publication_id  bigint generated always as identity primary key,
    topic           text        not null,
    provider        text        not null,
    partition_start date        not null,
    partition_end   date        not null,
    messages        bigint      not null,
    run_id          text        not null,
    published_at    timestamptz not null default now()
);
"""


@dataclass(frozen=True)
class Migration:
    """One schema version; `apply` runs inside the migration transaction."""

    version: int
    name: str
    apply: Callable[[psycopg.Connection, bool], None]


def timescale_available(conn: psycopg.Connection) -> bool:
    """True when the timescaledb extension is installed on the server (the one decision point)."""
    row = conn.execute(
        "select 1 from pg_available_extensions where name = 'timescaledb'"
    ).fetchone()
    return row is not None


def _partition_clause(table: str, timescale: bool) -> str:
    column, _ = TIME_PARTITIONED[table]
    return "" if timescale else f"partition by range ({column})"


def _initial(conn: psycopg.Connection, timescale: bool) -> None:
    if timescale:
        conn.execute("create extension if not exists timescaledb")
    ddl = BASE_DDL.format(**{
        f"partition_clause_{t.split('.')[1]}": _partition_clause(t, timescale) for t in TIME_PARTITIONED
    })
    conn.execute(ddl)
    if timescale:
        for table, (column, interval) in TIME_PARTITIONED.items():
            conn.execute(
                "select create_hypertable(%s, by_range(%s, %s::interval), if_not_exists => true)",
                (table, column, interval),
            )
            conn.execute(
                f"alter table {table} set (timescaledb.compress, "
                "timescaledb.compress_segmentby = 'instrument_id, provider')"
            )
            conn.execute(
                "select add_compression_policy(%s, %s::interval, if_not_exists => true)",
                (table, "30 days" if table != "md.bars_1d" else "365 days"),
            )


def migrate(conn: psycopg.Connection) -> list[int]:
    """Apply pending migrations in one transaction each; returns the versions applied.

    An advisory lock serialises concurrent migrators (several run workers starting at once).
    """
    applied: list[int] = []
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(hashtext('mdpipeline.migrate'))")
        conn.execute("create schema if not exists ops")
        conn.execute(
            "create table if not exists ops.schema_migrations ("
            " version integer primary key, name text not null, layout text not null,"
            " applied_at timestamptz not null default now())"
        )
        done = {r[0] for r in conn.execute("select version from ops.schema_migrations")}
        timescale = timescale_available(conn)
        for m in MIGRATIONS:
            if m.version in done:
                continue
            m.apply(conn, timescale)
            conn.execute(
                "insert into ops.schema_migrations (version, name, layout) values (%s, %s, %s)",
                (m.version, m.name, "timescaledb" if timescale else "postgres-partitioned"),
            )
            applied.append(m.version)
    return applied


def storage_layout(conn: psycopg.Connection) -> str:
    """`timescaledb` or `postgres-partitioned`, as decided when the schema was created."""
    row = conn.execute("select layout from ops.schema_migrations order by version limit 1").fetchone()
    if row is None:
        raise RuntimeError("the database is not migrated: run `mdpipeline migrate`")
    return str(row[0])


def _corporate_actions_and_factors(conn: psycopg.Connection, timescale: bool) -> None:
    """Point-in-time corporate actions per provider, adjustment factors, and the adjusted view."""
    conn.execute(
        """
        alter table ref.corporate_actions add column if not exists symbol text;
        alter table ref.corporate_actions add column if not exists run_id text;

        create table if not exists md.adjustment_factors (
            instrument_id bigint           not null,
            ex_date       date             not null,
            action        text             not null,
            ratio         double precision,
            amount        double precision,
            prior_close   double precision,
            price_factor  double precision not null check (price_factor > 0),
            volume_factor double precision not null check (volume_factor > 0),
            learned_at    timestamptz      not null,
            primary key (instrument_id, ex_date, action)
        );

        -- Adjusted daily bars for SQL users; the Python read API computes the same (and as-of reads).
        create or replace view md.bars_1d_adjusted as
        select b.instrument_id, b.symbol, b.session_date, b.provider,
               b.open * s.f as split_open, b.high * s.f as split_high, b.low * s.f as split_low,
               b.close * s.f as split_close, b.volume * s.v as split_volume,
               b.open * t.f as total_open, b.high * t.f as total_high, b.low * t.f as total_low,
               b.close * t.f as total_close, b.volume * t.v as total_volume,
               b.open, b.high, b.low, b.close, b.volume
        from md.bars_1d b
        cross join lateral (
            select coalesce(exp(sum(ln(price_factor))), 1) as f, coalesce(exp(sum(ln(volume_factor))), 1) as v
            from md.adjustment_factors a
            where a.instrument_id = b.instrument_id and a.ex_date > b.session_date and a.action = 'split'
        ) s
        cross join lateral (
            select coalesce(exp(sum(ln(price_factor))), 1) as f, coalesce(exp(sum(ln(volume_factor))), 1) as v
            from md.adjustment_factors a
            where a.instrument_id = b.instrument_id and a.ex_date > b.session_date
        ) t;
        """
    )


# Version 3 (additive only): the transactional outbox, processed stream offsets, stream gaps.
OUTBOX_AND_STREAMS_DDL = """
create table if not exists ops.outbox (
    outbox_id          bigint generated always as identity primary key,
    topic              text        not null,
    key                text,
    event_id           text        not null,
    value              text        not null,
    headers            jsonb       not null,
    provider           text        not null,
    session_date       date        not null,
    created_at         timestamptz not null default now(),
    published_at       timestamptz,
    dead_letter_reason text
);
create unique index if not exists outbox_pending_event on ops.outbox (topic, event_id) where published_at is null;
create index if not exists outbox_pending_range on ops.outbox (provider, session_date) where published_at is null;

create table if not exists ops.stream_offsets (
    consumer     text        not null,
    topic        text        not null,
    partition    integer     not null,
    next_offset  bigint      not null check (next_offset >= 0),
    run_id       text,
    updated_at   timestamptz not null default now(),
    primary key (consumer, topic, partition)
);

create table if not exists ops.stream_gaps (
    gap_id          bigint generated always as identity primary key,
    provider        text        not null,
    topic           text        not null,
    raw_offset      bigint      not null,
    disconnected_at timestamptz not null,
    reconnected_at  timestamptz not null,
    reason          text        not null,
    recorded_at     timestamptz not null default now(),
    repaired_at     timestamptz,
    unique (topic, raw_offset)
);
"""


def _outbox_and_streams(conn: psycopg.Connection, timescale: bool) -> None:
    """Transactional outbox, processed stream offsets and stream gaps."""
    conn.execute(OUTBOX_AND_STREAMS_DDL)


def _stream_gap_repair(conn: psycopg.Connection, timescale: bool) -> None:
    """Outcome of stream gap repair: repaired or unrepairable (with why), counts, the run."""
    conn.execute(
        """
        alter table ops.stream_gaps add column if not exists repair_status text
            check (repair_status in ('repaired', 'unrepairable'));
        alter table ops.stream_gaps add column if not exists repair_note text;
        alter table ops.stream_gaps add column if not exists repair_counts jsonb;
        alter table ops.stream_gaps add column if not exists repair_run_id text;
        """
    )


def _compressed_payloads(conn: psycopg.Connection, timescale: bool) -> None:
    """Raw bodies stored zstd-compressed (TOAST's own compression off), their size as sent, their symbols;
    outbox values compressed with lz4."""
    conn.execute(
        """
        alter table raw.payloads add column if not exists compression text not null default 'none'
            check (compression in ('none', 'zstd'));
        alter table raw.payloads add column if not exists body_size bigint;
        update raw.payloads set body_size = octet_length(body) where body_size is null;
        alter table raw.payloads alter column body_size set not null;
        alter table raw.payloads add column if not exists symbols text[];
        alter table raw.payloads alter column body set storage external;
        -- minute-bar sessions make values of ~20 kB: lz4 compresses them far faster than pglz
        alter table ops.outbox alter column value set compression lz4;
        """
    )


def _provider_quota(conn: psycopg.Connection, timescale: bool) -> None:
    """Request limits shared by every process: daily quotas per provider day, token-bucket slots."""
    conn.execute(PROVIDER_QUOTA_DDL)


def _stream_state(conn: psycopg.Connection, timescale: bool) -> None:
    """Collector coverage, topic incarnations of processed offsets, gaps found by the real-time job."""
    conn.execute(STREAM_STATE_DDL)


# Every schema version, in order. Append new versions; never edit an applied one.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schemas", _initial),
    Migration(2, "corporate actions and adjustment factors", _corporate_actions_and_factors),
    Migration(3, "outbox, stream offsets and gaps", _outbox_and_streams),
    Migration(4, "stream gap repair outcomes", _stream_gap_repair),
    Migration(5, "compressed raw payloads with their symbols", _compressed_payloads),
    Migration(6, "provider request quotas shared across processes", _provider_quota),
    Migration(9, "stream collector coverage, topic incarnations, log-reset gaps", _stream_state),
)
