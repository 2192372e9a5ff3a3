"""Pandera (polars backend) schemas of each dataset's layers, generated from the data contracts.

The columns and dtypes come from `mdpipeline.contracts.frames`; this module adds only the rules: a
per-column constraint table (`COLUMN_RULES`) and the row- and frame-level checks of the base models.
`Standard*` checks what a provider transform produced (before instruments are known, extra columns
allowed); `Normalized*` checks the canonical frame that is stored and published (exactly its columns).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandera.polars as pa
import polars as pl
from pandera.engines.polars_engine import DateTime

from mdpipeline.contracts.frames import (
    BAR_VALUES,
    CANONICAL_BARS_1D,
    CANONICAL_BARS_1M,
    CANONICAL_CORPORATE_ACTIONS,
    STANDARD_BARS_1D,
    STANDARD_BARS_1M,
    STANDARD_CORPORATE_ACTIONS,
)

OHLC_RULE = "low <= min(open, close) <= max(open, close) <= high"
ACTIONS = ["split", "cash_dividend"]

# Constraints per column name, whichever frame holds the column (pandera Field arguments).
COLUMN_RULES: dict[str, dict[str, Any]] = {
    "open": {"gt": 0},
    "high": {"gt": 0},
    "low": {"gt": 0},
    "close": {"gt": 0},
    "volume": {"ge": 0},
    "vwap": {"gt": 0, "nullable": True},
    "trades": {"ge": 0, "nullable": True},
    "instrument_id": {"gt": 0},
    "symbol": {"str_length": {"min_value": 1}},
    "raw_payload_id": {"nullable": True},
    "action": {"isin": ACTIONS},
    "ratio": {"gt": 0, "nullable": True},
    "amount": {"gt": 0, "nullable": True},
    "currency": {"nullable": True},
}
_ANNOTATIONS: dict[type[pl.DataType], Any] = {pl.Int64: int, pl.Float64: float, pl.String: str, pl.Date: dt.date}


def _annotation(dtype: pl.DataType) -> tuple[Any, dict[str, Any]]:
    """The pandera annotation of a polars dtype, and the Field arguments it needs (time unit and zone)."""
    if isinstance(dtype, pl.Datetime):
        return DateTime, {"dtype_kwargs": {"time_unit": dtype.time_unit, "time_zone": dtype.time_zone}}
    return _ANNOTATIONS[type(dtype)], {}


def frame_model(name: str, base: type[pa.DataFrameModel], columns: dict[str, pl.DataType], doc: str, *,
                strict: bool, unique: list[str] | None = None) -> type[pa.DataFrameModel]:
    """A DataFrameModel `name` with the contract's `columns` (bar values first), the rules of `base`."""
    ordered = [c for c in BAR_VALUES if c in columns] + [c for c in columns if c not in BAR_VALUES]
    annotations: dict[str, Any] = {}
    fields: dict[str, Any] = {}
    for column in ordered:
        annotations[column], kwargs = _annotation(columns[column])
        fields[column] = pa.Field(**COLUMN_RULES.get(column, {}), **kwargs)
    config = type("Config", (), {"strict": strict, "coerce": False, **({"unique": unique} if unique else {})})
    namespace = {"__annotations__": annotations, "__doc__": doc, "__module__": __name__, "Config": config, **fields}
    return type(name, (base,), namespace)


class _Bars(pa.DataFrameModel):
    """Rules of every bar frame: finite prices and consistent OHLC."""

    @pa.check("open", "high", "low", "close", "volume", "vwap", name="finite", error="is_finite")
    @classmethod
    def finite(cls, data: pa.PolarsData) -> pl.LazyFrame:
        """Infinity passes `gt=0` and NaN compares false: neither is a price (JSON cannot even carry them)."""
        value = pl.col(data.key)
        return data.lazyframe.select(value.is_finite() | value.is_null())

    @pa.dataframe_check(name="ohlc_consistent", error=OHLC_RULE)
    @classmethod
    def ohlc_consistent(cls, data: pa.PolarsData) -> pl.LazyFrame:
        """Broken OHLC is a hard error: such a bar cannot be trusted at all."""
        return data.lazyframe.select(
            (pl.col("low") <= pl.min_horizontal("open", "close"))
            & (pl.max_horizontal("open", "close") <= pl.col("high"))
        )


class _StandardActions(pa.DataFrameModel):
    """Rules of corporate actions as a provider reports them."""

    @pa.dataframe_check(name="action_values", error="a split needs ratio > 0; a cash dividend needs amount > 0")
    @classmethod
    def action_values(cls, data: pa.PolarsData) -> pl.LazyFrame:
        """The value an action is about must be there."""
        return data.lazyframe.select(
            pl.when(pl.col("action") == "split").then(pl.col("ratio").is_not_null())
            .otherwise(pl.col("amount").is_not_null())
        )


class _CanonicalActions(pa.DataFrameModel):
    """Rules of canonical corporate actions (a split has no amount, a dividend no ratio)."""

    @pa.dataframe_check(name="one_value", error="a split carries only a ratio, a cash dividend only an amount")
    @classmethod
    def one_value(cls, data: pa.PolarsData) -> pl.LazyFrame:
        """The adjustment arithmetic reads exactly one of the two."""
        split = pl.col("action") == "split"
        return data.lazyframe.select(
            pl.when(split).then(pl.col("ratio").is_not_null() & pl.col("amount").is_null())
            .otherwise(pl.col("amount").is_not_null() & pl.col("ratio").is_null()))


StandardBars1d = frame_model("StandardBars1d", _Bars, STANDARD_BARS_1D,
                             "Daily bars as a provider transform returns them.", strict=False)
NormalizedBars1d = frame_model("NormalizedBars1d", _Bars, CANONICAL_BARS_1D,
                               "Canonical daily bars, as stored in `md.bars_1d`.", strict=True,
                               unique=["instrument_id", "provider", "session_date"])
StandardBars1m = frame_model("StandardBars1m", _Bars, STANDARD_BARS_1M,
                             "One-minute bars as a provider transform returns them (ts = bar start, UTC).",
                             strict=False)
NormalizedBars1m = frame_model("NormalizedBars1m", _Bars, CANONICAL_BARS_1M,
                               "Canonical one-minute bars, as stored in `md.bars_1m`.", strict=True,
                               unique=["instrument_id", "provider", "ts"])
StandardCorporateActions = frame_model("StandardCorporateActions", _StandardActions, STANDARD_CORPORATE_ACTIONS,
                                       "Corporate actions as a provider transform returns them.", strict=False)
NormalizedCorporateActions = frame_model(
    "NormalizedCorporateActions", _CanonicalActions, CANONICAL_CORPORATE_ACTIONS,
    "Canonical corporate actions, as in `ref.corporate_actions` (a split has no amount, a dividend no ratio).",
    strict=True, unique=["instrument_id", "ex_date", "action", "provider"])
