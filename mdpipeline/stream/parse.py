"""Raw frames -> one row per trade action, or per streamed bar; columnar (polars JSON decoding, no Python
per message).

Trade actions (`TRADE_ACTIONS`): raw `offset` and `position` (order within the frame), `provider`,
`symbol`, `ts` (UTC, ns), `action` (`new` | `cancel`), `price`, `size`, `exchange`, `conditions`
(codes joined by ","), `sequence` (the provider's trade id), `corrects` (the trade a correction replaces).

Quotes (`mdpipeline.contracts.realtime.PARSED_QUOTES`): Alpaca `q` messages
(`S`, `bx`, `bp`, `bs`, `ax`, `ap`, `as`, `c`, `z`, `t`); Finnhub's stream has none.

Bars (`STREAM_BARS`): `offset`, `position`, `provider`, `kind` (`b` minute bar, `u` updated minute bar,
`d` daily bar), `symbol`, `ts` (bar start, UTC), `open`, `high`, `low`, `close`, `volume`, `trades`, `vwap`.

An Alpaca frame is a JSON array mixing message types whose fields share names with different types
(`c` is a trade's list of conditions but a bar's close), so each message is decoded by the schema of
its own type `T`: the frame is split into its (flat) message objects, and each type is decoded apart.

The parsers are strict about frames and lenient about values: a frame they cannot take apart (a
message that is not a flat object, a field of the wrong JSON type) raises (`MalformedFramesError`
naming the frames when they can tell, polars' own error otherwise), so the caller can set exactly
those frames aside (`mdpipeline.stream.bad_frames`); a timestamp that is malformed or outside
1970..2199 becomes null (polars would silently wrap nanoseconds past 2262), and the row is then
rejected by tick validation with its reason.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import polars as pl

from mdpipeline.contracts.realtime import PARSED_QUOTES
from mdpipeline.providers.registry import SPECS

TRADE_ACTIONS: dict[str, pl.DataType] = {
    "offset": pl.Int64(), "position": pl.Int64(), "provider": pl.String(), "symbol": pl.String(),
    "ts": pl.Datetime("ns", "UTC"), "action": pl.String(), "price": pl.Float64(), "size": pl.Float64(),
    "exchange": pl.String(), "conditions": pl.String(), "sequence": pl.Int64(), "corrects": pl.Int64(),
}
_ALPACA_TRADE = pl.Struct({  # trades `t`, cancels/errors `x`, corrections `c`
    "S": pl.String, "i": pl.Int64, "x": pl.String, "p": pl.Float64, "s": pl.Float64,
    "c": pl.List(pl.String), "t": pl.String, "oi": pl.Int64, "op": pl.Float64, "os": pl.Float64,
    "oc": pl.List(pl.String), "ci": pl.Int64, "cp": pl.Float64, "cs": pl.Float64, "cc": pl.List(pl.String),
})
_ALPACA_BAR = pl.Struct({  # bars `b`, updated bars `u`, daily bars `d`: `c` is the close
    "S": pl.String, "o": pl.Float64, "h": pl.Float64, "l": pl.Float64, "c": pl.Float64, "v": pl.Float64,
    "t": pl.String, "n": pl.Int64, "vw": pl.Float64,
})
_ALPACA_QUOTE = pl.Struct({  # quotes `q`
    "S": pl.String, "bx": pl.String, "bp": pl.Float64, "bs": pl.Float64, "ax": pl.String, "ap": pl.Float64,
    "as": pl.Float64, "c": pl.List(pl.String), "z": pl.String, "t": pl.String,
})
STREAM_BARS: dict[str, pl.DataType] = {
    "offset": pl.Int64(), "position": pl.Int64(), "provider": pl.String(), "kind": pl.String(),
    "symbol": pl.String(), "ts": pl.Datetime("ns", "UTC"), "open": pl.Float64(), "high": pl.Float64(),
    "low": pl.Float64(), "close": pl.Float64(), "volume": pl.Float64(), "trades": pl.Int64(), "vwap": pl.Float64(),
}
BAR_TYPES = ("b", "u", "d")
_TRADE_TYPES = ("t", "x", "c")
_MESSAGE = r"\{[^{}]*\}"  # one Alpaca message: a flat object (its arrays hold strings without braces)
_FINNHUB = pl.Struct({"type": pl.String, "data": pl.List(pl.Struct({
    "s": pl.String, "p": pl.Float64, "t": pl.Int64, "v": pl.Float64, "c": pl.List(pl.String)}))})
# Frames of these providers are Alpaca-shaped (the synthetic feed imitates Alpaca): the registry says which.
ALPACA_SHAPED = frozenset(name for name, spec in SPECS.items() if spec.stream_frames == "alpaca")
FINNHUB_SHAPED = frozenset(name for name, spec in SPECS.items() if spec.stream_frames == "finnhub")
FINNHUB_SEQUENCE_STRIDE = 100_000  # Finnhub has no trade id: sequence = raw offset * stride + position
# Timestamps outside [TS_MIN, TS_MAX) are not data (and past 2262 do not fit nanoseconds): null, then rejected.
TS_MIN = datetime(1970, 1, 1, tzinfo=UTC)
TS_MAX = datetime(2200, 1, 1, tzinfo=UTC)
_MS_MAX = int(TS_MAX.timestamp() * 1000)


class MalformedFramesError(ValueError):
    """Frames (by raw offset) that a parser cannot take apart, and why."""

    def __init__(self, offsets: list[int], reason: str) -> None:
        super().__init__(f"{reason} (offsets {offsets[:10]}{'...' if len(offsets) > 10 else ''})")
        self.offsets = offsets
        self.reason = reason


def _in_range(ts: pl.Expr) -> pl.Expr:
    return pl.when((ts >= TS_MIN) & (ts < TS_MAX)).then(ts).dt.cast_time_unit("ns")


def _rfc3339(col: str) -> pl.Expr:
    # Parsed in microseconds (polars wraps nanoseconds past 2262 without an error), then range-checked.
    return _in_range(pl.col(col).str.to_datetime("%Y-%m-%dT%H:%M:%S%.fZ", time_unit="us", time_zone="UTC",
                                                 strict=False))


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


def split_alpaca(raw: pl.DataFrame) -> pl.DataFrame:
    """Alpaca frames -> one row per message: `offset`, `provider`, `_pos` (2 x its index in the frame: room for a
    correction's two actions), `T` its type, `m` its JSON text (decoded per type by `_decoded`).

    MalformedFramesError for frames that are not arrays of flat message objects with a type `T`: messages are
    found by pattern, so a frame whose array holds anything else (a nested object, a number) would lose
    messages silently; the number of flat messages with a type must be the array's length. polars raises on
    frames that are not JSON arrays of objects at all. Each message's JSON is read once, here.
    """
    frames = raw.select("offset", "provider", pl.col("value").str.extract_all(_MESSAGE).alias("m"),
                        pl.col("value").str.json_decode(pl.List(pl.Struct({"T": pl.String}))).alias("_types"))
    messages = (frames.select("offset", "provider", "m").explode("m").drop_nulls("m")
                .with_columns((pl.int_range(pl.len()).over("offset") * 2).alias("_pos"),
                              pl.col("m").str.json_path_match("$.T").alias("T")))
    flat = messages.group_by("offset").agg(pl.col("T").is_not_null().sum().alias("flat"))
    shape = frames.select("offset", pl.col("_types").list.len().alias("n"),
                          pl.col("_types").list.eval(pl.element().struct.field("T").is_null()).list.any()
                          .alias("untyped")).join(flat, on="offset", how="left")
    bad = shape.filter(pl.col("n").is_null() | (pl.col("n") != pl.col("flat").fill_null(0)) | pl.col("untyped"))
    if bad.height:
        raise MalformedFramesError(bad["offset"].to_list(),
                                   "not a JSON array of flat message objects each with a type T")
    return messages


def _decoded(messages: pl.DataFrame, types: tuple[str, ...], schema: pl.Struct) -> pl.DataFrame:
    """The messages of `types`, each decoded with `schema`."""
    return messages.filter(pl.col("T").is_in(types)).with_columns(pl.col("m").str.json_decode(schema)).unnest("m")


def alpaca_actions(raw: pl.DataFrame) -> pl.DataFrame:
    """Trades (`t`), cancels/errors (`x`) and corrections (`c`: a cancel, then the corrected trade)."""
    return _actions_of(split_alpaca(raw))


def _actions_of(split: pl.DataFrame) -> pl.DataFrame:
    messages = _decoded(split, _TRADE_TYPES, _ALPACA_TRADE)
    pos = pl.col("_pos")
    parts = [
        _actions(messages.filter(pl.col("T") == "t"), pos, "new", "p", "s", "c", "i", None),
        _actions(messages.filter(pl.col("T") == "x"), pos, "cancel", "p", "s", None, "i", None),
        _actions(messages.filter(pl.col("T") == "c"), pos, "cancel", "op", "os", "oc", "oi", None),
        _actions(messages.filter(pl.col("T") == "c"), pos + 1, "new", "cp", "cs", "cc", "ci", "oi"),
    ]
    return pl.concat([p.cast(TRADE_ACTIONS) for p in parts]).sort("offset", "position")  # type: ignore[arg-type]


def alpaca_bars(raw: pl.DataFrame) -> pl.DataFrame:
    """Minute (`b`), updated minute (`u`) and daily (`d`) bars, by the bar schema (`c` is the close)."""
    return _bars_of(split_alpaca(raw))


def _bars_of(split: pl.DataFrame) -> pl.DataFrame:
    bars = _decoded(split, BAR_TYPES, _ALPACA_BAR)
    return bars.select(
        "offset", pl.col("_pos").alias("position"), "provider", pl.col("T").alias("kind"),
        pl.col("S").alias("symbol"), _rfc3339("t").alias("ts"), pl.col("o").alias("open"),
        pl.col("h").alias("high"), pl.col("l").alias("low"), pl.col("c").alias("close"),
        pl.col("v").alias("volume"), pl.col("n").alias("trades"), pl.col("vw").alias("vwap"),
    ).cast(STREAM_BARS).sort("offset", "position")  # type: ignore[arg-type]


def alpaca_quotes(raw: pl.DataFrame) -> pl.DataFrame:
    """Quotes (`q`): bid/ask price, size and exchange, conditions joined by ",", tape."""
    return _quotes_of(split_alpaca(raw))


def _quotes_of(split: pl.DataFrame) -> pl.DataFrame:
    quotes = _decoded(split, ("q",), _ALPACA_QUOTE)
    return quotes.select(
        "offset", pl.col("_pos").alias("position"), "provider", pl.col("S").alias("symbol"),
        _rfc3339("t").alias("ts"), pl.col("bp").alias("bid_price"), pl.col("bs").alias("bid_size"),
        pl.col("bx").alias("bid_exchange"), pl.col("ap").alias("ask_price"), pl.col("as").alias("ask_size"),
        pl.col("ax").alias("ask_exchange"), pl.col("c").list.join(",").alias("conditions"),
        pl.col("z").alias("tape"),
    ).cast(PARSED_QUOTES).sort("offset", "position")  # type: ignore[arg-type]


def finnhub_actions(raw: pl.DataFrame) -> pl.DataFrame:
    """Trades of `{"type":"trade","data":[...]}` frames (pings and other types carry none)."""
    trades = (
        raw.select("offset", "provider", pl.col("value").str.json_decode(_FINNHUB).alias("m")).unnest("m")
        .filter(pl.col("type") == "trade").explode("data").drop_nulls("data").unnest("data")
        .with_columns(pl.int_range(pl.len()).over("offset").alias("position"))
    )
    in_range = (pl.col("t") >= 0) & (pl.col("t") < _MS_MAX)  # checked before conversion: it would overflow
    return trades.select(
        "offset", "position", "provider", pl.col("s").alias("symbol"),
        pl.when(in_range).then(pl.col("t")).pipe(pl.from_epoch, time_unit="ms").dt.replace_time_zone("UTC")
        .dt.cast_time_unit("ns").alias("ts"),
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
        elif provider in FINNHUB_SHAPED:
            parts.append(finnhub_actions(frames))
        else:
            raise ValueError(f"no parser for raw frames of provider {provider!r}")
    return pl.concat(parts).sort("offset", "position")


def _alpaca_only(raw: pl.DataFrame, schema: dict[str, pl.DataType],
                 parse: Callable[[pl.DataFrame], pl.DataFrame]) -> pl.DataFrame:
    """`parse` over the Alpaca-shaped frames of `raw` (Finnhub's trade stream has no such messages), in raw order."""
    parts = [pl.DataFrame(schema=schema)]
    for (provider,), frames in raw.group_by("provider", maintain_order=True):
        if provider in ALPACA_SHAPED:
            parts.append(parse(frames))
        elif provider not in FINNHUB_SHAPED:
            raise ValueError(f"no parser for raw frames of provider {provider!r}")
    return pl.concat(parts).sort("offset", "position")


def stream_quotes(raw: pl.DataFrame) -> pl.DataFrame:
    """Quotes in data frames of any provider, in raw order (Finnhub's stream has none)."""
    return _alpaca_only(raw, PARSED_QUOTES, alpaca_quotes)


def stream_bars(raw: pl.DataFrame) -> pl.DataFrame:
    """Bars in data frames of any provider (columns offset, provider, value), in raw order (Finnhub's
    trade stream has none)."""
    return _alpaca_only(raw, STREAM_BARS, alpaca_bars)


RECORD = "record"  # which parser a row of `stream_records` came from: trade | quote | bar


def stream_records(raw: pl.DataFrame) -> pl.DataFrame:
    """Trade actions, quotes and bars of data frames as ONE frame (column `RECORD` tells them apart), so that a
    frame any parser cannot take apart is set aside whole (`mdpipeline.stream.bad_frames.isolate`). Alpaca
    frames are split into messages once for all three."""
    schema = {RECORD: pl.String(), **TRADE_ACTIONS, **PARSED_QUOTES, **STREAM_BARS}
    parts = [pl.DataFrame(schema=schema)]
    for (provider,), frames in raw.group_by("provider", maintain_order=True):
        if provider in ALPACA_SHAPED:
            split = split_alpaca(frames)
            parts += [_actions_of(split).with_columns(pl.lit("trade").alias(RECORD)),
                      _quotes_of(split).with_columns(pl.lit("quote").alias(RECORD)),
                      _bars_of(split).with_columns(pl.lit("bar").alias(RECORD))]
        elif provider in FINNHUB_SHAPED:
            parts.append(finnhub_actions(frames).with_columns(pl.lit("trade").alias(RECORD)))
        else:
            raise ValueError(f"no parser for raw frames of provider {provider!r}")
    return pl.concat(parts, how="diagonal_relaxed").select(list(schema)).cast(schema).sort(  # type: ignore[arg-type]
        "offset", "position", maintain_order=True)
