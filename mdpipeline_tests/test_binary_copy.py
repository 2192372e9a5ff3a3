"""Binary COPY encoder against a real PostgreSQL: what SELECT returns must equal the frame exactly."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator

import numpy as np
import polars as pl
import psycopg
import pyarrow as pa
import pytest
from polars.testing import assert_frame_equal
from psycopg import sql
from psycopg.conninfo import make_conninfo

from mdpipeline.storage.binary_copy import (
    PG_TYPES,
    _valid,
    _Variable,
    copy_frame,
    encode_binary_copy,
    pg_type,
)

# --- database ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def module_db_url(pg_server_url: str) -> Iterator[str]:
    """A database of its own for this module on the session's server, dropped (with force) at the end.

    The tables here are plain and ad hoc, so it is created empty, not cloned from the migrated template.
    """
    name = f"binary_copy_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(pg_server_url, dbname=name)
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


# --- helpers -----------------------------------------------------------------------------------------


@pytest.fixture
def conn(module_db_url: str) -> Iterator[psycopg.Connection]:
    """A connection in UTC whose work is rolled back at the end of the test."""
    with psycopg.connect(module_db_url, options="-c TimeZone=UTC") as c:
        yield c
        c.rollback()


def _create_table(cur: psycopg.Cursor, table: str, df: pl.DataFrame) -> None:
    cols = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(pg_type(dtype))) for name, dtype in df.schema.items()
    )
    cur.execute(sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(*table.split(".")), cols))


def _expected(df: pl.DataFrame) -> pl.DataFrame:
    """What PostgreSQL gives back: datetimes in microseconds, zoned ones as UTC."""
    exprs = []
    for name, dtype in df.schema.items():
        if isinstance(dtype, pl.Datetime):
            e = pl.col(name).cast(pl.Datetime("us", dtype.time_zone))
            if dtype.time_zone is not None:
                e = e.dt.convert_time_zone("UTC")
            exprs.append(e)
    return df.with_columns(exprs) if exprs else df


def _select(cur: psycopg.Cursor, table: str, schema: pl.Schema) -> pl.DataFrame:
    """The table read back with a plain (text protocol) SELECT in load order."""
    cur.execute(
        sql.SQL("SELECT {} FROM {} ORDER BY ctid").format(
            sql.SQL(", ").join(sql.Identifier(c) for c in schema.names()),
            sql.Identifier(*table.split(".")),
        )
    )
    rows = cur.fetchall()
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in schema]
    return pl.DataFrame(
        [pl.Series(name, list(vals), dtype=dtype) for (name, dtype), vals in zip(schema.items(), columns, strict=True)]
    )


def _round_trip(conn: psycopg.Connection, df: pl.DataFrame, table: str = "t", **kw: int) -> pl.DataFrame:
    """Load df with copy_frame into a fresh table and read it back."""
    expected = _expected(df)
    with conn.cursor() as cur:
        _create_table(cur, table, df)
        assert copy_frame(cur, table, df, **kw) == df.height
        got = _select(cur, table, expected.schema)
    assert_frame_equal(got, expected, check_exact=True)
    return got


def _edge_frame() -> pl.DataFrame:
    """Every supported type, with nulls and edge values."""
    us = dt.timedelta(microseconds=1)
    ts = [
        dt.datetime(2000, 1, 1),
        dt.datetime(1999, 12, 31, 23, 59, 59, 999_999),
        dt.datetime(1970, 1, 1) - us,
        None,
        dt.datetime(1, 1, 1),
        dt.datetime(9999, 12, 31, 23, 59, 59, 999_999),
        dt.datetime(2024, 3, 10, 14, 30, 0, 123_456),
        dt.datetime(1900, 2, 28, 0, 0, 0, 1),
    ]
    return pl.DataFrame(
        {
            "i8": pl.Series([0, -1, 2**63 - 1, None, -(2**63), 1, 42, -42], dtype=pl.Int64),
            "i4": pl.Series([0, -1, 2**31 - 1, -(2**31), None, 7, 8, 9], dtype=pl.Int32),
            "i2": pl.Series([0, -1, 2**15 - 1, -(2**15), 5, None, 6, 7], dtype=pl.Int16),
            "f8": pl.Series(
                [0.0, -0.0, float("nan"), float("inf"), float("-inf"), None, 5e-324, 1.7976931348623157e308],
                dtype=pl.Float64,
            ),
            "f4": pl.Series(
                [0.1, -0.0, float("nan"), float("-inf"), float("inf"), 1.4e-45, None, 3.4028234e38],
                dtype=pl.Float32,
            ),
            "b": pl.Series([True, False, None, True, False, True, None, False], dtype=pl.Boolean),
            "s": pl.Series(
                [
                    "",
                    "plain",
                    None,
                    "Zürich €",
                    "日本語テキスト",
                    "emoji 🙂🚀",
                    "tab\tnew\nline\\",
                    "x" * 1000,
                ],
                dtype=pl.String,
            ),
            "d": pl.Series(
                [
                    dt.date(2000, 1, 1),
                    dt.date(1999, 12, 31),
                    dt.date(1970, 1, 1),
                    dt.date(1, 1, 1),
                    None,
                    dt.date(9999, 12, 31),
                    dt.date(1900, 2, 28),
                    dt.date(2024, 2, 29),
                ],
                dtype=pl.Date,
            ),
            "ts": pl.Series(ts, dtype=pl.Datetime("us")),
            "tstz": pl.Series(ts, dtype=pl.Datetime("us")).dt.replace_time_zone("UTC"),
            "tsns": pl.Series([0, -1, -1_500, 1_500, None, 946_684_800_000_000_789, -(2**63) + 1, 2**63 - 1]).cast(
                pl.Datetime("ns")
            ),
            "tsms_ny": pl.Series(
                [0, -1, None, 1_700_000_000_123, -2_208_988_800_001, 946_684_800_000, 1, 253_402_200_000_000]
            ).cast(pl.Datetime("ms", "America/New_York")),
            "by": pl.Series([b"", b"\x00\xff", None, b"abc", bytes(range(256)), b"\x00", b"z", b""]),
        }
    )


# --- round trips -------------------------------------------------------------------------------------


def test_pg_types_cover_the_supported_dtypes() -> None:
    assert set(PG_TYPES.values()) == {
        "int8", "int4", "int2", "float8", "float4", "bool", "text", "date", "timestamp", "timestamptz",
        "bytea",
    }  # fmt: skip
    assert pg_type(pl.Datetime("ns", "UTC")) == "timestamptz"
    assert pg_type(pl.Datetime("ms")) == "timestamp"
    assert pg_type(pl.UInt64()) is None


def test_every_type_round_trips_with_nulls_and_edge_values(conn: psycopg.Connection) -> None:
    df = _edge_frame()
    assert df["f8"].is_nan().sum() == 1
    _round_trip(conn, df)


def test_encoding_is_byte_identical_to_server_copy_out(conn: psycopg.Connection) -> None:
    """The server's own binary COPY TO output for the loaded rows equals what we sent."""
    df = _edge_frame().drop("tsns", "tsms_ny")
    _round_trip(conn, df)
    out = bytearray()
    query = "COPY (SELECT * FROM t ORDER BY ctid) TO STDOUT (FORMAT BINARY)"
    with conn.cursor() as cur, cur.copy(query) as cp:
        for block in cp:
            out += block
    assert bytes(out) == bytes(encode_binary_copy(df))


