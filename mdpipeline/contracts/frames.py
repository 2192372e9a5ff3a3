"""Columns and dtypes of every frame a dataset passes through, from provider transform to storage.

- standard: what a provider's transform returns (provider-neutral, before instruments are known);
- canonical: the normalized frame, column for column as stored, without lineage stamps;
- stored: the table's columns (canonical plus the run that stored a row and when it was learnt);
- factors: the adjustment factor table `md.adjustment_factors`;
- quarantine: rejected rows with their check and reason, as loaded into `quality.quarantine`.
"""

from __future__ import annotations

import polars as pl

Columns = dict[str, pl.DataType]

DATASETS = ("bars_1d", "bars_1m", "corporate_actions")
UTC_TIMESTAMP = pl.Datetime("us", "UTC")

PRICE_COLUMNS = ("open", "high", "low", "close", "vwap")  # multiplied by a price factor when adjusting
# The values every bar carries, whatever its interval.
BAR_VALUES: Columns = {
    "open": pl.Float64(),
    "high": pl.Float64(),
    "low": pl.Float64(),
    "close": pl.Float64(),
    "volume": pl.Float64(),
    "vwap": pl.Float64(),
    "trades": pl.Int64(),
}
_PAYLOAD: Columns = {"raw_payload_id": pl.Int64()}  # row-level lineage: the raw.payloads row parsed
_STAMPS: Columns = {"run_id": pl.String(), "ingested_at": UTC_TIMESTAMP}  # who stored a row, and when

STANDARD_BARS_1D: Columns = {"symbol": pl.String(), "session_date": pl.Date(), **BAR_VALUES, **_PAYLOAD}
STANDARD_BARS_1M: Columns = {"symbol": pl.String(), "ts": UTC_TIMESTAMP, **BAR_VALUES, **_PAYLOAD}
STANDARD_CORPORATE_ACTIONS: Columns = {
    "symbol": pl.String(),
    "ex_date": pl.Date(),
    "action": pl.String(),  # split | cash_dividend
    "ratio": pl.Float64(),  # new shares per old share (splits)
    "amount": pl.Float64(),  # cash per share (dividends)
    "currency": pl.String(),
    **_PAYLOAD,
}
STANDARD_COLUMNS: dict[str, Columns] = {
    "bars_1d": STANDARD_BARS_1D,
    "bars_1m": STANDARD_BARS_1M,
    "corporate_actions": STANDARD_CORPORATE_ACTIONS,
}

_INSTRUMENT_SESSION: Columns = {
    "instrument_id": pl.Int64(), "symbol": pl.String(), "session_date": pl.Date(), "provider": pl.String(),
}
CANONICAL_BARS_1D: Columns = {**_INSTRUMENT_SESSION, **BAR_VALUES, **_PAYLOAD}
CANONICAL_BARS_1M: Columns = {**_INSTRUMENT_SESSION, **BAR_VALUES, "ts": UTC_TIMESTAMP, **_PAYLOAD}
CANONICAL_CORPORATE_ACTIONS: Columns = {
    "instrument_id": pl.Int64(),
    **{c: t for c, t in STANDARD_CORPORATE_ACTIONS.items() if c not in _PAYLOAD},
    "provider": pl.String(),
    **_PAYLOAD,
}

STORED_BARS_1D: Columns = {**CANONICAL_BARS_1D, **_STAMPS}  # md.bars_1d
STORED_BARS_1M: Columns = {**CANONICAL_BARS_1M, **_STAMPS}  # md.bars_1m
# md.bars_5m / md.bars_15m / md.bars_1h: minute bars rolled up per bucket (`ts` its start), the latest
# `ingested_at` of its bars, and how many minute bars it holds.
ROLLUP_BARS: Columns = {**_INSTRUMENT_SESSION, "ts": UTC_TIMESTAMP, **BAR_VALUES, "ingested_at": UTC_TIMESTAMP,
                        "bars": pl.Int64()}
# ref.corporate_actions as read back: the canonical action and when the pipeline first learnt it.
STORED_ACTIONS: Columns = {**CANONICAL_CORPORATE_ACTIONS, "learned_at": UTC_TIMESTAMP}

FACTOR_COLUMNS: Columns = {  # md.adjustment_factors
    "instrument_id": pl.Int64(),
    "ex_date": pl.Date(),
    "action": pl.String(),
    "ratio": pl.Float64(),
    "amount": pl.Float64(),
    "prior_close": pl.Float64(),
    "price_factor": pl.Float64(),
    "volume_factor": pl.Float64(),
    "learned_at": UTC_TIMESTAMP,
}

# quality.quarantine as loaded: a rejected row with the check, the reason and the row itself as JSON text.
QUARANTINE_COLUMNS: Columns = {
    "dataset": pl.String(),
    "provider": pl.String(),
    "stage": pl.String(),
    "session_date": pl.Date(),
    "symbol": pl.String(),
    "check_name": pl.String(),
    "reason": pl.String(),
    "row_data": pl.String(),
    "raw_payload_id": pl.Int64(),
    "run_id": pl.String(),
}
# What a step hands downstream about the rows it rejected (stored by the store step, with the chunk's rows).
REJECT_COLUMNS: Columns = {c: t for c, t in QUARANTINE_COLUMNS.items() if c not in ("dataset", "provider", "run_id")}

# Every column of the tables the contracts describe (`ref.corporate_actions` also records the storing run).
TABLE_COLUMNS: dict[str, Columns] = {
    "md.bars_1d": STORED_BARS_1D,
    "md.bars_1m": STORED_BARS_1M,
    "ref.corporate_actions": {**STORED_ACTIONS, "run_id": pl.String()},
    "md.adjustment_factors": FACTOR_COLUMNS,
}


def empty_standard_frame(dataset: str) -> pl.DataFrame:
    """An empty frame with the standard columns of `dataset`."""
    return pl.DataFrame(schema=STANDARD_COLUMNS[dataset])
