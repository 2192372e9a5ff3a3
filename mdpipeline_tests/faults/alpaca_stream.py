"""A loopback Alpaca market-data v2 provider for fault tests: its websocket stream and its trade history.

`AlpacaStream` speaks the documented stream protocol (connected, auth, subscription) with the
`websockets` library in a thread of its own, then per connection either plays a script of frames
(valid and broken ones: `Binary`, `InvalidText`, `Drop`) or runs *live*: every `tick` seconds it sends
the trades `synthetic_history` (stream view) has for the time since its last frame, as the exchange
prints them. Trades printed while no client is connected are not sent, as with the real stream; the
history endpoint (`alpaca_history`, pytest-httpserver) answers any interval from the same function
(rest view, with later cancels and corrections), so gap repair can restore them.
It keeps a log of what it sent, and drops a client that stops answering its pings, as Alpaca drops
slow clients.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pytest_httpserver import HTTPServer
from websockets.asyncio.server import Server, ServerConnection, serve
from werkzeug import Request, Response

from mdpipeline.distribute.topics import TopicSpec, ensure_topics, raw_stream_topic
from mdpipeline.stream.collector import Backoff, collect
from mdpipeline.stream.feeds import AlpacaFeed
from mdpipeline.stream.landing import RawLanding
from mdpipeline.stream.synthetic import history_frames, synthetic_history

KEY_ID, SECRET_KEY = "PKFAULTTESTKEY0001", "faultTestSecret0123456789abcdefghij"


@dataclass(frozen=True)
class Binary:
    """A binary websocket frame."""

    data: bytes


@dataclass(frozen=True)
class InvalidText:
    """A text frame whose bytes are not UTF-8 (a client must fail the connection with 1007)."""

    data: bytes


@dataclass(frozen=True)
class Drop:
    """Abort the TCP connection (no close handshake)."""


Frame = str | Binary | InvalidText | Drop


def _compact(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


@dataclass
class Sent:
    """One frame the server sent (or tried to)."""

    connection: int
    at: datetime
    frame: Frame
    trades: list[dict] = field(default_factory=list)


class AlpacaStream:
    """The stream server (see the module docstring); `url` once started."""

    def __init__(self, *, scripts: list[list[Frame]] | None = None, symbols: tuple[str, ...] = ("AAPL", "MSFT"),
                 live: bool = False, tick: float = 0.2, lag: float = 0.05, seed: int = 7,
                 ping_interval: float | None = 1.0, ping_timeout: float | None = 1.0,
                 silent_handshake: bool = False) -> None:
        self.scripts = scripts or []
        self.symbols = symbols
        self.live = live
        self.tick = tick
        self.lag = timedelta(seconds=lag)
        self.seed = seed
        self.ping_interval, self.ping_timeout = ping_interval, ping_timeout
        self.silent_handshake = silent_handshake
        self.connections = 0
        self.sent: list[Sent] = []
        self.auth: list[dict] = []
        self.done = threading.Event()  # every script was played
        self._loop = asyncio.new_event_loop()
        self._server: Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="alpaca-stream", daemon=True)
        self.url = ""

    def start(self) -> AlpacaStream:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        port = self._server.sockets[0].getsockname()[1]  # type: ignore[index]
        self.url = f"ws://127.0.0.1:{port}/v2/iex"
        return self

    async def _serve(self) -> Server:
        return await serve(self._handler, "127.0.0.1", 0, ping_interval=self.ping_interval,
                           ping_timeout=self.ping_timeout, max_size=2**20)

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def trades_sent(self) -> list[dict]:
        """Every trade sent, in order."""
        return [t for s in self.sent for t in s.trades]

    async def _handler(self, ws: ServerConnection) -> None:
        number = self.connections
        self.connections += 1
        await ws.send(_compact([{"T": "success", "msg": "connected"}]))
        auth = json.loads(await ws.recv())
        self.auth.append(auth)
        if self.silent_handshake:
            await ws.wait_closed()  # never answers the auth message
            return
        if auth != {"action": "auth", "key": KEY_ID, "secret": SECRET_KEY}:
            await ws.send(_compact([{"T": "error", "code": 402, "msg": "auth failed"}]))
            return
        await ws.send(_compact([{"T": "success", "msg": "authenticated"}]))
        sub = json.loads(await ws.recv())
        await ws.send(_compact([{"T": "subscription", "trades": sub["trades"], "quotes": sub.get("quotes", []),
                                  "bars": sub.get("bars", [])}]))
        if number < len(self.scripts):
            for frame in self.scripts[number]:
                if not await self._send(ws, number, frame):
                    return
            if number == len(self.scripts) - 1:
                self.done.set()
        if self.live:
            await self._live(ws, number, tuple(sub["trades"]) or self.symbols)
        else:
            await ws.wait_closed()

    async def _send(self, ws: ServerConnection, number: int, frame: Frame, trades: list[dict] | None = None) -> bool:
        """Send one frame; False when the connection is gone (or was dropped on purpose)."""
        self.sent.append(Sent(number, datetime.now(UTC), frame, trades or []))
        try:
            if isinstance(frame, Drop):
                ws.transport.abort()
                return False
            if isinstance(frame, Binary):
                await ws.send(frame.data)
            elif isinstance(frame, InvalidText):
                await ws.send(frame.data, text=True)
            else:
                await ws.send(frame)
        except Exception:
            self.sent[-1].trades = []  # not sent
            return False
        return True

    async def _live(self, ws: ServerConnection, number: int, symbols: tuple[str, ...]) -> None:
        since = datetime.now(UTC) - self.lag
        while True:
            await asyncio.sleep(self.tick)
            until = datetime.now(UTC) - self.lag
            trades = [t for t in synthetic_history(symbols, since, until, seed=self.seed, view="stream")
                      if t["t"] > _ts(since)]
            since = until
            for frame, chunk in zip(history_frames(trades), _chunks(trades, 20), strict=True):
                if not await self._send(ws, number, frame, chunk):
                    return


def _ts(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


def _chunks(items: list[dict], size: int) -> Iterator[list[dict]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def alpaca_history(httpserver: HTTPServer, *, seed: int = 7, page: int = 50,
                   faults: list[Callable[[Request], Response]] | None = None) -> list[dict[str, str]]:
    """Serve `GET /v2/stocks/trades` from `synthetic_history` (rest view), paginated; the first requests get the
    answers in `faults` instead (one each). Returns the requests (the ones answered with data)."""
    seen: list[dict[str, str]] = []
    pending = list(faults or [])

    def handler(request: Request) -> Response:
        if (request.headers.get("APCA-API-KEY-ID"), request.headers.get("APCA-API-SECRET-KEY")) != (KEY_ID, SECRET_KEY):
            return Response(json.dumps({"message": "forbidden"}), status=403, content_type="application/json")
        if pending:
            return pending.pop(0)(request)
        seen.append(dict(request.args))
        start = datetime.fromisoformat(request.args["start"].replace("Z", "+00:00"))
        end = datetime.fromisoformat(request.args["end"].replace("Z", "+00:00"))
        symbols = request.args["symbols"].split(",")
        trades = synthetic_history(symbols, start, end, seed=seed, view="rest")
        trades.sort(key=lambda t: (t["S"], t["t"]))
        first = int(request.args.get("page_token") or 0)
        chunk = trades[first:first + page]
        by_symbol: dict[str, list[dict]] = {}
        for t in chunk:
            by_symbol.setdefault(t["S"], []).append({k: v for k, v in t.items() if k != "S"})
        token = str(first + page) if first + page < len(trades) else None
        return Response(json.dumps({"trades": by_symbol, "next_page_token": token}), content_type="application/json")

    httpserver.expect_request("/v2/stocks/trades", method="GET").respond_with_handler(handler)
    return seen


def expected_trades(symbols: tuple[str, ...], first: str, last: str, windows: list[tuple[datetime, datetime]],
                    seed: int = 7) -> set[tuple[str, int, float]]:
    """(symbol, trade id, price) of every trade printed in [first, last] (RFC 3339 texts): the history's version
    inside a repair window (cancelled ones gone, corrections applied), the stream's outside."""
    start, end = trade_time(first), trade_time(last) + timedelta(microseconds=1)
    rest = {(t["S"], t["i"]): t for t in synthetic_history(symbols, start, end, seed=seed, view="rest")}
    expected = set()
    for t in synthetic_history(symbols, start, end, seed=seed, view="stream"):
        if not first <= t["t"] <= last:
            continue
        if any(a <= trade_time(t["t"]) <= b for a, b in windows):
            known = rest[(t["S"], t["i"])]
            if known.get("u") != "canceled":
                expected.add((t["S"], t["i"], known["p"]))
        else:
            expected.add((t["S"], t["i"], t["p"]))
    return expected


