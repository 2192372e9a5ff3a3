"""Pandera (polars backend) schemas of the bar layers.

`StandardBars1d` checks what a provider transform produced (before instruments are known);
`NormalizedBars1d` checks the canonical frame that is stored in `md.bars_1d` and published.
"""

from __future__ import annotations

import datetime as dt

import pandera.polars as pa
import polars as pl
from pandera.engines.polars_engine import DateTime

OHLC_RULE = "low <= min(open, close) <= max(open, close) <= high"


def _ohlc_consistent(data: pa.PolarsData) -> pl.LazyFrame:
    return data.lazyframe.select(
        (pl.col("low") <= pl.min_horizontal("open", "close"))
        & (pl.max_horizontal("open", "close") <= pl.col("high"))
    )


class _Prices(pa.DataFrameModel):
    open: float = pa.Field(gt=0)
    high: float = pa.Field(gt=0)
    low: float = pa.Field(gt=0)
    close: float = pa.Field(gt=0)
    volume: float = pa.Field(ge=0)
    vwap: float = pa.Field(gt=0, nullable=True)
    trades: int = pa.Field(ge=0, nullable=True)

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
        return _ohlc_consistent(data)


class StandardBars1d(_Prices):
    """Daily bars as a provider transform returns them."""

    symbol: str = pa.Field(str_length={"min_value": 1})
    session_date: dt.date
    raw_payload_id: int = pa.Field(nullable=True)

    class Config:
        strict = False
        coerce = False


class NormalizedBars1d(_Prices):
    """Canonical daily bars, as stored in `md.bars_1d`."""

    instrument_id: int = pa.Field(gt=0)
    symbol: str = pa.Field(str_length={"min_value": 1})
    session_date: dt.date
    provider: str
    raw_payload_id: int = pa.Field(nullable=True)

    class Config:
        strict = True
        coerce = False
        unique = ["instrument_id", "provider", "session_date"]


class StandardCorporateActions(pa.DataFrameModel):
    """Corporate actions as a provider transform returns them."""

    symbol: str = pa.Field(str_length={"min_value": 1})
    ex_date: dt.date
    action: str = pa.Field(isin=["split", "cash_dividend"])
    ratio: float = pa.Field(gt=0, nullable=True)
    amount: float = pa.Field(gt=0, nullable=True)
    currency: str = pa.Field(nullable=True)
    raw_payload_id: int = pa.Field(nullable=True)

    @pa.dataframe_check(name="action_values", error="a split needs ratio > 0; a cash dividend needs amount > 0")
    @classmethod
    def action_values(cls, data: pa.PolarsData) -> pl.LazyFrame:
        """The value an action is about must be there."""
        return data.lazyframe.select(
            pl.when(pl.col("action") == "split").then(pl.col("ratio").is_not_null())
            .otherwise(pl.col("amount").is_not_null())
        )

    class Config:
        strict = False
        coerce = False


class NormalizedCorporateActions(pa.DataFrameModel):
    """Canonical corporate actions, as in `ref.corporate_actions` (a split has no amount, a dividend no ratio)."""

    instrument_id: int = pa.Field(gt=0)
    symbol: str = pa.Field(str_length={"min_value": 1})
    ex_date: dt.date
    action: str = pa.Field(isin=["split", "cash_dividend"])
    ratio: float = pa.Field(gt=0, nullable=True)
    amount: float = pa.Field(gt=0, nullable=True)
    currency: str = pa.Field(nullable=True)
    provider: str
    raw_payload_id: int = pa.Field(nullable=True)

    @pa.dataframe_check(name="one_value", error="a split carries only a ratio, a cash dividend only an amount")
    @classmethod
    def one_value(cls, data: pa.PolarsData) -> pl.LazyFrame:
        """The adjustment arithmetic reads exactly one of the two."""
        split = pl.col("action") == "split"
        return data.lazyframe.select(
            pl.when(split).then(pl.col("ratio").is_not_null() & pl.col("amount").is_null())
            .otherwise(pl.col("amount").is_not_null() & pl.col("ratio").is_null()))

    class Config:
        strict = True
        coerce = False
        unique = ["instrument_id", "ex_date", "action", "provider"]


class StandardBars1m(_Prices):
    """One-minute bars as a provider transform returns them (ts = bar start, UTC)."""

    symbol: str = pa.Field(str_length={"min_value": 1})
    ts: DateTime = pa.Field(dtype_kwargs={"time_unit": "us", "time_zone": "UTC"})
    raw_payload_id: int = pa.Field(nullable=True)

    class Config:
        strict = False
        coerce = False


class NormalizedBars1m(_Prices):
    """Canonical one-minute bars, as stored in `md.bars_1m`."""

    instrument_id: int = pa.Field(gt=0)
    symbol: str = pa.Field(str_length={"min_value": 1})
    session_date: dt.date
    ts: DateTime = pa.Field(dtype_kwargs={"time_unit": "us", "time_zone": "UTC"})
    provider: str
    raw_payload_id: int = pa.Field(nullable=True)

    class Config:
        strict = True
        coerce = False
        unique = ["instrument_id", "provider", "ts"]
