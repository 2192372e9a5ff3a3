"""The synthetic real-time feed: deterministic Alpaca-shaped trade frames, offline.

Frames look like Alpaca's (`[{"T":"t","S","i","x","p","s","c","t","z"}, ...]`), with an occasional
correction (`c`) and cancel (`x`), so the whole real-time path runs without network or credentials.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

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
