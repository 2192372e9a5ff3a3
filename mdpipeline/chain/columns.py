"""Column-level lineage of a dataset chain: each layer's columns, their types, descriptions and sources.

For every layer (raw, validated, normalized, the stored table, published) of any dataset: column ->
(type, description, upstream columns as (layer, column)); `ref` is the instrument master. The
Dagster layer turns this into `dagster/column_schema` and `dagster/column_lineage` metadata.
"""

from __future__ import annotations

from mdpipeline.chain.datasets import Dataset
from mdpipeline.contracts.sql import sql_type

Column = tuple[str, str, list[tuple[str, str]]]
DESCRIPTIONS = {
    "symbol": "ticker as the provider sent it",
    "session_date": "exchange session (trading day) the row belongs to",
    "ts": "bar start, UTC",
    "ex_date": "ex-date of the corporate action (a session date)",
    "action": "split or cash_dividend",
    "ratio": "split ratio: new shares per old share",
    "amount": "cash dividend per share",
    "instrument_id": "instrument master id, from the symbology valid on the row's date",
    "provider": "provider that delivered the row",
    "vwap": "volume-weighted average price, when the provider has it",
    "trades": "number of trades, when the provider has it",
    "raw_payload_id": "raw.payloads row the row was parsed from (row-level lineage)",
    "run_id": "Dagster run that stored this version of the row",
    "ingested_at": "when the pipeline learnt this version of the row (point-in-time reads)",
    "learned_at": "when the pipeline first learnt this version of the action (point-in-time reads)",
}
RAW_COLUMNS: dict[str, Column] = {
    "payload_id": ("bigint", "identity of the stored payload", []),
    "provider": ("text", "", []), "dataset": ("text", "", []),
    "session_date": ("date", "first session the payload covers", []),
    "session_end": ("date", "last session the payload covers", []),
    "request_key": ("text", "identifies the request within (provider, dataset, session)", []),
    "endpoint": ("text", "", []), "params": ("jsonb", "request parameters, never secrets", []),
    "status": ("integer", "HTTP-like status", []), "content_type": ("text", "", []),
    "body": ("bytea", "the bytes as sent, zstd-compressed", []),
    "sha256": ("text", "content hash of the bytes as sent", []),
    "symbols": ("text[]", "symbols the request asked for", []),
    "fetched_at": ("timestamptz", "", []),
    "first_run_id": ("text", "run that first stored these bytes", []),
    "last_run_id": ("text", "latest run that fetched the same bytes", []),
}


def layer_columns(ds: Dataset) -> dict[str, dict[str, Column]]:
    """Columns of every layer of `ds`'s chain, keyed by layer (raw, validated, normalized, stored, published)."""
    def standard(column: str) -> list[tuple[str, str]]:
        if column == "raw_payload_id":
            return [("raw", "payload_id")]
        return [("raw", "body"), ("raw", "session_date")] if column == ds.date_column else [("raw", "body")]

    def canonical(column: str) -> list[tuple[str, str]]:
        if column == "instrument_id":
            return [("validated", "symbol"), ("validated", ds.date_column), ("ref", "instrument_id")]
        return [("validated", column)] if column in ds.validated_columns else []

    fields = [c for c in ds.stored_columns if c not in ("run_id", "ingested_at", "learned_at", "raw_payload_id")]
    return {
        "raw": RAW_COLUMNS,
        "validated": {c: (str(t), DESCRIPTIONS.get(c, ""), standard(c)) for c, t in ds.validated_columns.items()},
        "normalized": {c: (str(t), DESCRIPTIONS.get(c, ""), canonical(c)) for c, t in ds.canonical_columns.items()},
        "stored": {c: (sql_type(t), DESCRIPTIONS.get(c, ""), [("normalized", c)] if c in ds.canonical_columns else [])
                   for c, t in ds.stored_columns.items()},
        "published": {
            "key": ("string", "message key: the instrument id", [("stored", "instrument_id")]),
            "event_id": ("string", "sha256 of topic, key and data (same content, same id)",
                         [("stored", c) for c in fields]),
            "value": ("json", f"envelope with schema, version and the {ds.event_unit} as data",
                      [("stored", c) for c in fields]),
        },
    }
