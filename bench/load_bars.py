"""Benchmark the pipeline's bar loader (replace_range) against a plain COPY FROM of the same rows.

    python bench/load_bars.py [--rows-1d N] [--rows-1m N] [--repeat 3]

Server: the one MDP_DATABASE_URL points at, when set (used only as the server); otherwise a throwaway
local cluster started here with ``LocalPostgres(data_dir, fast=False)`` and removed at the end.
``fast=False`` because the numbers should be what the pipeline gets from a real server, which keeps
fsync, synchronous_commit and full_page_writes on: ``fast=True`` (meant for tests only) turns them off
and so would leave out the WAL flush at each commit and the full-page images after each checkpoint,
costs that grow with the WAL a method writes; replace_range writes more of it than a bare COPY
(row-by-row inserts, deletes, primary-key index pages), so leaving them out would flatter its ratio.

Everything runs in a new database ``mdp_bench``, created here, migrated with the project's
``migrate`` and dropped at the end (the run refuses to start if it exists), so the ``md`` tables of an
existing database are never touched. Each dataset (synthetic daily bars for ``md.bars_1d``, 1-minute
bars for ``md.bars_1m``) is one frame with the stored columns (``STORED_BARS_1D`` / ``STORED_BARS_1M``,
four providers), and every method loads that same frame:

- pipeline loader, first load: ``replace_range`` into the migrated, range-partitioned ``md`` table
  (emptied before), once per provider over the dataset's whole session range, the calls' times
  summed: partitions ensured, COPY into a temp staging table, keep-``ingested_at`` UPDATE, DELETE of
  the range, INSERT with primary-key maintenance, commit; i.e. what the store step pays;
- pipeline loader, re-load: the same rows again over the rows the first load left (a re-run: new
  ``run_id`` and ``ingested_at`` in the frame), so every row matches and keeps its stored
  ``ingested_at`` (checked), the old rows are deleted and the new ones inserted;
- copy_frame: encode with numpy + COPY into a plain (logged, unindexed) table ``bench.<dataset>``;
- baseline: COPY of bytes encoded before the timer starts into the plain table: the server's ingest
  limit for these rows;
- write_row: psycopg's per-row ``Copy.write_row`` loop into the plain table, over tuples made before
  the timer starts (making them with ``df.rows()`` is timed once and shown apart).

Splitting the frame per provider, encoding beforehand and making tuples happen outside the timers.
Each method runs ``--repeat`` times (the methods take turns, the plain table or the md table emptied
before each run except the re-load); the best time counts. The ratios printed are against the
baseline: copy_frame/baseline is the encoder's overhead, replace_range/baseline what the whole
idempotent load costs over a bare COPY of the same rows. The outbox rows the store step writes in the
same transaction (bench/publish.py) are not part of this loader.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import polars as pl
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mdpipeline.contracts.frames import STORED_BARS_1D, STORED_BARS_1M
from mdpipeline.devservices import LocalPostgres
from mdpipeline.storage.binary_copy import (
    copy_frame,
    copy_statement,
    encode_binary_copy,
    pg_type,
)
from mdpipeline.storage.database import connect
from mdpipeline.storage.loader import replace_range
from mdpipeline.storage.migrations import migrate, storage_layout

BENCH_DB = "mdp_bench"
SCHEMA = "bench"
PROVIDERS = ["polygon", "alpaca", "iexcloud", "file"]
INGESTED_AT = dt.datetime(2025, 1, 2, 3, 4, 5, 678_901, tzinfo=dt.UTC)
RERUN_AT = dt.datetime(2025, 1, 9, tzinfo=dt.UTC)  # ingested_at/run_id the re-load's frame carries
RERUN_ID = "run-2025-01-09-rerun-0f3a9c1e-7b2d-4e55"

REPLACE_FIRST = "pipeline loader: replace_range (first load)"
REPLACE_AGAIN = "pipeline loader: replace_range (re-load same range)"
COPY_FRAME = "copy_frame: encode + COPY, plain table"
BASELINE = "baseline: COPY pre-encoded bytes"
WRITE_ROW = "psycopg write_row over tuples"
DATASETS = {"bars_1d": "md.bars_1d", "bars_1m": "md.bars_1m"}

Result = tuple[str, str, int, float]
STUCK_ROWS_PER_S = 2_000  # a loader statement slower than this (per provider frame) is stuck, not slow


# --- data --------------------------------------------------------------------------------------------


def _bar_columns(rng: np.random.Generator, instrument: np.ndarray, day: np.ndarray) -> dict[str, object]:
    """Prices, volumes and lineage columns shared by daily and minute bars (day: session index)."""
    n = len(instrument)
    base = 20.0 + (instrument % 500).astype(np.float64)
    close = np.round(base * np.exp(rng.normal(0.0, 0.02, n)), 4)
    open_ = np.round(close * (1 + rng.normal(0.0, 0.005, n)), 4)
    high = np.maximum(open_, close) * (1 + rng.exponential(0.003, n))
    low = np.minimum(open_, close) * (1 - rng.exponential(0.003, n))
    missing = rng.random(n) < 0.1
    provider = rng.integers(0, len(PROVIDERS), n)
    return {
        "provider": pl.Series(PROVIDERS).gather(provider),
        "open": open_,
        "high": high,
        "low": low,
        "close": close,
        "volume": np.round(rng.lognormal(12, 1.5, n)),
        "vwap": _with_nulls((high + low + close) / 3, missing),
        "trades": _with_nulls(rng.integers(1, 50_000, n, dtype=np.int64), missing),
        "raw_payload_id": day * len(PROVIDERS) + provider + 1,  # one stored payload per provider and session
        "ingested_at": pl.Series(int(INGESTED_AT.timestamp() * 1e6) + rng.integers(0, 3_600_000_000, n)).cast(
            pl.Datetime("us", "UTC")
        ),
        "run_id": pl.Series([f"run-2025-01-02-{i:04d}-0f3a9c1e-7b2d-4e55" for i in range(8)]).gather(
            rng.integers(0, 8, n)
        ),
    }


def _with_nulls(values: np.ndarray, missing: np.ndarray) -> pl.Series:
    """values as a series with nulls where missing is True."""
    return pl.select(pl.when(pl.lit(pl.Series(missing))).then(None).otherwise(pl.lit(pl.Series(values))))[:, 0]


def _symbols(instrument: np.ndarray) -> pl.Series:
    """Ticker-like text per instrument id: SYM00001, SYM00002, ..."""
    return pl.select(pl.format("SYM{}", pl.lit(pl.Series(instrument)).cast(pl.String).str.zfill(5)))[:, 0]


def daily_bars(n: int, seed: int = 1) -> pl.DataFrame:
    """n synthetic daily bars: 2,000 instruments over as many weekdays as needed."""
    rng = np.random.default_rng(seed)
    idx = np.arange(n, dtype=np.int64)
    instrument = idx % 2_000 + 1
    day = idx // 2_000
    days = np.busday_offset("2000-01-03", day, roll="forward")
    cols = {
        "instrument_id": instrument,
        "symbol": _symbols(instrument),
        "session_date": pl.Series(days.astype("datetime64[D]")).cast(pl.Date),
        **_bar_columns(rng, instrument, day),
    }
    return _stored(pl.DataFrame(cols), STORED_BARS_1D)


def minute_bars(n: int, seed: int = 2) -> pl.DataFrame:
    """n synthetic 1-minute bars: 500 instruments x 390 minutes per weekday session."""
    rng = np.random.default_rng(seed)
    idx = np.arange(n, dtype=np.int64)
    instrument = idx % 500 + 1
    minute = (idx // 500) % 390
    day = idx // (500 * 390)
    days = np.busday_offset("2024-01-02", day, roll="forward").astype("datetime64[D]")
    ts = days.astype("datetime64[us]") + np.timedelta64(14 * 60 + 30, "m") + minute * np.timedelta64(1, "m")
    cols = {
        "instrument_id": instrument,
        "symbol": _symbols(instrument),
        "session_date": pl.Series(days).cast(pl.Date),
        "ts": pl.Series(ts).dt.replace_time_zone("UTC"),
        **_bar_columns(rng, instrument, day),
    }
    return _stored(pl.DataFrame(cols), STORED_BARS_1M)


def _stored(df: pl.DataFrame, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """The columns and dtypes the store step hands to replace_range, in that order."""
    return df.select(pl.col(name).cast(dtype) for name, dtype in schema.items()).rechunk()


def per_provider(df: pl.DataFrame) -> list[tuple[str, pl.DataFrame]]:
    """The frame split as the store step gets it: one frame per provider."""
    return [(part["provider"][0], part) for part in df.partition_by("provider", maintain_order=True)]


# --- database ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def server() -> Iterator[str]:
    """A server URL: MDP_DATABASE_URL when set, else a throwaway local cluster removed afterwards."""
    given = os.environ.get("MDP_DATABASE_URL")
    if given:
        yield given
        return
    root = Path(tempfile.mkdtemp(prefix="mdp-bench-pg-"))
    root.chmod(0o755)  # the server runs as the postgres user when we are root
    pg = LocalPostgres(root / "data", log_file=root / "postgres.log", fast=False)
    try:
        yield pg.start()
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def bench_database(server_url: str) -> Iterator[str]:
    """A new, migrated database BENCH_DB on the server, dropped (with force) at the end.

    server_url's own database only serves to create and drop it.
    """
    name = sql.Identifier(BENCH_DB)
    with psycopg.connect(server_url, autocommit=True) as admin:
        try:
            admin.execute(sql.SQL("create database {}").format(name))
        except psycopg.errors.DuplicateDatabase:
            raise SystemExit(f"database {BENCH_DB!r} already exists on the server; drop it first") from None
    try:
        url = make_conninfo(server_url, dbname=BENCH_DB)
        with connect(url) as conn:
            migrate(conn)
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(name))


def create_table(conn: psycopg.Connection, table: str, df: pl.DataFrame) -> None:
    """An ordinary (logged, unindexed) table with the frame's columns."""
    cols = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(pg_type(t))) for c, t in df.schema.items()
    )
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(*table.split(".")), cols))
    conn.commit()


