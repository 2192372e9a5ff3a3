"""Raw frames -> one row per trade action, columnar (polars JSON decoding, no Python per message).

Output columns (`TRADE_ACTIONS`): raw `offset` and `position` (order within the frame), `provider`,
`symbol`, `ts` (UTC, ns), `action` (`new` | `cancel`), `price`, `size`, `exchange`, `conditions`
(codes joined by ","), `sequence` (the provider's trade id), `corrects` (the trade a correction replaces).
"""

from __future__ import annotations

import polars as pl

TRADE_ACTIONS: dict[str, pl.DataType] = {
    "offset": pl.Int64(), "position": pl.Int64(), "provider": pl.String(), "symbol": pl.String(),
    "ts": pl.Datetime("ns", "UTC"), "action": pl.String(), "price": pl.Float64(), "size": pl.Float64(),
    "exchange": pl.String(), "conditions": pl.String(), "sequence": pl.Int64(), "corrects": pl.Int64(),
}
_ALPACA = pl.List(pl.Struct({
    "T": pl.String, "S": pl.String, "i": pl.Int64, "x": pl.String, "p": pl.Float64, "s": pl.Float64,
    "c": pl.List(pl.String), "t": pl.String, "oi": pl.Int64, "op": pl.Float64, "os": pl.Float64,
    "oc": pl.List(pl.String), "ci": pl.Int64, "cp": pl.Float64, "cs": pl.Float64, "cc": pl.List(pl.String),
}))
_FINNHUB = pl.Struct({"type": pl.String, "data": pl.List(pl.Struct({
    "s": pl.String, "p": pl.Float64, "t": pl.Int64, "v": pl.Float64, "c": pl.List(pl.String)}))})
# Frames of these providers are Alpaca-shaped (the synthetic feed imitates Alpaca).
ALPACA_SHAPED = frozenset({"alpaca", "synthetic"})
FINNHUB_SEQUENCE_STRIDE = 100_000  # Finnhub has no trade id: sequence = raw offset * stride + position


def _rfc3339(col: str) -> pl.Expr:
    return pl.col(col).str.to_datetime("%Y-%m-%dT%H:%M:%S%.fZ", time_unit="ns", time_zone="UTC", strict=False)


def _actions(frame: pl.DataFrame, position: pl.Expr, action: str, price: str, size: str, conditions: str | None,
             sequence: str, corrects: str | None) -> pl.DataFrame:
    return frame.select(
        "offset", position.alias("position"), "provider", pl.col("S").alias("symbol"), _rfc3339("t").alias("ts"),
        pl.lit(action).alias("action"), pl.col(price).alias("price"), pl.col(size).alias("size"),
        pl.col("x").alias("exchange"),
        (pl.col(conditions).list.join(",") if conditions else pl.lit(None, pl.String)).alias("conditions"),
        pl.col(sequence).alias("sequence"),
        (pl.col(corrects) if corrects else pl.lit(None, pl.Int64)).alias("corrects"),
    )


def alpaca_actions(raw: pl.DataFrame) -> pl.DataFrame:
    """Trades (`t`), cancels/errors (`x`) and corrections (`c`: a cancel, then the corrected trade)."""
    messages = (
        raw.select("offset", "provider", pl.col("value").str.json_decode(_ALPACA).alias("m"))
        .explode("m").drop_nulls("m").unnest("m")
        .with_columns((pl.int_range(pl.len()).over("offset") * 2).alias("_pos"))
    )
    pos = pl.col("_pos")
    parts = [
        _actions(messages.filter(pl.col("T") == "t"), pos, "new", "p", "s", "c", "i", None),
        _actions(messages.filter(pl.col("T") == "x"), pos, "cancel", "p", "s", None, "i", None),
        _actions(messages.filter(pl.col("T") == "c"), pos, "cancel", "op", "os", "oc", "oi", None),
        _actions(messages.filter(pl.col("T") == "c"), pos + 1, "new", "cp", "cs", "cc", "ci", "oi"),
    ]
    return pl.concat([p.cast(TRADE_ACTIONS) for p in parts]).sort("offset", "position")  # type: ignore[arg-type]


def finnhub_actions(raw: pl.DataFrame) -> pl.DataFrame:
    """Trades of `{"type":"trade","data":[...]}` frames (pings and other types carry none)."""
    trades = (
        raw.select("offset", "provider", pl.col("value").str.json_decode(_FINNHUB).alias("m")).unnest("m")
        .filter(pl.col("type") == "trade").explode("data").drop_nulls("data").unnest("data")
        .with_columns(pl.int_range(pl.len()).over("offset").alias("position"))
    )
    return trades.select(
        "offset", "position", "provider", pl.col("s").alias("symbol"),
        pl.from_epoch("t", time_unit="ms").dt.replace_time_zone("UTC").dt.cast_time_unit("ns").alias("ts"),
        pl.lit("new").alias("action"), pl.col("p").alias("price"), pl.col("v").alias("size"),
        pl.lit(None, pl.String).alias("exchange"), pl.col("c").list.join(",").alias("conditions"),
        (pl.col("offset") * FINNHUB_SEQUENCE_STRIDE + pl.col("position")).alias("sequence"),
        pl.lit(None, pl.Int64).alias("corrects"),
    ).cast(TRADE_ACTIONS)  # type: ignore[arg-type]


def trade_actions(raw: pl.DataFrame) -> pl.DataFrame:
    """Data frames of any provider (columns offset, provider, value) -> trade actions in raw order."""
    parts = [pl.DataFrame(schema=TRADE_ACTIONS)]
    for (provider,), frames in raw.group_by("provider", maintain_order=True):
        if provider in ALPACA_SHAPED:
            parts.append(alpaca_actions(frames))
        elif provider == "finnhub":
            parts.append(finnhub_actions(frames))
        else:
            raise ValueError(f"no parser for raw frames of provider {provider!r}")
    return pl.concat(parts).sort("offset", "position")