def test_zero_rows(conn: psycopg.Connection) -> None:
    _round_trip(conn, _edge_frame().head(0))


def test_one_row(conn: psycopg.Connection) -> None:
    _round_trip(conn, _edge_frame().slice(3, 1))


@pytest.mark.parametrize(("offset", "length"), [(1, 5), (3, 4), (5, 3), (7, 1), (2, 0)])
def test_sliced_frames(conn: psycopg.Connection, offset: int, length: int) -> None:
    df = _edge_frame().slice(offset, length)
    _round_trip(conn, df)


def test_multi_chunk_and_sliced_across_chunks(conn: psycopg.Connection) -> None:
    base = _edge_frame()
    df = pl.concat([base, base.slice(2, 5), base], rechunk=False)
    assert df.n_chunks("all") != [1] * df.width
    _round_trip(conn, df.slice(5, 13))


@pytest.mark.parametrize("chunk_rows", [1, 3, 1_000_000])
def test_chunk_sizes(conn: psycopg.Connection, chunk_rows: int) -> None:
    _round_trip(conn, _edge_frame(), chunk_rows=chunk_rows)


@pytest.mark.parametrize("chunk_rows", [1, 3, 1_000_000])
def test_where_copies_only_the_rows_it_holds_for(conn: psycopg.Connection, chunk_rows: int) -> None:
    df = _edge_frame().with_row_index("n").with_columns(pl.col("n").cast(pl.Int64))
    kept = df.filter(pl.col("n") % 3 != 1)
    expected = _expected(kept)
    with conn.cursor() as cur:
        _create_table(cur, "w", df)
        assert copy_frame(cur, "w", df, chunk_rows=chunk_rows, where=pl.col("n") % 3 != 1) == kept.height
        got = _select(cur, "w", expected.schema)
    assert kept.height < df.height
    assert_frame_equal(got, expected, check_exact=True)


