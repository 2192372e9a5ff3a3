"""Benchmark the vectorized binary COPY loader against the physical limit and psycopg's write_row.

    python bench/load_bars.py [--rows-1d N] [--rows-1m N] [--repeat 3]

Uses MDP_DATABASE_URL when set, otherwise a throwaway PostgreSQL 15 cluster started (and removed)
here. Tables live in a schema ``bench`` that is dropped at the end. For each dataset it measures:

- loader:    ``copy_frame`` (encode with numpy + COPY), i.e. what the pipeline pays;
- baseline:  COPY of bytes encoded before the timer starts: the server's ingest limit;
- write_row: psycopg's per-row ``Copy.write_row`` loop over tuples made before the timer starts
  (making them with ``df.rows()`` is timed once and shown apart).

Each method runs ``--repeat`` times (the methods take turns), truncating in between; the best time
counts.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import polars as pl
import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mdpipeline.storage.binary_copy import (
    copy_frame,
    copy_statement,
    encode_binary_copy,
    pg_type,
)

PG_BIN = "/usr/lib/postgresql/15/bin"
SCHEMA = "bench"
PROVIDERS = ["polygon", "alpaca", "iexcloud", "file"]

LOADER = "loader: encode + copy_frame"
BASELINE = "baseline: COPY pre-encoded bytes"
WRITE_ROW = "psycopg write_row over tuples"

Loader = Callable[[psycopg.Connection, str, pl.DataFrame], int]


# --- data --------------------------------------------------------------------------------------------


def _bar_columns(rng: np.random.Generator, instrument: np.ndarray) -> dict[str, object]:
    """Prices, volumes and lineage columns shared by daily and minute bars."""
    n = len(instrument)
    base = 20.0 + (instrument % 500).astype(np.float64)
    close = np.round(base * np.exp(rng.normal(0.0, 0.02, n)), 4)
    open_ = np.round(close * (1 + rng.normal(0.0, 0.005, n)), 4)
    high = np.maximum(open_, close) * (1 + rng.exponential(0.003, n))
    low = np.minimum(open_, close) * (1 - rng.exponential(0.003, n))
    missing = rng.random(n) < 0.1
    ingested = dt.datetime(2025, 1, 2, 3, 4, 5, 678_901, tzinfo=dt.UTC)
    return {
        "provider": pl.Series(PROVIDERS).gather(rng.integers(0, len(PROVIDERS), n)),
        "open": open_,
        "high": high,
        "low": low,
        "close": close,
        "volume": np.round(rng.lognormal(12, 1.5, n)),
        "vwap": _with_nulls((high + low + close) / 3, missing),
        "trades": _with_nulls(rng.integers(1, 50_000, n, dtype=np.int64), missing),
        "ingested_at": pl.Series(int(ingested.timestamp() * 1e6) + rng.integers(0, 3_600_000_000, n)).cast(
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
    days = np.busday_offset("2000-01-03", idx // 2_000, roll="forward")
    cols = {
        "instrument_id": instrument,
        "symbol": _symbols(instrument),
        "session_date": pl.Series(days.astype("datetime64[D]")).cast(pl.Date),
        **_bar_columns(rng, instrument),
    }
    return _ordered(pl.DataFrame(cols), minute=False)


def minute_bars(n: int, seed: int = 2) -> pl.DataFrame:
    """n synthetic 1-minute bars: 500 instruments x 390 minutes per weekday session."""
    rng = np.random.default_rng(seed)
    idx = np.arange(n, dtype=np.int64)
    instrument = idx % 500 + 1
    minute = (idx // 500) % 390
    days = np.busday_offset("2024-01-02", idx // (500 * 390), roll="forward").astype("datetime64[D]")
    ts = days.astype("datetime64[us]") + np.timedelta64(14 * 60 + 30, "m") + minute * np.timedelta64(1, "m")
    cols = {
        "instrument_id": instrument,
        "symbol": _symbols(instrument),
        "session_date": pl.Series(days).cast(pl.Date),
        "ts": pl.Series(ts).dt.replace_time_zone("UTC"),
        **_bar_columns(rng, instrument),
    }
    return _ordered(pl.DataFrame(cols), minute=True)


def _ordered(df: pl.DataFrame, minute: bool) -> pl.DataFrame:
    """Columns in table order, with the dtypes of md.bars_1d / md.bars_1m."""
    names = ["instrument_id", "symbol", "session_date", *(["ts"] if minute else [])]
    names += ["provider", "open", "high", "low", "close", "volume", "vwap", "trades", "ingested_at", "run_id"]
    return df.select(names).rechunk()


# --- database ----------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[str]:
    """Start a temporary PostgreSQL 15 cluster (as the postgres user) and remove it afterwards."""
    d = tempfile.mkdtemp(prefix="mdp-bench-pg-")
    shutil.chown(d, user="postgres", group="postgres")
    data = os.path.join(d, "data")
    port = _free_port()
    as_pg = ["runuser", "-u", "postgres", "--"]
    initdb = [f"{PG_BIN}/initdb", "-D", data, "--auth=trust", "-U", "postgres", "--encoding=UTF8"]
    subprocess.run([*as_pg, *initdb, "--locale=C"], check=True, capture_output=True)
    opts = f"-p {port} -k {d} -c listen_addresses=127.0.0.1 -c fsync=off"
    log = os.path.join(d, "log")
    subprocess.run(
        [*as_pg, f"{PG_BIN}/pg_ctl", "-D", data, "-o", opts, "-l", log, "-w", "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_pg, f"{PG_BIN}/pg_ctl", "-D", data, "-m", "fast", "-w", "stop"], check=False, capture_output=True
        )
        shutil.rmtree(d, ignore_errors=True)


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


# --- methods -----------------------------------------------------------------------------------------


def load_with_copy_frame(conn: psycopg.Connection, table: str, df: pl.DataFrame) -> int:
    """The loader path: encode and COPY in one transaction."""
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
    conn: psycopg.Connection, name: str, df: pl.DataFrame, repeat: int, loader: Loader
) -> list[tuple[str, str, int, float]]:
    """Time every method on one dataset; returns (dataset, method, rows, seconds) rows.

    The methods take turns within each repeat (truncating before each run), so drift in the load of
    the machine hits them alike; the best run of each counts.
    """
    table = f"{SCHEMA}.{name}"
    create_table(conn, table, df)
    columns = df.columns
    types = [pg_type(t) for t in df.dtypes]
    encode_s = min(timed(lambda: encode_binary_copy(df)) for _ in range(repeat))
    payload = encode_binary_copy(df)
    t0 = time.perf_counter()
    rows = df.rows()
    rows_s = time.perf_counter() - t0
    methods = {
        LOADER: lambda: loader(conn, table, df),
        BASELINE: lambda: copy_pre_encoded(conn, table, columns, payload),
        WRITE_ROW: lambda: copy_write_row(conn, table, columns, types, rows),
    }
    best = dict.fromkeys(methods, float("inf"))
    for _ in range(repeat):
        for method, run_method in methods.items():
            truncate(conn, table)
            best[method] = min(best[method], timed(run_method))
            if (got := count(conn, table)) != df.height:
                raise RuntimeError(f"{method} loaded {got} rows into {table}, expected {df.height}")
    truncate(conn, table)
    return [
        *((name, method, df.height, secs) for method, secs in best.items()),
        (name, "(info) encode_binary_copy alone", df.height, encode_s),
        (name, "(info) df.rows() to tuples, once", df.height, rows_s),
    ]


def print_report(results: list[tuple[str, str, int, float]]) -> None:
    """The timing table, then loader/baseline and write_row/loader ratios per dataset."""
    print(f"{'dataset':<9} {'method':<36} {'rows':>11} {'seconds':>9} {'rows/s':>12}")
    for name, method, rows, secs in results:
        print(f"{name:<9} {method:<36} {rows:>11,} {secs:>9.3f} {rows / secs:>12,.0f}")
    print()
    by = {(name, method): secs for name, method, _, secs in results}
    for name in dict.fromkeys(r[0] for r in results):
        loader, baseline, write_row = by[(name, LOADER)], by[(name, BASELINE)], by[(name, WRITE_ROW)]
        print(f"{name}: loader/baseline = {loader / baseline:.2f}x, write_row/loader = {write_row / loader:.1f}x")


def run(url: str, rows_1d: int, rows_1m: int, repeat: int, loader: Loader = load_with_copy_frame) -> None:
    """Build both datasets, time every method on each in a fresh schema, print the table."""
    datasets = {"bars_1d": daily_bars(rows_1d), "bars_1m": minute_bars(rows_1m)}
    with psycopg.connect(url) as conn:
        try:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
        except psycopg.errors.DuplicateSchema:
            raise SystemExit(f"schema {SCHEMA!r} already exists in the target database; drop it first") from None
        conn.commit()
        try:
            server = conn.execute("SHOW server_version").fetchone()[0]
            print(f"PostgreSQL {server}; best of {repeat}; {os.cpu_count()} CPUs\n")
            results = []
            for name, df in datasets.items():
                results += bench_dataset(conn, name, df, repeat, loader)
        finally:
            conn.rollback()
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(SCHEMA)))
            conn.commit()
    print_report(results)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows-1d", type=int, default=1_000_000, help="daily bars (default 1,000,000)")
    parser.add_argument("--rows-1m", type=int, default=2_000_000, help="1-minute bars (default 2,000,000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method; the best counts")
    args = parser.parse_args(argv)
    url = os.environ.get("MDP_DATABASE_URL")
    if not url and not os.path.exists(f"{PG_BIN}/pg_ctl"):
        raise SystemExit(f"set MDP_DATABASE_URL, or install PostgreSQL 15 server binaries ({PG_BIN})")
    with contextlib.nullcontext(url) if url else throwaway_cluster() as db_url:
        run(db_url, args.rows_1d, args.rows_1m, args.repeat)


if __name__ == "__main__":
    main()