def truncate(conn: psycopg.Connection, table: str) -> None:
    """Empty the table between runs (committed, so every run starts from the same state)."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(*table.split("."))))
    conn.commit()


def count(conn: psycopg.Connection, table: str) -> int:
    """Rows in the table, to check that a method loaded everything."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(*table.split("."))))
        return cur.fetchone()[0]


def check_reload(conn: psycopg.Connection, table: str, expected: int) -> None:
    """After the re-load: every row carries the re-run's run_id but kept its first ingested_at."""
    query = sql.SQL("SELECT count(*) FILTER (WHERE run_id = %s), count(*) FILTER (WHERE ingested_at >= %s) FROM {}")
    with conn.cursor() as cur:
        cur.execute(query.format(sql.Identifier(*table.split("."))), (RERUN_ID, RERUN_AT))
        rerun, relearned = cur.fetchone()
    conn.commit()
    if rerun != expected or relearned:
        raise RuntimeError(f"re-load of {table}: {rerun}/{expected} rows re-stamped, {relearned} lost ingested_at")


# --- methods -----------------------------------------------------------------------------------------


def load_with_replace_range(
    conn: psycopg.Connection, table: str, parts: list[tuple[str, pl.DataFrame]], start: dt.date, end: dt.date
) -> int:
    """The pipeline's loader, one call (one transaction) per provider as the store step makes them."""
    return sum(replace_range(conn, table, part, provider=provider, start=start, end=end) for provider, part in parts)