def trade_time(ts: str) -> datetime:
    """A synthetic trade's RFC 3339 nanosecond text as a datetime (to the microsecond)."""
    return datetime.fromisoformat(ts[:26] + "+00:00")


def collect_scripts(kafka_bootstrap: str, stream: AlpacaStream, expect_connections: int, *,
                    quotes: bool = False, bars: bool = False) -> tuple[TopicSpec, RawLanding]:
    """Start `stream`, run the real collector onto a new raw topic until the server played every script and
    the reconnections settled, stop both; returns the topic and the landing. `quotes`/`bars`: subscribe to
    those channels too."""
    topic = raw_stream_topic(f"alpaca-{uuid.uuid4().hex[:8]}")
    ensure_topics(kafka_bootstrap, (topic,))
    landing = RawLanding(kafka_bootstrap, topic.name, "alpaca")
    symbols = ["AAPL", "MSFT"]

    async def run() -> None:
        stop = asyncio.Event()
        feed = AlpacaFeed(KEY_ID, SECRET_KEY, trades=symbols, quotes=symbols if quotes else [],
                          bars=symbols if bars else [], stream_url=stream.url)
        task = asyncio.ensure_future(collect(feed, landing, stop=stop, backoff=Backoff(0.05, 0.2)))
        deadline = time.monotonic() + 60
        while not (stream.done.is_set() and stream.connections >= expect_connections):
            assert time.monotonic() < deadline, "the server's scripts were not played"
            assert not task.done(), f"the collector stopped: {task.exception() if task.done() else ''}"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.wait_for(task, 30)

    stream.start()
    try:
        asyncio.run(run())
    finally:
        stream.stop()
    return topic, landing
