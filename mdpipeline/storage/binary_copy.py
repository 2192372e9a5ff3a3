"""Vectorized PostgreSQL binary COPY encoder for polars frames.

psycopg's ``Copy.write_row`` formats one Python tuple at a time. Here a whole frame is encoded into
PostgreSQL's binary COPY format with numpy, one column at a time, with no Python code per row:
per-field sizes (4 + width, 4 for a null, 4 + byte length for text/bytea from the Arrow offsets) give
row sizes, a cumulative sum gives row offsets, and each column is scattered into one preallocated
``uint8`` buffer by fancy indexing. The scatter moves whole values, not bytes: the buffer is viewed
as overlapping, unaligned items of the field's size (see ``_at``), so placing a column costs one
numpy assignment of n items; fixed-width columns without nulls are first assembled into one (n, k)
row block. Text and bytea values are copied as the binary decomposition of their lengths (one
assignment per power of two present), or as one item each when all have the same length.

Binary COPY format (https://www.postgresql.org/docs/current/sql-copy.html#id-1.9.3.55.9.4)::

    header  = b"PGCOPY\\n\\xff\\r\\n\\x00" + int32 flags (0) + int32 extension length (0)
    row     = int16 field count, then per field: int32 length (-1 for NULL) + that many bytes
    trailer = int16 -1

All integers are big-endian. Text is sent as raw UTF-8, so the connection's client encoding must be
UTF8.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import MappingProxyType

import numpy as np
import polars as pl
import psycopg
import pyarrow as pa
from psycopg import sql

__all__ = ["PG_TYPES", "copy_frame", "encode_binary_copy", "pg_type"]

HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"

PG_TYPES: Mapping[pl.DataType, str] = MappingProxyType(
    {
        pl.Int64(): "int8",
        pl.Int32(): "int4",
        pl.Int16(): "int2",
        pl.Float64(): "float8",
        pl.Float32(): "float4",
        pl.Boolean(): "bool",
        pl.String(): "text",
        pl.Date(): "date",
        pl.Datetime("us", None): "timestamp",
        pl.Datetime("us", "UTC"): "timestamptz",
        pl.Binary(): "bytea",
    }
)
"""Supported polars dtypes and the PostgreSQL type each is encoded as.