def statement_limit(parts: list[tuple[str, pl.DataFrame]]) -> float:
    """Seconds one statement of replace_range may take here before the run is stopped.

    Generous (at least a minute, about 20x the slowest rate measured): it only keeps a stuck plan from
    hanging the run. One run hung that way: a re-load's keep-``ingested_at`` UPDATE ran for 15 minutes.
    """
    return max(60.0, max(part.height for _, part in parts) / STUCK_ROWS_PER_S)


def load_with_copy_frame(conn: psycopg.Connection, table: str, df: pl.DataFrame) -> int:
    """The encoder path alone: encode and COPY in one transaction."""
    with conn.cursor() as cur:
        n = copy_frame(cur, table, df)
    conn.commit()
    return n


def copy_pre_encoded(conn: psycopg.Connection, table: str, columns: list[str], payload: memoryview) -> None:
    """COPY bytes that were encoded beforehand: only the server's and libpq's work remains."""
    with conn.cursor() as cur, cur.copy(copy_statement(table, columns)) as cp:
        cp.write(payload)
    conn.commit()


def copy_write_row(
    conn: psycopg.Connection, table: str, columns: list[str], types: list[str], rows: list[tuple]
) -> None:
    """psycopg's per-row binary COPY: one Python call and one tuple dump per row."""
    with conn.cursor() as cur, cur.copy(copy_statement(table, columns)) as cp:
        cp.set_types(types)
        for row in rows:
            cp.write_row(row)
    conn.commit()


