"""The real-time feed's frames: trades (ticks) and quotes, parsed from the feed, canonical and stored.

- `CANONICAL_TICKS`: validated trade actions with the instrument id and the exchange session date
  (`md.ticks` without lineage; `action` says trade, cancel or correct).

- `PARSED_QUOTES`: one row per quote message of a raw range (`offset`, `position` in the frame, as parsed).
- `CANONICAL_QUOTES`: validated, with the instrument id and the exchange session date (`md.quotes` without
  lineage; its columns are the `md.quotes.v1` event fields).
- `STORED_QUOTES`: the `md.quotes` columns a load writes (canonical + lineage + the event id).
"""

from __future__ import annotations

import polars as pl

CANONICAL_TICKS: dict[str, pl.DataType] = {
    "instrument_id": pl.Int64(), "symbol": pl.String(), "session_date": pl.Date(),
    "ts": pl.Datetime("ns", "UTC"), "provider": pl.String(), "action": pl.String(), "price": pl.Float64(),
    "size": pl.Float64(), "exchange": pl.String(), "conditions": pl.String(), "sequence": pl.Int64(),
    "corrects": pl.Int64(),
}
_QUOTE_VALUES: dict[str, pl.DataType] = {
    "bid_price": pl.Float64(), "bid_size": pl.Float64(), "bid_exchange": pl.String(),
    "ask_price": pl.Float64(), "ask_size": pl.Float64(), "ask_exchange": pl.String(),
    "conditions": pl.String(), "tape": pl.String(),
}
PARSED_QUOTES: dict[str, pl.DataType] = {
    "offset": pl.Int64(), "position": pl.Int64(), "provider": pl.String(), "symbol": pl.String(),
    "ts": pl.Datetime("ns", "UTC"), **_QUOTE_VALUES,
}
CANONICAL_QUOTES: dict[str, pl.DataType] = {
    "instrument_id": pl.Int64(), "symbol": pl.String(), "session_date": pl.Date(), "ts": pl.Datetime("ns", "UTC"),
    "provider": pl.String(), **_QUOTE_VALUES,
}
STORED_QUOTES: dict[str, pl.DataType] = {
    **CANONICAL_QUOTES, "ts": pl.Datetime("us", "UTC"), "raw_offset": pl.Int64(), "raw_position": pl.Int64(),
    "run_id": pl.String(), "ingested_at": pl.Datetime("us", "UTC"), "event_id": pl.String(),
}