@pytest.mark.parametrize("chunk_rows", [1, 3, 1_000_000])
def test_at_copies_the_rows_at_those_positions(conn: psycopg.Connection, chunk_rows: int) -> None:
    df = _edge_frame().with_row_index("n").with_columns(pl.col("n").cast(pl.Int64))
    at = pl.Series([df.height - 1, 0, 2], dtype=pl.UInt32)
    expected = _expected(df[at])
    with conn.cursor() as cur:
        _create_table(cur, "a", df)
        assert copy_frame(cur, "a", df, chunk_rows=chunk_rows, at=at) == 3
        got = _select(cur, "a", expected.schema)
        assert copy_frame(cur, "a", df, at=pl.Series([], dtype=pl.UInt32)) == 0
        with pytest.raises(ValueError, match="not both"):
            copy_frame(cur, "a", df, where=pl.col("n") > 0, at=at)
    assert_frame_equal(got.sort("n"), expected.sort("n"), check_exact=True)


def test_chunk_rows_must_be_positive(conn: psycopg.Connection) -> None:
    with conn.cursor() as cur, pytest.raises(ValueError, match="chunk_rows"):
        copy_frame(cur, "t", _edge_frame(), chunk_rows=0)


def test_chunked_copy_of_a_large_random_frame(conn: psycopg.Connection) -> None:
    df = _random_frame(200_000, seed=7)
    got = _round_trip(conn, df, chunk_rows=70_000)
    assert got.height == 200_000
    assert got.null_count().row(0) == df.null_count().row(0)


def test_schema_qualified_table_and_quoted_identifiers(conn: psycopg.Connection) -> None:
    df = pl.DataFrame({"Close Price": [1.5, None], "select": ["a", "b"], 'we"ird': [1, 2]})
    with conn.cursor() as cur:
        cur.execute('CREATE SCHEMA "Md"')
    _round_trip(conn, df, table="Md.Bars 1d")


def test_frame_columns_map_by_name(conn: psycopg.Connection) -> None:
    """Table columns the frame lacks take their defaults; order follows the frame."""
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE m (a int8, extra text DEFAULT 'dflt', b text)")
        copy_frame(cur, "m", pl.DataFrame({"b": ["x", "y"], "a": [1, 2]}))
        cur.execute("SELECT a, extra, b FROM m ORDER BY a")
        assert cur.fetchall() == [(1, "dflt", "x"), (2, "dflt", "y")]


# --- unsupported input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "series",
    [
        pl.Series([1, 2], dtype=pl.UInt32),
        pl.Series([1, 2], dtype=pl.Int8),
        pl.Series([dt.time(1, 2)] * 2),
        pl.Series([dt.timedelta(1)] * 2),
        pl.Series([[1], [2]]),
        pl.Series(["a", "b"], dtype=pl.Categorical),
        pl.Series([None, None]),
        pl.Series(["1.5", "2"]).cast(pl.Decimal(10, 2)),
    ],
    ids=lambda s: str(s.dtype),
)
def test_unsupported_dtype_raises_type_error_naming_the_column(conn: psycopg.Connection, series: pl.Series) -> None:
    df = pl.DataFrame({"ok": [1, 2], "bad_col": series})
    with pytest.raises(TypeError, match="bad_col"):
        encode_binary_copy(df)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE u (ok int8, bad_col text)")
        with pytest.raises(TypeError, match="bad_col"):
            copy_frame(cur, "u", df)
        cur.execute("SELECT count(*) FROM u")  # no COPY was started: the connection is still usable
        assert cur.fetchone() == (0,)


