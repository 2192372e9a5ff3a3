"""mdpipeline: a market-data pipeline (ingest, validate, normalize, enrich, store, distribute)."""

__version__ = "0.1.0"
