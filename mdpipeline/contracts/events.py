"""The fields each topic's messages carry as data, in message order (the order is part of the event id).

Lineage (raw payload, run, ingest time) travels in headers, never in the data.
"""

from __future__ import annotations

from mdpipeline.contracts.frames import BAR_VALUES, CANONICAL_BARS_1D
from mdpipeline.contracts.realtime import CANONICAL_QUOTES

_LINEAGE = ("raw_payload_id", "run_id", "ingested_at")

BARS_1D_EVENT_FIELDS: tuple[str, ...] = tuple(c for c in CANONICAL_BARS_1D if c not in _LINEAGE)
# md.bars.1m.v1 carries one instrument's session per message: these fields as arrays, in time order.
BARS_1M_SESSION_FIELDS: tuple[str, ...] = ("instrument_id", "symbol", "session_date", "provider")
BARS_1M_ARRAY_FIELDS: tuple[str, ...] = ("ts", *BAR_VALUES)
CORPORATE_ACTIONS_EVENT_FIELDS: tuple[str, ...] = (
    "instrument_id", "symbol", "ex_date", "provider", "action", "ratio", "amount", "currency",
)
TICKS_EVENT_FIELDS: tuple[str, ...] = (
    "instrument_id", "symbol", "session_date", "ts", "provider", "action", "price", "size",
    "exchange", "conditions", "sequence", "corrects",
)
# Cancels and corrections also name the event that announced the trade they cancel or replace; the field is
# left out of the JSON when null, so a plain trade's data (and event_id) is what it always was.
TICKS_OPTIONAL_FIELDS: tuple[str, ...] = ("original_event_id",)
QUOTES_EVENT_FIELDS: tuple[str, ...] = tuple(CANONICAL_QUOTES)