def test_frame_without_columns_is_rejected() -> None:
    with pytest.raises(ValueError, match="without columns"):
        encode_binary_copy(pl.DataFrame())


# --- encoder internals -------------------------------------------------------------------------------


def test_null_slots_owning_bytes_are_skipped() -> None:
    """Arrow allows a null slot to span data bytes; those bytes must not be sent."""
    offsets = np.array([0, 2, 5, 6, 9], dtype=np.int64)  # slot 1 ("xyz") is null
    data = b"abxyzcdef"
    validity = np.packbits(np.array([1, 0, 1, 1], dtype=np.uint8), bitorder="little")
    dirty = pa.Array.from_buffers(
        pa.large_string(), 4, [pa.py_buffer(validity), pa.py_buffer(offsets), pa.py_buffer(data)], 1
    )
    clean = pa.array(["ab", None, "c", "def"], type=pa.large_string())

    def encode(arr: pa.Array) -> bytes:
        col = _Variable(arr, _valid(arr))
        buf = np.zeros(int(col.sizes.sum()), dtype=np.uint8)
        col.write(buf, np.cumsum(col.sizes) - col.sizes)
        return buf.tobytes()

    assert encode(dirty) == encode(clean)
    assert encode(dirty.slice(1, 2)) == encode(clean.slice(1, 2))


# --- random data -------------------------------------------------------------------------------------


def _random_frame(n: int, seed: int) -> pl.DataFrame:
    """n rows of every supported type: random bit patterns for floats, the full Python date range,
    unicode and binary strings of random length, about 10% nulls in each column."""
    rng = np.random.default_rng(seed)
    alphabet = list("abcXYZ 019_-äöüßéèçñ€£¥日本語中文한국어🙂🚀𝄞\t\n\\\"'")
    lens = rng.integers(0, 40, size=2_000)
    words = pl.Series(["".join(rng.choice(alphabet, size=k)) for k in lens], dtype=pl.String)
    blobs = pl.Series([rng.bytes(int(k)) for k in lens], dtype=pl.Binary)
    pick = pl.Series(rng.integers(0, len(words), size=n))
    min_us, max_us = -62_135_596_800_000_000, 253_402_300_799_999_999  # years 1 .. 9999
    df = pl.DataFrame(
        {
            "i8": rng.integers(-(2**63), 2**63 - 1, size=n, dtype=np.int64, endpoint=True),
            "i4": rng.integers(-(2**31), 2**31 - 1, size=n, dtype=np.int32, endpoint=True),
            "i2": rng.integers(-(2**15), 2**15 - 1, size=n, dtype=np.int16, endpoint=True),
            "f8": rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64, endpoint=True).view(np.float64),
            "f4": rng.integers(0, 2**32 - 1, size=n, dtype=np.uint32, endpoint=True).view(np.float32),
            "b": rng.random(n) < 0.5,
            "s": words.gather(pick),
            "by": blobs.gather(pick),
            "d": pl.Series(rng.integers(-719_162, 2_932_896, size=n, dtype=np.int32)).cast(pl.Date),
            "ts": pl.Series(rng.integers(min_us, max_us, size=n)).cast(pl.Datetime("us")),
            "tstz": pl.Series(rng.integers(min_us, max_us, size=n)).cast(pl.Datetime("us", "UTC")),
            "tsns": pl.Series(rng.integers(-(2**63) + 1, 2**63 - 1, size=n)).cast(pl.Datetime("ns")),
        }
    )
    df = df.with_columns(pl.when(pl.Series(rng.random(n) < 0.9)).then(pl.col(c)).otherwise(None) for c in df.columns)
    # Text of one byte length and all-empty text, without nulls, take the encoder's uniform path.
    code = pl.format("é{}", (pl.int_range(n) % 100_000).cast(pl.String).str.zfill(6))
    return df.with_columns(code=code, empty=pl.lit("", dtype=pl.String))
