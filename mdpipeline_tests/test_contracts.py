"""The data contracts are the one definition of each frame: the schemas, the tables and the frames agree."""

from __future__ import annotations

import psycopg
import pytest

from mdpipeline.chain.datasets import DATASETS, Dataset
from mdpipeline.contracts.events import BARS_1M_ARRAY_FIELDS, BARS_1M_SESSION_FIELDS
from mdpipeline.contracts.frames import CANONICAL_BARS_1M, QUARANTINE_COLUMNS, STANDARD_COLUMNS, TABLE_COLUMNS
from mdpipeline.contracts.sql import sql_type

_INFORMATION_SCHEMA_TYPES = {"timestamp with time zone": "timestamptz"}


@pytest.mark.both_layouts
def test_migrated_tables_have_exactly_the_contract_columns(conn: psycopg.Connection) -> None:
    for table, columns in TABLE_COLUMNS.items():
        schema, name = table.split(".")
        rows = conn.execute("select column_name, data_type from information_schema.columns"
                            " where table_schema = %s and table_name = %s", (schema, name)).fetchall()
        stored = {c: _INFORMATION_SCHEMA_TYPES.get(t, t) for c, t in rows}
        assert stored == {c: sql_type(t) for c, t in columns.items()}, table


@pytest.mark.both_layouts
def test_the_quarantine_loads_every_column_but_its_identity_and_time(conn: psycopg.Connection) -> None:
    rows = conn.execute("select column_name, data_type from information_schema.columns"
                        " where table_schema = 'quality' and table_name = 'quarantine'").fetchall()
    stored = {c: _INFORMATION_SCHEMA_TYPES.get(t, t) for c, t in rows}
    loaded = {c: "jsonb" if c == "row_data" else sql_type(t) for c, t in QUARANTINE_COLUMNS.items()}
    assert stored == {**loaded, "quarantine_id": "bigint", "quarantined_at": "timestamptz"}


@pytest.mark.parametrize("ds", DATASETS.values(), ids=list(DATASETS))
def test_pandera_schemas_check_the_contract_columns_and_dtypes(ds: Dataset) -> None:
    layers = ((ds.standard_schema, STANDARD_COLUMNS[ds.name]), (ds.canonical_schema, ds.canonical_columns))
    for model, columns in layers:
        schema = model.to_schema()
        assert {c: col.dtype.type for c, col in schema.columns.items()} == columns, model.__name__


def test_minute_bar_events_carry_every_canonical_column_but_lineage() -> None:
    assert set(BARS_1M_SESSION_FIELDS) | set(BARS_1M_ARRAY_FIELDS) == set(CANONICAL_BARS_1M) - {"raw_payload_id"}