def timed(run: Callable[[], object]) -> float:
    """Wall time of one call."""
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def bench_dataset(
    conn: psycopg.Connection, pipeline: psycopg.Connection, name: str, df: pl.DataFrame, repeat: int
) -> list[Result]:
    """Time every method on one dataset; returns (dataset, method, rows, seconds) rows.

    `conn` (transactions committed explicitly) loads the plain table; `pipeline` (autocommit, UTC, as
    the pipeline's connections are) runs replace_range on the md table. The methods take turns within
    each repeat, so drift in the load of the machine hits them alike; the best run of each counts.
    """
    plain, md_table = f"{SCHEMA}.{name}", DATASETS[name]
    create_table(conn, plain, df)
    columns = df.columns
    types = [pg_type(t) for t in df.dtypes]
    encode_s = min(timed(lambda: encode_binary_copy(df)) for _ in range(repeat))
    payload = encode_binary_copy(df)
    t0 = time.perf_counter()
    rows = df.rows()
    rows_s = time.perf_counter() - t0
    start, end = df["session_date"].min(), df["session_date"].max()
    first = per_provider(df)
    rerun = {"ingested_at": pl.lit(RERUN_AT, dtype=pl.Datetime("us", "UTC")), "run_id": pl.lit(RERUN_ID)}
    again = per_provider(df.with_columns(**rerun))
    limit = statement_limit(first)
    pipeline.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(f"{limit:.0f}s")))

    def fresh(table: str) -> Callable[[], None]:
        return lambda: truncate(conn, table)

    def check(table: str) -> Callable[[], None]:
        def run() -> None:
            if (got := count(conn, table)) != df.height:
                raise RuntimeError(f"loaded {got} rows into {table}, expected {df.height}")
            conn.commit()

        return run

    # method -> (prepare, untimed; load, timed; verify, untimed)
    methods = {
        REPLACE_FIRST: (fresh(md_table), lambda: load_with_replace_range(pipeline, md_table, first, start, end),
                        check(md_table)),
        REPLACE_AGAIN: (lambda: None, lambda: load_with_replace_range(pipeline, md_table, again, start, end),
                        lambda: check_reload(conn, md_table, df.height)),
        COPY_FRAME: (fresh(plain), lambda: load_with_copy_frame(conn, plain, df), check(plain)),
        BASELINE: (fresh(plain), lambda: copy_pre_encoded(conn, plain, columns, payload), check(plain)),
        WRITE_ROW: (fresh(plain), lambda: copy_write_row(conn, plain, columns, types, rows), check(plain)),
    }
    best = dict.fromkeys(methods, float("inf"))
    for _ in range(repeat):
        for method, (prepare, load, verify) in methods.items():
            prepare()
            try:
                best[method] = min(best[method], timed(load))
            except psycopg.errors.QueryCanceled as exc:
                raise RuntimeError(f"{name}, {method}: a statement ran over {limit:.0f}s, stopped ({exc})") from exc
            verify()
    truncate(conn, plain)
    truncate(conn, md_table)
    return [
        *((name, method, df.height, secs) for method, secs in best.items()),
        (name, "(info) encode_binary_copy alone", df.height, encode_s),
        (name, "(info) df.rows() to tuples, once", df.height, rows_s),
    ]


def print_report(results: list[Result]) -> None:
    """The timing table, then per dataset the ratios against the baseline (and write_row/copy_frame)."""
    print(f"{'dataset':<9} {'method':<52} {'rows':>11} {'seconds':>9} {'rows/s':>12}")
    for name, method, rows, secs in results:
        print(f"{name:<9} {method:<52} {rows:>11,} {secs:>9.3f} {rows / secs:>12,.0f}")
    print()
    by = {(name, method): secs for name, method, _, secs in results}
    for name in dict.fromkeys(r[0] for r in results):
        baseline, copy = by[(name, BASELINE)], by[(name, COPY_FRAME)]
        print(
            f"{name}: copy_frame/baseline = {copy / baseline:.2f}x, "
            f"replace_range first load/baseline = {by[(name, REPLACE_FIRST)] / baseline:.2f}x, "
            f"replace_range re-load/baseline = {by[(name, REPLACE_AGAIN)] / baseline:.2f}x, "
            f"write_row/copy_frame = {by[(name, WRITE_ROW)] / copy:.1f}x"
        )


def run(url: str, rows_1d: int, rows_1m: int, repeat: int) -> None:
    """Build both datasets, time every method on each in the bench database, print the table."""
    datasets = {"bars_1d": daily_bars(rows_1d), "bars_1m": minute_bars(rows_1m)}
    with psycopg.connect(url) as conn, connect(url) as pipeline:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
        conn.commit()
        server_version, fsync = (conn.execute(f"SHOW {s}").fetchone()[0] for s in ("server_version", "fsync"))
        layout = storage_layout(pipeline)
        conn.commit()
        print(f"PostgreSQL {server_version} (fsync={fsync}, md layout {layout}); best of {repeat}; "
              f"{os.cpu_count()} CPUs\n")
        results = []
        for name, df in datasets.items():
            results += bench_dataset(conn, pipeline, name, df, repeat)
    print_report(results)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows-1d", type=int, default=200_000, help="daily bars (default 200,000)")
    parser.add_argument("--rows-1m", type=int, default=400_000, help="1-minute bars (default 400,000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method; the best counts")
    args = parser.parse_args(argv)
    with server() as server_url, bench_database(server_url) as url:
        run(url, args.rows_1d, args.rows_1m, args.repeat)


if __name__ == "__main__":
    main()
