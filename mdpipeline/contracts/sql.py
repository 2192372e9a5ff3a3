"""How a contract's dtypes are stored in PostgreSQL."""

from __future__ import annotations

import polars as pl

_SQL_TYPES: dict[type[pl.DataType], str] = {
    pl.Int64: "bigint", pl.String: "text", pl.Date: "date", pl.Float64: "double precision",
}


def sql_type(dtype: pl.DataType) -> str:
    """The PostgreSQL type a polars dtype is stored as."""
    return "timestamptz" if isinstance(dtype, pl.Datetime) else _SQL_TYPES[type(dtype)]


def column_definitions(columns: dict[str, pl.DataType]) -> str:
    """`name type, ...` for a `create table` of `columns` (no constraints: staging tables)."""
    return ", ".join(f"{name} {sql_type(dtype)}" for name, dtype in columns.items())
