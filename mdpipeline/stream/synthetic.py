"""The synthetic real-time feed: deterministic Alpaca-shaped trade frames, offline.

Frames look like Alpaca's (`[{"T":"t","S","i","x","p","s","c","t","z"}, ...]`), with an occasional
correction (`c`) and cancel (`x`), so the whole real-time path runs without network or credentials.

`synthetic_history` is the synthetic provider's "REST history": a pure function of time (one trade per
symbol per second, seeded by the second and the symbol), so any interval can be regenerated exactly,
which is how gap repair backfills synthetic gaps. Its `stream` view is what a live feed would have
printed; its `rest` view is what a historical API answers afterwards (some trades marked `canceled`,
some `corrected` with a new price under the same trade id, as Alpaca's `u` field does).
"""

from __future__ import annotations

import asyncio
import json
import math
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np

from mdpipeline.stream.landing import RawLanding


def _ts(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


def synthetic_frames(
    symbols: list[str], *, start: datetime, frames: int, per_frame: int = 5, seed: int = 7,
    correction_every: int = 50,
) -> Iterator[str]:
    """`frames` JSON frames of `per_frame` trades each; every `correction_every`-th frame ends with a
    correction of its first trade, the frame after it with a cancel of its own first trade."""
    rng = np.random.default_rng(seed)
    prices = {s: float(rng.uniform(50, 500)) for s in symbols}
    trade_id = 1
    at = start
    for n in range(frames):
        messages = []
        for _ in range(per_frame):
            symbol = symbols[int(rng.integers(len(symbols)))]
            prices[symbol] = round(prices[symbol] * float(np.exp(rng.normal(0, 0.0005))), 4)
            at += timedelta(microseconds=int(rng.integers(1, 2000)))
            messages.append({"T": "t", "S": symbol, "i": trade_id, "x": "V", "p": prices[symbol],
                             "s": int(rng.integers(1, 500)), "c": ["@"], "t": _ts(at), "z": "C"})
            trade_id += 1
        first = messages[0]
        if correction_every and n % correction_every == correction_every - 1:
            messages.append({"T": "c", "S": first["S"], "x": first["x"], "oi": first["i"], "op": first["p"],
                             "os": first["s"], "oc": first["c"], "ci": trade_id, "cp": round(first["p"] + 0.01, 4),
                             "cs": first["s"], "cc": first["c"], "z": "C", "t": first["t"]})
            trade_id += 1
        elif correction_every and n % correction_every == 0 and n:
            messages.append({"T": "x", "S": first["S"], "i": first["i"], "x": first["x"], "p": first["p"],
                             "s": first["s"], "a": "C", "z": "C", "t": first["t"]})
        yield json.dumps(messages, separators=(",", ":"))


async def run_synthetic(
    landing: RawLanding, symbols: list[str], *, frames: int, rate: float = 50.0, stop: asyncio.Event | None = None,
) -> int:
    """Land `frames` synthetic frames at about `rate` frames per second; returns the frames landed."""
    landed = 0
    try:
        for frame in synthetic_frames(symbols, start=datetime.now(UTC), frames=frames):
            if stop is not None and stop.is_set():
                break
            landing.land(frame)
            landed += 1
            if rate > 0:
                await asyncio.sleep(1.0 / rate)
    finally:
        landing.flush()
    return landed


HISTORY_STEP_US = 1_000_000  # one trade per symbol per second
HISTORY_CANCEL_EVERY = 97  # seconds k with k % 97 == 0: the trade is later canceled
HISTORY_CORRECT_EVERY = 89  # seconds k with k % 89 == 0: the trade is later corrected (+0.01)


def _epoch_us(at: datetime) -> int:
    delta = at.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def synthetic_history(
    symbols: list[str] | tuple[str, ...], start: datetime, end: datetime, *, seed: int = 7,
    view: Literal["stream", "rest"] = "rest",
) -> list[dict[str, Any]]:
    """Alpaca-shaped trades (`S`, `t`, `i`, `x`, `p`, `s`, `c`, `z`, and `u` in the rest view) with
    timestamps in [start, end], ordered by time then symbol. Trade id = the second since the epoch
    (unique per symbol), so the same interval always gives the same trades."""
    first_us, last_us = _epoch_us(start), _epoch_us(end)
    trades: list[dict[str, Any]] = []
    for k in range(first_us // HISTORY_STEP_US, last_us // HISTORY_STEP_US + 1):
        for symbol in sorted(symbols):
            tag = zlib.crc32(symbol.encode())
            rng = np.random.default_rng([seed, k, tag])
            at_us = k * HISTORY_STEP_US + int(rng.integers(0, HISTORY_STEP_US))
            if not first_us <= at_us <= last_us:
                continue
            level = 50.0 + tag % 450
            price = round(level * (1.0 + 0.01 * math.sin(k / 600.0)) + float(rng.normal(0.0, 0.02)), 2)
            trade: dict[str, Any] = {
                "S": symbol, "t": _ts(datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=at_us)),
                "i": k, "x": "V", "p": price, "s": int(rng.integers(1, 500)), "c": ["@"], "z": "C"}
            if view == "rest" and k % HISTORY_CANCEL_EVERY == 0:
                trade["u"] = "canceled"
            elif view == "rest" and k % HISTORY_CORRECT_EVERY == 0:
                trade["p"], trade["u"] = round(price + 0.01, 2), "corrected"
            trades.append(trade)
    trades.sort(key=lambda t: (t["t"], t["S"]))
    return trades


def history_frames(trades: list[dict[str, Any]], per_frame: int = 20) -> list[str]:
    """Stream frames (`T` = `t`) carrying `trades` in order, `per_frame` per frame."""
    messages = [{"T": "t", **{k: v for k, v in t.items() if k != "u"}} for t in trades]
    return [json.dumps(messages[i:i + per_frame], separators=(",", ":")) for i in range(0, len(messages), per_frame)]
