"""Parquet storage of intermediate frames (validated, normalized), one file per partition.

A multi-partition run writes each session's rows to that session's file and reads back any range,
so single-run backfills and single-partition runs share the same files.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl


class PartitionedParquetIOManager(dg.ConfigurableIOManager):
    """Stores polars frames partitioned by a date column (`session_date`, or the asset's
    `partition_column` definition metadata, e.g. `ex_date` for corporate actions)."""

    base_dir: str

    def _path(self, asset_key: dg.AssetKey, partition_key: str) -> Path:
        return Path(self.base_dir, *asset_key.path, f"{partition_key}.parquet")

    def handle_output(self, context: dg.OutputContext, obj: pl.DataFrame) -> None:
        """Write one Parquet file per partition of the run (empty partitions get an empty file)."""
        keys = context.asset_partition_keys if context.has_asset_partitions else ["all"]
        column = (context.definition_metadata or {}).get("partition_column", "session_date")
        by_day = obj.with_columns(pl.col(column).dt.to_string("%Y-%m-%d").alias("__key"))
        for key in keys:
            path = self._path(context.asset_key, key)
            path.parent.mkdir(parents=True, exist_ok=True)
            part = by_day.filter(pl.col("__key") == key) if key != "all" else by_day
            tmp = path.with_suffix(".tmp")
            part.drop("__key").write_parquet(tmp)
            tmp.replace(path)
        context.add_output_metadata({"rows": obj.height, "partitions_written": len(keys)})

    def load_input(self, context: dg.InputContext) -> pl.DataFrame:
        """Concatenate the files of the partitions the downstream run asks for."""
        keys = context.asset_partition_keys if context.has_asset_partitions else ["all"]
        paths = [self._path(context.asset_key, k) for k in keys]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise FileNotFoundError(
                f"{context.asset_key.to_user_string()}: partitions not materialized yet: {missing[:5]}"
            )
        return pl.concat([pl.read_parquet(p) for p in paths], how="vertical")
