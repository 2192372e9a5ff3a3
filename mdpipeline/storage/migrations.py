"""Versioned DDL for the `raw`, `ref`, `md`, `quality` and `ops` schemas.

One decision point (`timescale_available`) picks the physical layout when a database is first
migrated, by what the server can do: TimescaleDB hypertables when the extension is preloaded (or can
otherwise be created), native range partitioning on plain PostgreSQL 14+. The layout is recorded in
`ops.schema_migrations` and every later migration follows it. The logical tables are identical
either way; after the versioned DDL, `migrate` applies the storage configuration (retention,
compression, roll-ups: `mdpipeline.storage.policies`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from mdpipeline.storage.provider_quota import DDL as PROVIDER_QUOTA_DDL
from mdpipeline.storage.storage_config import StorageConfig
from mdpipeline.storage.stream_state import DDL as STREAM_STATE_DDL

TIMESCALEDB = "timescaledb"
POSTGRES_PARTITIONED = "postgres-partitioned"

# Plain PostgreSQL: natively range-partitioned tables, name -> (partition column, partition interval).
TIME_PARTITIONED: dict[str, tuple[str, str]] = {
    "md.bars_1d": ("session_date", "1 year"),
    "md.bars_1m": ("session_date", "1 month"),
    "md.ticks": ("session_date", "1 day"),
    "md.bars_1d_revisions": ("session_date", "1 year"),
    "md.bars_1m_revisions": ("session_date", "1 month"),
    "md.ticks_revisions": ("session_date", "1 day"),
    "md.quotes": ("session_date", "1 day"),
}
# TimescaleDB: hypertables, name -> (time dimension, chunk interval). Minute bars are chunked on `ts`
# (their continuous aggregates must bucket the time dimension); loads add a `ts` predicate derived
# from their session range so that chunk exclusion works (`storage.loader.Scope`).
HYPERTABLES: dict[str, tuple[str, str]] = {
    "md.bars_1d": ("session_date", "1 year"),
    "md.bars_1m": ("ts", "7 days"),
    "md.ticks": ("session_date", "1 day"),
    "md.bars_1d_revisions": ("session_date", "1 year"),
    "md.bars_1m_revisions": ("ts", "1 month"),
    "md.ticks_revisions": ("session_date", "1 day"),
    "md.quotes": ("session_date", "1 day"),
}
# What migration 1 created; frozen, since an applied migration never changes.
_INITIAL_TIME_TABLES: dict[str, tuple[str, str]] = {
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


def timescaledb_preloaded(conn: psycopg.Connection) -> bool:
    """True when the server runs with TimescaleDB in `shared_preload_libraries`."""
    row = conn.execute("select current_setting('shared_preload_libraries')").fetchone()
    return TIMESCALEDB in [lib.strip().strip('"') for lib in str(row[0] if row else "").split(",")]


def timescale_available(conn: psycopg.Connection) -> bool:
    """True when this server can run TimescaleDB (the one decision point of the layout).

    Decided by what the server can do, never by what is merely on disk: the extension must be
    preloaded (`shared_preload_libraries`), or `create extension` must succeed (tried on a connection
    of its own, rolled back: without the preload TimescaleDB ends that session with a FATAL error). A
    server that lists it in `pg_available_extensions` without preloading it gets the plain layout.
    """
    if conn.execute("select 1 from pg_available_extensions where name = %s", (TIMESCALEDB,)).fetchone() is None:
        return False
    if timescaledb_preloaded(conn):
        return True
    if conn.execute("select 1 from pg_extension where extname = %s", (TIMESCALEDB,)).fetchone() is not None:
        return False  # created once, but not loadable now: its tables would fail
    params = {o.keyword.decode(): o.val.decode() for o in conn.pgconn.info if o.val is not None}
    try:
        with psycopg.connect(**params, autocommit=True) as probe, probe.transaction() as tx:
            probe.execute("create extension timescaledb")
            raise psycopg.Rollback(tx)
    except psycopg.Error:
        return False
    return True


def _partition_clause(table: str, timescale: bool) -> str:
    column, _ = _INITIAL_TIME_TABLES[table]
    return "" if timescale else f"partition by range ({column})"


def _initial(conn: psycopg.Connection, timescale: bool) -> None:
    if timescale:
        conn.execute("create extension if not exists timescaledb")
    ddl = BASE_DDL.format(**{
        f"partition_clause_{t.split('.')[1]}": _partition_clause(t, timescale) for t in _INITIAL_TIME_TABLES
    })
    conn.execute(ddl)
    if timescale:
        for table, (column, interval) in _INITIAL_TIME_TABLES.items():
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


def migrate(conn: psycopg.Connection, config: StorageConfig | None = None) -> list[int]:
    """Apply pending migrations, then the storage configuration, in one transaction; returns the versions applied.

    The layout is decided once, when the database is first migrated, and recorded; later migrations
    follow it (a database created on TimescaleDB fails clearly when the server stops preloading it).
    `config` defaults to the checked-in storage configuration (`MDP_STORAGE_CONFIG`,
    `config/storage.yaml`); its retention, compression and roll-up settings are applied on every
    run, so changing the file and migrating again changes the policies. An advisory lock serialises
    concurrent migrators (several run workers starting at once).
    """
    from mdpipeline.storage.policies import apply_storage_config
    from mdpipeline.storage.storage_config import load_storage_config

    config = config or load_storage_config()
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
        recorded = conn.execute("select layout from ops.schema_migrations order by version limit 1").fetchone()
        timescale = timescale_available(conn) if recorded is None else recorded[0] == TIMESCALEDB
        if recorded is not None and timescale and not timescaledb_preloaded(conn):
            raise RuntimeError("this database was created with TimescaleDB, but the server does not preload it:"
                               " start it with shared_preload_libraries = 'timescaledb'")
        for m in MIGRATIONS:
            if m.version in done:
                continue
            m.apply(conn, timescale)
            conn.execute(
                "insert into ops.schema_migrations (version, name, layout) values (%s, %s, %s)",
                (m.version, m.name, TIMESCALEDB if timescale else POSTGRES_PARTITIONED),
            )
            applied.append(m.version)
        apply_storage_config(conn, config, timescale)
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


def _revisions_and_minute_chunks(conn: psycopg.Connection, timescale: bool) -> None:
    """Revision tables (previous versions of corrected bars); on TimescaleDB, md.bars_1m chunked on `ts`.

    A revision row is a bar as it was stored before a load changed or deleted it, with when that
    happened (`superseded_at`: the correcting load's `ingested_at`) and how (`change`). The current
    version stays in md.bars_1d / md.bars_1m, so the default read does not change; as-of reads
    combine both (`storage.bars`).
    """
    if timescale and _time_dimension(conn, "md.bars_1m") != "ts":
        _rebuild_bars_1m_on_ts(conn)
    for table, key in (("md.bars_1d", "instrument_id, provider, session_date"),
                       ("md.bars_1m", "instrument_id, provider, session_date, ts")):
        revisions = f"{table}_revisions"
        column = (HYPERTABLES if timescale else TIME_PARTITIONED)[revisions][0]
        clause = "" if timescale else f" partition by range ({column})"
        conn.execute(
            f"create table if not exists {revisions} (like {table} including defaults,"
            " superseded_at timestamptz not null,"
            " change text not null check (change in ('update', 'delete')))" + clause)
        conn.execute(f"create index if not exists {revisions.split('.')[1]}_by_key on {revisions} ({key})")
        if timescale:
            conn.execute("select create_hypertable(%s, by_range(%s, %s::interval), if_not_exists => true)",
                         (revisions, column, HYPERTABLES[revisions][1]))
    # Published outbox rows expire by age (storage config); find them without a scan of pending rows.
    conn.execute("create index if not exists outbox_published_at on ops.outbox (published_at)"
                 " where published_at is not null")


def _time_dimension(conn: psycopg.Connection, table: str) -> str | None:
    """The time dimension of a hypertable (None when it is not one)."""
    schema, name = table.split(".")
    row = conn.execute(
        "select column_name from timescaledb_information.dimensions where hypertable_schema = %s"
        " and hypertable_name = %s and dimension_number = 1", (schema, name)).fetchone()
    return str(row[0]) if row else None


def _rebuild_bars_1m_on_ts(conn: psycopg.Connection) -> None:
    """Move md.bars_1m to a hypertable on `ts` (it was chunked on session_date), keeping every row."""
    conn.execute("alter table md.bars_1m rename to bars_1m_by_session")
    conn.execute("alter index md.bars_1m_pkey rename to bars_1m_by_session_pkey")
    conn.execute("create table md.bars_1m (like md.bars_1m_by_session including defaults,"
                 " primary key (instrument_id, provider, session_date, ts))")
    column, interval = HYPERTABLES["md.bars_1m"]
    conn.execute("select create_hypertable('md.bars_1m', by_range(%s, %s::interval))", (column, interval))
    conn.execute("insert into md.bars_1m select * from md.bars_1m_by_session")
    conn.execute("drop table md.bars_1m_by_session")


def _expire_rows_procedure(conn: psycopg.Connection, timescale: bool) -> None:
    """ops.expire_rows: retention of the tables that are not time-partitioned (raw payloads, published outbox).

    A procedure with TimescaleDB's job signature, so TimescaleDB schedules it (`add_job`) and the
    plain layout's Dagster retention job calls the same code.
    """
    conn.execute(expire_rows_ddl("ops.outbox"))


def expire_rows_ddl(sent_events: str, then: str = "") -> str:
    """ops.expire_rows, deleting expired sent outbox events from `sent_events` (ops.outbox until migration 15),
    then running the statements `then` (when outbox retention is configured)."""
    return f"""
create or replace procedure ops.expire_rows(job_id integer, config jsonb)
language plpgsql as $$
begin
    if config ? 'raw.payloads' then
        delete from raw.payloads where session_end < current_date - (config ->> 'raw.payloads')::interval;
    end if;
    if config ? 'ops.outbox' then
        delete from {sent_events} where published_at < now() - (config ->> 'ops.outbox')::interval;{then}
    end if;
end
$$;
"""


def _stream_state(conn: psycopg.Connection, timescale: bool) -> None:
    """Collector coverage, topic incarnations of processed offsets, gaps found by the real-time job."""
    conn.execute(STREAM_STATE_DDL)


def _tick_revisions(conn: psycopg.Connection, timescale: bool) -> None:
    """Each stored trade keeps the event id that announced it and the trade it corrects; md.ticks_revisions
    keeps trades as they were before a cancel, a correction or a changed resend superseded them.

    `change`: `cancel` (the provider cancelled the trade), `correct` (replaced by `superseded_by`, the
    correcting trade's id), `update` (the same trade id arrived again with other values). `superseded_at`
    is when the pipeline learnt it, `superseded_run_id` the run that applied it.
    """
    conn.execute("alter table md.ticks add column if not exists event_id text;"
                 " alter table md.ticks add column if not exists corrects bigint")
    column = (HYPERTABLES if timescale else TIME_PARTITIONED)["md.ticks_revisions"][0]
    clause = "" if timescale else f" partition by range ({column})"
    conn.execute(
        "create table if not exists md.ticks_revisions (like md.ticks including defaults,"
        " superseded_at timestamptz not null,"
        " change text not null check (change in ('update', 'cancel', 'correct')),"
        " superseded_by bigint, superseded_run_id text not null)" + clause)
    conn.execute("create index if not exists ticks_revisions_by_key on md.ticks_revisions"
                 " (instrument_id, provider, session_date, sequence)")
    if timescale:
        conn.execute("select create_hypertable('md.ticks_revisions', by_range(%s, %s::interval),"
                     " if_not_exists => true)", (column, HYPERTABLES["md.ticks_revisions"][1]))


def _quotes(conn: psycopg.Connection, timescale: bool) -> None:
    """md.quotes: best bid and offer from the real-time feeds, laid out like md.ticks (daily chunks or
    partitions on `session_date`). No key of its own (quotes have no provider id): a raw range is applied
    once (`ops.stream_offsets`), and `raw_offset`/`raw_position` say where each quote came from."""
    column, interval = (HYPERTABLES if timescale else TIME_PARTITIONED)["md.quotes"]
    clause = "" if timescale else f" partition by range ({column})"
    conn.execute(
        """
        create table if not exists md.quotes (
            instrument_id  bigint           not null,
            symbol         text             not null,
            session_date   date             not null,
            ts             timestamptz      not null,
            provider       text             not null,
            bid_price      double precision not null,
            bid_size       double precision not null,
            bid_exchange   text,
            ask_price      double precision not null,
            ask_size       double precision not null,
            ask_exchange   text,
            conditions     text,
            tape           text,
            raw_offset     bigint,
            raw_position   bigint,
            run_id         text             not null,
            ingested_at    timestamptz      not null,
            event_id       text
        )""" + clause)
    conn.execute("create index if not exists quotes_by_instrument on md.quotes"
                 " (instrument_id, provider, session_date, ts)")
    if timescale:
        conn.execute("select create_hypertable('md.quotes', by_range(%s, %s::interval), if_not_exists => true)",
                     (column, interval))


def _outbox_pending_order(conn: psycopg.Connection, timescale: bool) -> None:
    """The relay reads pending rows in id order: an index of just those, so a long published history
    is not walked on every drain."""
    conn.execute("create index if not exists outbox_pending_order on ops.outbox (outbox_id)"
                 " where published_at is null")


def _outbox_lz4(conn: psycopg.Connection, timescale: bool) -> None:
    """Outbox values (a minute-bar session's event is ~38 kB of JSON) compressed with lz4 instead of
    pglz: writing 2,000 such events took 0.5 s instead of 2.2 s. A server built without
    lz4 keeps pglz; rows already written keep their compression."""
    row = conn.execute("select exists (select 1 from pg_settings where name = 'default_toast_compression'"
                       " and 'lz4' = any(enumvals))").fetchone()
    if row is not None and row[0]:
        conn.execute("alter table ops.outbox alter column value set compression lz4")


def _new_chunks_schema(conn: psycopg.Connection, timescale: bool) -> None:
    """Schema of the chunks a first load builds apart and attaches (storage/new_chunks.py)."""
    if timescale:
        conn.execute("create schema if not exists md_chunks")


def _outbox_sent_history(conn: psycopg.Connection, timescale: bool) -> None:
    """ops.outbox holds pending events only; a confirmed event moves to ops.outbox_sent.

    Marking a row published was an UPDATE: a whole new row version, two index entries and about
    150 MiB of WAL per 200,000 daily-bar events, and the relay's largest cost (see
    docs/performance.md). Moving the confirmed rows (a DELETE, and an INSERT into an index-free
    history without the value) costs about half, and the pending table loses its partial indexes.
    A dead-lettered event keeps its whole value in the history.
    """
    conn.execute(OUTBOX_SENT_DDL)
    conn.execute("insert into ops.outbox_sent select outbox_id, topic, key, event_id,"
                 " case when dead_letter_reason is null then null else value end, headers, provider, session_date,"
                 " created_at, published_at, dead_letter_reason from ops.outbox where published_at is not null"
                 " order by outbox_id")
    conn.execute("delete from ops.outbox where published_at is not null")
    conn.execute("drop index if exists ops.outbox_published_at; drop index if exists ops.outbox_pending_order;"
                 " drop index if exists ops.outbox_pending_event; drop index if exists ops.outbox_pending_range")
    conn.execute("alter table ops.outbox drop column published_at")
    conn.execute("create unique index outbox_event on ops.outbox (topic, event_id);"
                 " create index outbox_scope on ops.outbox (provider, session_date)")
    conn.execute(OUTBOX_EVENTS_VIEW_DDL)
    conn.execute(expire_rows_ddl("ops.outbox_sent"))


OUTBOX_SENT_DDL = """
create table ops.outbox_sent (
    outbox_id          bigint      not null,
    topic              text        not null,
    key                text,
    event_id           text        not null,
    value              text,
    headers            jsonb       not null,
    provider           text        not null,
    session_date       date        not null,
    created_at         timestamptz not null,
    published_at       timestamptz not null,
    dead_letter_reason text
);
create index outbox_sent_published_at on ops.outbox_sent using brin (published_at);
"""
OUTBOX_EVENTS_VIEW_DDL = """
create view ops.outbox_events as
select outbox_id, topic, key, event_id, value, headers, provider, session_date, created_at,
       null::timestamptz as published_at, dead_letter_reason
from ops.outbox
union all
select outbox_id, topic, key, event_id, value, headers, provider, session_date, created_at,
       published_at, dead_letter_reason
from ops.outbox_sent;
comment on view ops.outbox_events is
    'Every queued event: pending (ops.outbox, published_at null) and sent (ops.outbox_sent)';
"""


def _outbox_header_sets(conn: psycopg.Connection, timescale: bool) -> None:
    """Lineage headers stored once per outbox write (ops.outbox_headers) instead of on every event.

    A store step's events share one set of headers (run, provider, range), about 130 bytes of jsonb:
    over a third of a daily-bar event's row, written to ops.outbox, read back and converted to text
    by the relay, and copied into the history for every event. New rows carry `headers_id`; rows
    written before keep their own `headers` (nothing is rewritten), and ops.outbox_events shows
    either as `headers`.
    """
    conn.execute(OUTBOX_HEADERS_DDL)
    for table in ("ops.outbox", "ops.outbox_sent"):
        conn.execute(f"alter table {table} add column headers_id bigint;"
                     f" alter table {table} alter column headers drop not null;"
                     f" alter table {table} add constraint {table.split('.')[1]}_has_headers"
                     " check (headers is not null or headers_id is not null)")
    conn.execute("drop view ops.outbox_events")
    conn.execute(OUTBOX_EVENTS_WITH_HEADER_SETS_VIEW_DDL)
    conn.execute(EXPIRE_ROWS_WITH_HEADER_SETS_DDL)


OUTBOX_HEADERS_DDL = """
create table ops.outbox_headers (
    headers_id bigint      generated always as identity primary key,
    headers    jsonb       not null,
    created_at timestamptz not null default now()
);
comment on table ops.outbox_headers is
    'Lineage headers of outbox events, one row per outbox write (ops.outbox(_sent).headers_id)';
"""
OUTBOX_EVENTS_WITH_HEADER_SETS_VIEW_DDL = """
create view ops.outbox_events as
select o.outbox_id, o.topic, o.key, o.event_id, o.value, coalesce(o.headers, h.headers) as headers, o.provider,
       o.session_date, o.created_at, null::timestamptz as published_at, o.dead_letter_reason
from ops.outbox o left join ops.outbox_headers h using (headers_id)
union all
select s.outbox_id, s.topic, s.key, s.event_id, s.value, coalesce(s.headers, h.headers) as headers, s.provider,
       s.session_date, s.created_at, s.published_at, s.dead_letter_reason
from ops.outbox_sent s left join ops.outbox_headers h using (headers_id);
comment on view ops.outbox_events is
    'Every queued event: pending (ops.outbox, published_at null) and sent (ops.outbox_sent)';
"""
# Header sets are never shared between writes, so one that no event refers to any more (its events
# expired, or were replaced while pending) is never referred to again.
EXPIRE_ROWS_WITH_HEADER_SETS_DDL = expire_rows_ddl("ops.outbox_sent", """
        delete from ops.outbox_headers h
         where not exists (select from ops.outbox o where o.headers_id = h.headers_id)
           and not exists (select from ops.outbox_sent s where s.headers_id = h.headers_id);""")


# Every schema version, in order. Append new versions; never edit an applied one.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schemas", _initial),
    Migration(2, "corporate actions and adjustment factors", _corporate_actions_and_factors),
    Migration(3, "outbox, stream offsets and gaps", _outbox_and_streams),
    Migration(4, "stream gap repair outcomes", _stream_gap_repair),
    Migration(5, "compressed raw payloads with their symbols", _compressed_payloads),
    Migration(6, "provider request quotas shared across processes", _provider_quota),
    Migration(7, "bar revisions; minute bars chunked on ts", _revisions_and_minute_chunks),
    Migration(8, "expiry of raw payloads and published outbox rows", _expire_rows_procedure),
    Migration(9, "stream collector coverage, topic incarnations, log-reset gaps", _stream_state),
    Migration(10, "pending outbox rows in id order", _outbox_pending_order),
    Migration(11, "tick event ids, corrections and revisions", _tick_revisions),
    Migration(12, "quotes", _quotes),
    Migration(13, "outbox values compressed with lz4", _outbox_lz4),
    Migration(14, "schema of chunks built apart by first loads", _new_chunks_schema),
    Migration(15, "sent outbox events move to ops.outbox_sent", _outbox_sent_history),
    Migration(16, "outbox lineage headers stored once per write", _outbox_header_sets),
)