Datetimes in other time units (ns, ms) are converted to microseconds (floor, like polars' own cast);
a time-zoned datetime is an instant and is sent as ``timestamptz`` whatever its zone.
"""

# Days and microseconds between the Unix epoch and the PostgreSQL epoch (2000-01-01).
_PG_EPOCH_DAYS = 10_957
_PG_EPOCH_US = _PG_EPOCH_DAYS * 86_400 * 1_000_000

# Fixed-width numeric dtypes: (numpy source dtype, big-endian target dtype).
_FIXED: dict[pl.DataType, tuple[str, str]] = {
    pl.Int64(): ("<i8", ">i8"),
    pl.Int32(): ("<i4", ">i4"),
    pl.Int16(): ("<i2", ">i2"),
    pl.Float64(): ("<f8", ">f8"),
    pl.Float32(): ("<f4", ">f4"),
}


def pg_type(dtype: pl.DataType) -> str | None:
    """PostgreSQL type for a polars dtype, or None when the encoder does not support it."""
    if isinstance(dtype, pl.Datetime):
        return "timestamp" if dtype.time_zone is None else "timestamptz"
    return PG_TYPES.get(dtype)


def _check_encodable(df: pl.DataFrame) -> None:
    """Raise TypeError naming the first column whose dtype cannot be encoded (ValueError: no columns)."""
    if df.width == 0:
        raise ValueError("cannot encode a frame without columns")
    for name, dtype in df.schema.items():
        if pg_type(dtype) is None:
            raise TypeError(
                f"column {name!r} has dtype {dtype}, which binary COPY encoding does not support "
                f"(supported: {', '.join(sorted({str(d) for d in PG_TYPES}))})"
            )


def _arrow(s: pl.Series) -> pa.Array:
    """One contiguous Arrow array for a series (chunks combined; may still carry a slice offset)."""
    arr = s.to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type) or pa.types.is_string_view(arr.type):
        arr = arr.cast(pa.large_string())
    elif pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type) or pa.types.is_binary_view(arr.type):
        arr = arr.cast(pa.large_binary())
    return arr


def _bits(buf: pa.Buffer, offset: int, n: int) -> np.ndarray:
    """Unpack an Arrow LSB-first bitmap (validity or boolean values) into a bool array of length n."""
    raw = np.frombuffer(buf, dtype=np.uint8)
    first = offset // 8
    raw = raw[first : (offset + n + 7) // 8 + 1]
    bits = np.unpackbits(raw, bitorder="little")
    start = offset - first * 8
    return bits[start : start + n].view(np.bool_)


def _valid(arr: pa.Array) -> np.ndarray | None:
    """Validity mask of an Arrow array, or None when it has no nulls."""
    if arr.null_count == 0:
        return None
    return _bits(arr.buffers()[0], arr.offset, len(arr))


def _values(arr: pa.Array, dtype: str) -> np.ndarray:
    """Zero-copy numpy view of a fixed-width Arrow array's value buffer (nulls hold arbitrary values)."""
    n = len(arr)
    return np.frombuffer(arr.buffers()[1], dtype=dtype, count=arr.offset + n)[arr.offset :]


def _datetime_us(arr: pa.Array, unit: str) -> np.ndarray:
    """Datetime values as int64 microseconds since the Unix epoch (ns floored, like polars' cast)."""
    v = _values(arr, "<i8")
    if unit == "ns":
        return v // 1_000
    return v * 1_000 if unit == "ms" else v


def _at(buf: np.ndarray, dtype: np.dtype | str) -> np.ndarray:
    """A view of a uint8 buffer whose element i is the dtype value stored at byte i.

    Elements overlap and are unaligned; fancy-indexing it with byte offsets writes (or reads) whole
    values at arbitrary positions, so one numpy call moves one field per row instead of one byte.
    """
    dtype = np.dtype(dtype)
    count = max(len(buf) - dtype.itemsize + 1, 0)
    return np.ndarray(shape=(count,), dtype=dtype, buffer=buf, strides=(1,))


def _void(size: int) -> np.dtype:
    """An opaque item of size bytes, copied as a whole."""
    return np.dtype((np.void, size))


class _Fixed:
    """A fixed-width column: native values, their big-endian wire dtype, and the validity mask."""

    def __init__(self, values: np.ndarray, wire: str, valid: np.ndarray | None) -> None:
        self.values = values
        self.wire = np.dtype(wire)
        self.width = self.wire.itemsize
        self.valid = valid
        self.sizes = 4 + (self.width if valid is None else np.where(valid, self.width, 0))

    def fill(self, block: np.ndarray) -> None:
        """Write length + value of every row into block, an (n, 4 + width) uint8 view (no nulls)."""
        block[:, :4].view(">i4")[:, 0] = self.width
        block[:, 4:].view(self.wire)[:, 0] = self.values

    def write(self, buf: np.ndarray, pos: np.ndarray) -> None:
        """Write the fields of rows starting at byte offsets pos: -1 length for nulls, no value bytes."""
        _at(buf, ">i4")[pos] = np.where(self.valid, self.width, -1)
        _at(buf, self.wire)[pos[self.valid] + 4] = self.values[self.valid]


class _Variable:
    """A text or bytea column: Arrow offsets and data bytes, and the validity mask."""

    def __init__(self, arr: pa.Array, valid: np.ndarray | None) -> None:
        bufs = arr.buffers()
        n = len(arr)
        self.offsets = np.frombuffer(bufs[1], dtype="<i8", count=arr.offset + n + 1)[arr.offset :]
        self.data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] else np.empty(0, np.uint8)
        self.valid = valid
        lengths = np.diff(self.offsets)
        self.lengths = lengths if valid is None else np.where(valid, lengths, 0)
        self.sizes = 4 + self.lengths

    def write(self, buf: np.ndarray, pos: np.ndarray) -> None:
        """Write length (-1 for nulls) and bytes of each row's field starting at byte offset pos."""
        lengths = self.lengths
        _at(buf, ">i4")[pos] = lengths if self.valid is None else np.where(self.valid, lengths, -1)
        if len(lengths) == 0:
            return
        src = self.offsets[:-1]
        shortest, longest = int(lengths.min()), int(lengths.max())
        if shortest == longest:  # one length (codes, tickers, ids): one item copy per row
            if longest:
                item = _void(longest)
                _at(buf, item)[pos + 4] = _at(self.data, item)[src]
            return
        # Copy each value as its binary decomposition: a piece of 2**b bytes for every bit b set in its
        # length, largest first. Per bit, one fancy assignment of fixed-size items moves the pieces of
        # all rows; a row costs popcount(length) item copies, whatever the length distribution.
        present = int(np.bitwise_or.reduce(lengths))
        for bit in range(longest.bit_length() - 1, -1, -1):
            size = 1 << bit
            if not present & size:
                continue
            rows = np.flatnonzero(lengths & size)
            start = lengths[rows] & ~(2 * size - 1)  # bytes taken by the larger pieces before this one
            item = _void(size)
            _at(buf, item)[pos[rows] + 4 + start] = _at(self.data, item)[src[rows] + start]


