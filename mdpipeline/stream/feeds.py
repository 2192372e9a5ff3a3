"""Provider websocket protocols: where to connect, how to authenticate and subscribe, what a frame is.

A feed knows nothing of Kafka: the collector (`mdpipeline.stream.collector`) connects, lets the feed
run its handshake, and asks it whether each received frame carries data (landed raw) or is control.

- Alpaca market data v2 (`wss://stream.data.alpaca.markets/v2/{feed}`): every server message is a JSON
  array of objects with a type `T`. On connect `[{"T":"success","msg":"connected"}]`; the client sends
  `{"action":"auth","key","secret"}` and gets `authenticated` or `[{"T":"error","code","msg"}]`; then
  `{"action":"subscribe","trades":[...],"quotes":[...],"bars":[...]}` answered by `{"T":"subscription"}`.
  Data types: `t` trade, `q` quote, `b`/`u`/`d` bars, `c` trade correction, `x` trade cancel/error,
  `s` status, `l` LULD. Heartbeats are websocket pings (answered by the websockets library).
  Errors `[{"T":"error","code","msg"}]` may come at any time: those a reconnect cannot fix (bad
  credentials, 405 symbol limit exceeded, 408/409 plan) stop the collector with a FeedError; others
  (406 connection limit, 407 slow client, 500) drop the connection so the collector reconnects.
- Finnhub (`wss://ws.finnhub.io?token=...`): the client sends `{"type":"subscribe","symbol":"AAPL"}`
  per symbol; trades arrive as `{"type":"trade","data":[{"s","p","t" (ms),"v","c"}]}`; heartbeats as
  `{"type":"ping"}`; an `{"type":"error","msg":...}` frame (e.g. a refused subscription) stops the
  collector with a FeedError carrying the message.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection

ALPACA_STREAM_URL = "wss://stream.data.alpaca.markets/v2/iex"
FINNHUB_STREAM_URL = "wss://ws.finnhub.io"
ALPACA_DATA_TYPES = frozenset({"t", "q", "b", "u", "d", "c", "x", "s", "l"})
# Alpaca error codes after which reconnecting cannot help (bad credentials, symbol limit, plan, protocol misuse).
ALPACA_FATAL_CODES = frozenset({400, 401, 402, 403, 404, 405, 408, 409, 410, 412})
_ALPACA_HINTS = {
    402: "check ALPACA_API_KEY_ID / ALPACA_API_SECRET_KEY",
    405: "the plan limits how many symbols one connection may subscribe: subscribe fewer (--symbols)",
    409: "the plan does not include this feed: use the iex feed (MDP_ALPACA_STREAM_URL=.../v2/iex)",
}


class FeedError(RuntimeError):
    """The provider refused us in a way a reconnect cannot fix (credentials, subscription)."""


class Feed(Protocol):
    """One provider's websocket protocol."""

    provider: str

    def url(self) -> str:
        """Where to connect (credentials in the URL only when the protocol wants them there)."""
        ...

    async def handshake(self, ws: ClientConnection) -> None:
        """Authenticate and subscribe; raise FeedError when refused for good."""
        ...

    def is_data(self, frame: str) -> bool:
        """True when the frame carries market data (to be landed); False for control and heartbeats."""
        ...

    def secrets(self) -> tuple[str, ...]:
        """Credentials this feed sends: redacted from logs and from the gap reasons it leads to."""
        ...


def _text(frame: str | bytes) -> str:
    return frame.decode() if isinstance(frame, bytes) else frame


@dataclass
class AlpacaFeed:
    """Alpaca market data v2 stream (stocks)."""

    key_id: str
    secret_key: str
    trades: list[str] = field(default_factory=list)
    quotes: list[str] = field(default_factory=list)
    bars: list[str] = field(default_factory=list)
    stream_url: str = ALPACA_STREAM_URL
    provider: str = "alpaca"

    @classmethod
    def from_env(cls, symbols: list[str], *, quotes: bool = False, bars: bool = False,
                 url: str | None = None) -> AlpacaFeed:
        """Credentials from ALPACA_API_KEY_ID / ALPACA_API_SECRET_KEY, URL from MDP_ALPACA_STREAM_URL."""
        return cls(os.environ.get("ALPACA_API_KEY_ID", ""), os.environ.get("ALPACA_API_SECRET_KEY", ""),
                   trades=symbols, quotes=symbols if quotes else [], bars=symbols if bars else [],
                   stream_url=url or os.environ.get("MDP_ALPACA_STREAM_URL", ALPACA_STREAM_URL))

    def url(self) -> str:
        return self.stream_url

    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.key_id, self.secret_key) if s)

    async def handshake(self, ws: ClientConnection) -> None:
        await self._expect(ws, "success", "connected")
        await ws.send(json.dumps({"action": "auth", "key": self.key_id, "secret": self.secret_key}))
        await self._expect(ws, "success", "authenticated")
        await ws.send(json.dumps({"action": "subscribe", "trades": self.trades, "quotes": self.quotes,
                                  "bars": self.bars}))
        await self._expect(ws, "subscription", None)

    async def _expect(self, ws: ClientConnection, kind: str, msg: str | None) -> None:
        """Read control frames until the expected one; data frames cannot come before subscription."""
        while True:
            for m in json.loads(_text(await ws.recv())):
                _raise_alpaca_error(m)
                if m.get("T") == kind and (msg is None or m.get("msg") == msg):
                    return

    def is_data(self, frame: str) -> bool:
        messages = json.loads(_text(frame))
        for m in messages:
            _raise_alpaca_error(m)
        return any(m.get("T") in ALPACA_DATA_TYPES for m in messages)


def _raise_alpaca_error(message: dict) -> None:
    """FeedError for an error a reconnect cannot fix, ConnectionError (reconnect) for others."""
    if message.get("T") != "error":
        return
    code = message.get("code")
    text = f"alpaca error {code}: {message.get('msg')}"
    if code in ALPACA_FATAL_CODES:
        hint = _ALPACA_HINTS.get(code)
        raise FeedError(f"{text} ({hint})" if hint else text)
    raise ConnectionError(text)  # e.g. 406 connection limit, 407 slow client, 500: retry with backoff


@dataclass
class FinnhubFeed:
    """Finnhub real-time trades."""

    token: str
    symbols: list[str]
    stream_url: str = FINNHUB_STREAM_URL
    provider: str = "finnhub"

    @classmethod
    def from_env(cls, symbols: list[str], *, quotes: bool = False, bars: bool = False,
                 url: str | None = None) -> FinnhubFeed:
        """Token from FINNHUB_API_KEY, URL from MDP_FINNHUB_STREAM_URL (trades only: `quotes`/`bars` ignored)."""
        return cls(os.environ.get("FINNHUB_API_KEY", ""), symbols,
                   stream_url=url or os.environ.get("MDP_FINNHUB_STREAM_URL", FINNHUB_STREAM_URL))

    def url(self) -> str:
        return f"{self.stream_url}?{urlencode({'token': self.token})}"

    def secrets(self) -> tuple[str, ...]:
        return (self.token,) if self.token else ()

    async def handshake(self, ws: ClientConnection) -> None:
        for symbol in self.symbols:
            await ws.send(json.dumps({"type": "subscribe", "symbol": symbol}))

    def is_data(self, frame: str) -> bool:
        message = json.loads(_text(frame))
        if message.get("type") == "error":
            raise FeedError(f"finnhub error: {message.get('msg') or _text(frame)}")
        return message.get("type") == "trade"
