"""The thin Dagster layer: partitions, resources, IO, assets and checks that wire the pure core."""