def _column(s: pl.Series) -> _Fixed | _Variable:
    """Reduce a series to its wire representation (PostgreSQL epoch, big-endian dtypes)."""
    arr = _arrow(s)
    valid = _valid(arr)
    dtype = s.dtype
    if dtype in _FIXED:
        src, wire = _FIXED[dtype]
        return _Fixed(_values(arr, src), wire, valid)
    if dtype == pl.Boolean:
        return _Fixed(_bits(arr.buffers()[1], arr.offset, len(arr)), "u1", valid)
    if dtype == pl.Date:
        return _Fixed(_values(arr, "<i4").astype(np.int64) - _PG_EPOCH_DAYS, ">i4", valid)
    if isinstance(dtype, pl.Datetime):
        return _Fixed(_datetime_us(arr, dtype.time_unit) - _PG_EPOCH_US, ">i8", valid)
    return _Variable(arr, valid)


def _encode(
    df: pl.DataFrame, prefix: bytes = b"", suffix: bytes = b"", scratch: np.ndarray | None = None
) -> np.ndarray:
    """Encode the rows of df between the given prefix and suffix bytes into a uint8 array.

    The result is a view of ``scratch`` when that is large enough, else a new array: reusing one
    buffer across chunks saves the page faults of a fresh allocation, which cost as much as the
    encoding itself.

    Row i starts at a byte offset known from the cumulative row sizes. Consecutive fields of
    constant size (the field count, non-null fixed-width columns) are assembled into one (n, k)
    block and placed with a single fancy assignment; every other field is placed column by column.
    """
    n = df.height
    cols = [_column(s) for s in df.iter_columns()]
    row_sizes = np.full(n, 2, dtype=np.int64)
    for col in cols:
        row_sizes += col.sizes
    ends = np.cumsum(row_sizes) + len(prefix)
    body_end = int(ends[-1]) if n else len(prefix)
    size = body_end + len(suffix)
    out = scratch[:size] if scratch is not None and len(scratch) >= size else np.empty(size, np.uint8)
    out[: len(prefix)] = np.frombuffer(prefix, dtype=np.uint8)
    out[body_end:] = np.frombuffer(suffix, dtype=np.uint8)
    if n == 0:
        return out
    pos = ends - row_sizes  # where the next field of each row goes
    run: list[_Fixed] = []  # pending constant-size fields
    field_count = True  # the int16 field count opens the first run

    def flush() -> None:
        nonlocal pos, field_count
        width = 2 * field_count + sum(4 + f.width for f in run)
        if width == 0:
            return
        block = np.empty((n, width), dtype=np.uint8)
        at = 0
        if field_count:
            block[:, :2].view(">i2")[:, 0] = len(cols)
            at = 2
        for f in run:
            f.fill(block[:, at : at + 4 + f.width])
            at += 4 + f.width
        _at(out, _void(width))[pos] = block.view(_void(width))[:, 0]
        pos = pos + width
        run.clear()
        field_count = False

    for col in cols:
        if isinstance(col, _Fixed) and col.valid is None:
            run.append(col)
            continue
        flush()
        col.write(out, pos)
        pos = pos + col.sizes
    flush()
    return out


