"""Split a frame into rows that pass a schema and rows quarantined with a reason.

Nothing is dropped silently: every row either passes or comes back in `quarantined` with the
check that failed and a human-readable reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandera.polars as pa
import polars as pl
from pandera.errors import SchemaError, SchemaErrors

QUARANTINE_COLUMNS = ("check_name", "reason", "row_data")
PASSTHROUGH_COLUMNS = ("symbol", "session_date", "raw_payload_id")  # kept as columns beside row_data


@dataclass(frozen=True)
class ValidationOutcome:
    """Rows that passed, rows quarantined (with check_name, reason, row_data) and dropped exact copies."""

    valid: pl.DataFrame
    quarantined: pl.DataFrame
    exact_duplicates: int

    @property
    def reasons(self) -> dict[str, int]:
        """How many rows each check quarantined."""
        if not self.quarantined.height:
            return {}
        counts = self.quarantined.group_by("check_name").len().sort("check_name")
        return dict(zip(counts["check_name"], counts["len"], strict=True))


class SchemaMismatchError(ValueError):
    """The frame as a whole does not fit the schema (missing column, wrong type): no row is usable."""


def split_valid(
    frame: pl.DataFrame, schema: type[pa.DataFrameModel], key: list[str]
) -> ValidationOutcome:
    """Validate `frame` row by row against `schema` and de-duplicate on `key`.

    Exact duplicate rows are collapsed (and counted); rows that share a key but differ are a
    conflict and are all quarantined, since no rule can pick the right one.
    """
    indexed = frame.with_row_index("__row")
    # Only rows whose key repeats can be copies or conflicts; compare whole rows among those alone.
    repeated = indexed.select(pl.struct(key).is_duplicated()).to_series()
    if repeated.any():
        deduped = indexed.filter(repeated).unique(subset=list(frame.columns), keep="first", maintain_order=True)
        exact_duplicates = int(repeated.sum()) - deduped.height
        conflict = deduped.select(pl.struct(key).is_duplicated()).to_series()
        conflicts = deduped.filter(conflict)
        candidates = pl.concat([indexed.filter(~repeated), deduped.filter(~conflict)]).sort("__row")
    else:
        exact_duplicates, conflicts, candidates = 0, indexed.clear(), indexed

    failures = _failures(candidates.drop("__row"), schema)
    positioned = candidates.with_row_index("__pos")
    failed_rows = positioned.join(failures, on="__pos", how="inner").drop("__pos") if failures.height else \
        positioned.clear().drop("__pos").with_columns(pl.lit("").alias("check_name"), pl.lit("").alias("reason"))
    passed = positioned.join(failures, on="__pos", how="anti").drop("__pos", "__row") if failures.height else \
        candidates.drop("__row")

    conflict_rows = conflicts.with_columns(
        pl.lit("duplicate_conflict").alias("check_name"),
        pl.format("conflicting duplicate of key ({})", pl.concat_str(key, separator=", ")).alias("reason"),
    )
    quarantined = pl.concat(
        [_with_row_data(failed_rows, frame.columns), _with_row_data(conflict_rows, frame.columns)],
        how="vertical",
    ).sort("__row").drop("__row")
    return ValidationOutcome(valid=passed, quarantined=quarantined, exact_duplicates=exact_duplicates)


def _failures(frame: pl.DataFrame, schema: type[pa.DataFrameModel]) -> pl.DataFrame:
    """One row per failing row position: __pos, check_name, reason."""
    empty = pl.DataFrame(schema={"__pos": pl.UInt32, "check_name": pl.String, "reason": pl.String})
    try:
        schema.validate(frame, lazy=True)
    except SchemaErrors as err:
        cases = err.failure_cases
    except SchemaError as err:  # pragma: no cover - lazy=True reports SchemaErrors
        raise SchemaMismatchError(str(err)) from err
    else:
        return empty
    frame_level = cases.filter(pl.col("index").is_null())
    if frame_level.height:
        detail = "; ".join(
            f"{r['column']}: {r['check']} ({r['failure_case']})" for r in frame_level.iter_rows(named=True)
        )
        raise SchemaMismatchError(f"frame does not match {schema.__name__}: {detail}")
    return (
        cases.with_columns(
            pl.col("index").cast(pl.UInt32).alias("__pos"),
            pl.when(pl.col("schema_context") == "DataFrameSchema")
            .then(pl.col("check"))
            .otherwise(pl.format("{}: {}", pl.col("column"), pl.col("check")))
            .alias("rule"),
            pl.when(pl.col("check").str.contains("not_nullable"))
            .then(pl.lit("missing_value"))
            .when(pl.col("schema_context") == "DataFrameSchema")
            .then(pl.lit("ohlc_consistency"))
            .otherwise(pl.lit("value_range"))
            .alias("kind"),
        )
        .group_by("__pos", maintain_order=True)
        .agg(
            pl.col("kind").unique(maintain_order=True).str.join(",").alias("check_name"),
            pl.col("rule").unique(maintain_order=True).str.join("; ").alias("reason"),
        )
        .select(empty.columns)
        .cast(empty.schema)  # type: ignore[arg-type]
    )


def _with_row_data(rows: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """Keep the quarantined row itself as JSON, so the original values are never lost.

    Bookkeeping columns (named `__...`, e.g. the chain's `__place`) are passed through, not stored as data.
    """
    return rows.select(
        "__row",
        *[c for c in columns if c in PASSTHROUGH_COLUMNS or c.startswith("__")],
        pl.col("check_name"),
        pl.col("reason"),
        pl.struct([c for c in columns if not c.startswith("__")]).struct.json_encode().alias("row_data"),
    )