def encode_binary_copy(df: pl.DataFrame) -> memoryview:
    """Encode a whole frame as one binary COPY stream (header, rows, trailer).

    Columns are encoded in frame order; name the same columns in that order in ``COPY``. The result
    is a memoryview over one uint8 numpy buffer (no copy): give it to ``Copy.write`` as is, or call
    ``bytes()`` on it.
    """
    _check_encodable(df)
    return memoryview(_encode(df, HEADER, TRAILER))


def _encoded_chunks(df: pl.DataFrame, chunk_rows: int, where: pl.Expr | None = None,
                    at: pl.Series | None = None) -> Iterator[memoryview]:
    """The binary COPY stream of df (its rows where `where` holds, or at the positions `at`, when
    given) in pieces of at most chunk_rows rows (header and trailer included).

    All pieces share one buffer: a piece is valid only until the next one is requested.
    """
    scratch = None
    total = df.height if at is None else at.len()
    for offset in range(0, max(total, 1), chunk_rows):
        prefix = HEADER if offset == 0 else b""
        suffix = TRAILER if offset + chunk_rows >= total else b""
        if at is not None:
            rows = df[at.slice(offset, chunk_rows)]
        else:
            rows = df.slice(offset, chunk_rows)
            rows = rows if where is None else rows.filter(where)
        piece = _encode(rows, prefix, suffix, scratch)
        scratch = piece if piece.base is None else piece.base
        yield memoryview(piece)


def copy_statement(table: str, columns: list[str]) -> sql.Composed:
    """``COPY table (columns) FROM STDIN (FORMAT BINARY)`` with quoted identifiers.

    ``table`` may be schema-qualified ("md.bars_1d"); each dot-separated part is quoted on its own.
    """
    return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(*table.split(".")),
        sql.SQL(", ").join(sql.Identifier(c) for c in columns),
    )


def copy_frame(cursor: psycopg.Cursor, table: str, df: pl.DataFrame, chunk_rows: int = 65_536,
               where: pl.Expr | None = None, at: pl.Series | None = None) -> int:
    """Bulk-load df (its rows where `where` holds, or at the row positions `at`, when given) into
    table with binary COPY; returns the number of rows written.

    Frame columns map by name to table columns, so the table may have more columns (with defaults)
    and a different column order. Runs inside the cursor's current transaction; the caller commits.
    Rows are encoded and sent chunk_rows at a time into one reused buffer: small chunks stay in
    the CPU cache, and the server ingests one chunk while the next one is encoded. `at` suits many
    loads of disjoint parts of one frame: each reads only its rows, where a `where` scans the frame.
    """
    _check_encodable(df)
    if chunk_rows <= 0:
        raise ValueError("chunk_rows must be positive")
    if where is not None and at is not None:
        raise ValueError("copy_frame takes `where` or `at`, not both")
    encoding = cursor.connection.info.encoding
    if encoding not in ("utf-8", "utf8"):
        raise ValueError(f"binary COPY sends text as UTF-8, but the client encoding is {encoding!r}")
    with cursor.copy(copy_statement(table, df.columns)) as copy:
        # Copy.write hands each piece to libpq, which copies it, before the buffer is reused.
        for piece in _encoded_chunks(df, chunk_rows, where, at):
            copy.write(piece)
    if cursor.rowcount >= 0:
        return cursor.rowcount
    if at is not None:
        return at.len()
    return df.height if where is None else int(df.select(where.sum()).item())
