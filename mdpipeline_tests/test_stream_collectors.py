"""Websocket collectors against local websocket servers speaking the providers' documented messages.

The servers run on loopback with the `websockets` library, send control and data frames as Alpaca
and Finnhub document them, and drop the first connection half-way, so reconnection, backoff and the
gap marker are exercised for real. Frames land on a real broker.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import polars as pl
import pytest
from websockets.asyncio.server import ServerConnection, serve

from mdpipeline.distribute.subscriber import end_offsets
from mdpipeline.distribute.topics import ensure_topics, raw_stream_topic
from mdpipeline.stream.collector import Backoff, collect
from mdpipeline.stream.feeds import AlpacaFeed, FeedError, FinnhubFeed
from mdpipeline.stream.landing import RawLanding
from mdpipeline.stream.offsets import read_messages
from mdpipeline.stream.parse import stream_bars, trade_actions
from mdpipeline.stream.synthetic import run_synthetic

FAST = Backoff(base=0.05, cap=0.2)


def _compact(messages: list[dict] | dict) -> str:
    return json.dumps(messages, separators=(",", ":"))


ALPACA_DATA = [
    _compact([{"T": "t", "S": "AAPL", "i": 96921, "x": "D", "p": 126.55, "s": 1, "t": "2024-06-10T15:51:44.208Z",
               "c": ["@", "I"], "z": "C"},
              {"T": "q", "S": "AAPL", "bx": "U", "bp": 126.5, "bs": 1, "ax": "Q", "ap": 126.6, "as": 4,
               "t": "2024-06-10T15:51:45.335689322Z", "c": ["R"], "z": "C"}]),
    _compact([{"T": "b", "S": "AAPL", "o": 126.5, "h": 126.7, "l": 126.4, "c": 126.6, "v": 1200,
               "t": "2024-06-10T15:51:00Z", "n": 12, "vw": 126.55}]),
    _compact([{"T": "c", "S": "AAPL", "x": "D", "oi": 96921, "op": 126.55, "os": 1, "oc": ["@", "I"], "ci": 96925,
               "cp": 126.56, "cs": 1, "cc": ["@", "I"], "z": "C", "t": "2024-06-10T15:51:44.208Z"}]),
    _compact([{"T": "x", "S": "AAPL", "i": 96925, "x": "D", "p": 126.56, "s": 1, "a": "C", "z": "C",
               "t": "2024-06-10T15:51:44.208Z"}]),
]


@dataclass
class ServerState:
    """What a fake provider saw, and the data frames it sends per connection."""

    batches: list[list[str]]
    connections: int = 0
    received: list[dict] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


def _alpaca_handler(state: ServerState, key: str = "key", secret: str = "secret"):
    async def handler(ws: ServerConnection) -> None:
        number = state.connections
        state.connections += 1
        await ws.send(_compact([{"T": "success", "msg": "connected"}]))
        auth = json.loads(await ws.recv())
        state.received.append(auth)
        if auth != {"action": "auth", "key": key, "secret": secret}:
            await ws.send(_compact([{"T": "error", "code": 402, "msg": "auth failed"}]))
            await ws.close()
            return
        await ws.send(_compact([{"T": "success", "msg": "authenticated"}]))
        sub = json.loads(await ws.recv())
        state.received.append(sub)
        await ws.send(_compact([{"T": "subscription", "trades": sub["trades"], "quotes": sub["quotes"],
                                 "bars": sub["bars"], "updatedBars": [], "dailyBars": [], "statuses": [],
                                 "lulds": [], "corrections": sub["trades"], "cancelErrors": sub["trades"]}]))
        for frame in state.batches[min(number, len(state.batches) - 1)]:
            await ws.send(frame)
        if number == 0:
            ws.transport.abort()  # a network drop, no close handshake
        else:
            await ws.wait_closed()
    return handler


def _finnhub_handler(state: ServerState, token: str = "tok"):
    async def handler(ws: ServerConnection) -> None:
        number = state.connections
        state.connections += 1
        state.paths.append(ws.request.path if ws.request else "")
        if f"token={token}" not in state.paths[-1]:
            await ws.close(1008, "invalid token")
            return
        state.received.append(json.loads(await ws.recv()))
        state.received.append(json.loads(await ws.recv()))
        await ws.send(_compact({"type": "ping"}))
        for frame in state.batches[min(number, len(state.batches) - 1)]:
            await ws.send(frame)
            await ws.send(_compact({"type": "ping"}))
        if number == 0:
            await ws.close(1011, "server restart")
        else:
            await ws.wait_closed()
    return handler


def _landing(kafka_bootstrap: str, provider: str) -> RawLanding:
    topic = raw_stream_topic(f"{provider}-{uuid.uuid4().hex[:8]}")
    ensure_topics(kafka_bootstrap, (topic,))
    return RawLanding(kafka_bootstrap, topic.name, provider)


async def _serve_and_collect(handler, feed_for, landing: RawLanding, frames: int,  # type: ignore[no-untyped-def]
                             timeout: float = 30):
    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        return await asyncio.wait_for(collect(feed_for(port), landing, max_frames=frames, backoff=FAST), timeout)


def test_alpaca_collector_lands_frames_and_reconnects(kafka_bootstrap: str) -> None:
    state = ServerState(batches=[ALPACA_DATA[:2], ALPACA_DATA[2:]])
    landing = _landing(kafka_bootstrap, "alpaca")

    def feed(port: int) -> AlpacaFeed:
        return AlpacaFeed("key", "secret", trades=["AAPL"], quotes=["AAPL"], bars=["AAPL"],
                          stream_url=f"ws://127.0.0.1:{port}/v2/iex")

    report = asyncio.run(_serve_and_collect(_alpaca_handler(state), feed, landing, frames=4))
    assert report.frames == 4
    assert report.connections == 2
    assert len(report.gaps) == 1
    assert state.received[1] == {"action": "subscribe", "trades": ["AAPL"], "quotes": ["AAPL"], "bars": ["AAPL"]}

    raw = _landed(kafka_bootstrap, landing.topic)
    data = raw.filter(raw["kind"] == "data")
    assert data["value"].to_list() == ALPACA_DATA  # exactly as received, in order
    assert raw["kind"].to_list() == ["data", "data", "gap", "data", "data"]
    gap = json.loads(raw["value"][2])
    assert gap["provider"] == "alpaca"
    assert gap["disconnected_at"] <= gap["reconnected_at"]
    assert set(raw["provider"]) == {"alpaca"}
    assert (raw["received_at"] <= datetime.now(UTC)).all()

    # Bars by the bar schema (`c` is the close), trades by the trade schema (`c` is the conditions).
    bars = stream_bars(data)
    assert bars.select("kind", "symbol", "ts", "open", "high", "low", "close", "volume", "trades", "vwap").rows() == [
        ("b", "AAPL", datetime(2024, 6, 10, 15, 51, tzinfo=UTC), 126.5, 126.7, 126.4, 126.6, 1200.0, 12, 126.55)]
    actions = trade_actions(data)
    assert actions.select("action", "price", "conditions", "sequence", "corrects").rows() == [
        ("new", 126.55, "@,I", 96921, None), ("cancel", 126.55, "@,I", 96921, None),
        ("new", 126.56, "@,I", 96925, 96921), ("cancel", 126.56, None, 96925, None)]


def test_a_frame_mixing_bars_and_trades_parses_each_by_its_schema() -> None:
    import polars as pl

    frame = _compact([
        {"T": "b", "S": "SPY", "o": 388.985, "h": 389.13, "l": 388.975, "c": 389.12, "v": 49378,
         "t": "2021-02-22T19:15:00Z", "n": 420, "vw": 389.05},
        {"T": "t", "S": "SPY", "i": 52983525029461, "x": "V", "p": 389.12, "s": 100, "c": ["@"],
         "t": "2021-02-22T19:15:01.123456789Z", "z": "B"},
        {"T": "d", "S": "SPY", "o": 387.06, "h": 389.62, "l": 386.74, "c": 389.12, "v": 61000000,
         "t": "2021-02-22T05:00:00Z", "n": 300000, "vw": 388.4}])
    raw = pl.DataFrame({"offset": [7], "provider": ["alpaca"], "value": [frame]})
    bars = stream_bars(raw)
    assert bars.select("position", "kind", "close", "volume").rows() == [(0, "b", 389.12, 49378.0),
                                                                          (4, "d", 389.12, 61000000.0)]
    assert trade_actions(raw).select("position", "price", "conditions").rows() == [(2, 389.12, "@")]


def test_alpaca_refused_credentials_stop_the_collector(kafka_bootstrap: str) -> None:
    state = ServerState(batches=[ALPACA_DATA])
    landing = _landing(kafka_bootstrap, "alpaca")

    def feed(port: int) -> AlpacaFeed:
        return AlpacaFeed("key", "wrong", trades=["AAPL"], stream_url=f"ws://127.0.0.1:{port}/v2/iex")

    with pytest.raises(FeedError, match="402"):
        asyncio.run(_serve_and_collect(_alpaca_handler(state), feed, landing, frames=1))
    assert state.connections == 1  # no retry loop against refused credentials
    assert landing.landed == 0


def _alpaca_refusing(state: ServerState, error: dict, *, after_subscription: bool):
    """An Alpaca server answering the subscription with `error` (or acknowledging it, sending the data
    batches, then `error`) and keeping the connection open, as Alpaca does for 405."""
    async def handler(ws: ServerConnection) -> None:
        state.connections += 1
        await ws.send(_compact([{"T": "success", "msg": "connected"}]))
        state.received.append(json.loads(await ws.recv()))
        await ws.send(_compact([{"T": "success", "msg": "authenticated"}]))
        sub = json.loads(await ws.recv())
        state.received.append(sub)
        if after_subscription:
            await ws.send(_compact([{"T": "subscription", "trades": sub["trades"], "quotes": [], "bars": []}]))
            for frame in state.batches[0]:
                await ws.send(frame)
        await ws.send(_compact([error]))
        await ws.wait_closed()
    return handler


@pytest.mark.parametrize("after_subscription", [False, True])
def test_alpaca_symbol_limit_stops_the_collector(kafka_bootstrap: str, after_subscription: bool) -> None:
    state = ServerState(batches=[ALPACA_DATA[:1]])
    landing = _landing(kafka_bootstrap, "alpaca")
    limit = {"T": "error", "code": 405, "msg": "symbol limit exceeded"}

    def feed(port: int) -> AlpacaFeed:
        symbols = [f"S{i:03d}" for i in range(68)]
        return AlpacaFeed("key", "secret", trades=symbols, stream_url=f"ws://127.0.0.1:{port}/v2/iex")

    with pytest.raises(FeedError, match=r"alpaca error 405: symbol limit exceeded .*subscribe fewer"):
        asyncio.run(_serve_and_collect(_alpaca_refusing(state, limit, after_subscription=after_subscription),
                                       feed, landing, frames=10, timeout=10))
    assert state.connections == 1  # stopped: no reconnect loop
    assert landing.landed == (1 if after_subscription else 0)  # what came before the error is kept


def test_alpaca_slow_client_error_reconnects(kafka_bootstrap: str) -> None:
    state = ServerState(batches=[ALPACA_DATA[:1]])
    landing = _landing(kafka_bootstrap, "alpaca")
    slow = {"T": "error", "code": 407, "msg": "slow client"}

    def feed(port: int) -> AlpacaFeed:
        return AlpacaFeed("key", "secret", trades=["AAPL"], stream_url=f"ws://127.0.0.1:{port}/v2/iex")

    report = asyncio.run(_serve_and_collect(_alpaca_refusing(state, slow, after_subscription=True), feed,
                                            landing, frames=2, timeout=10))
    assert report.frames == 2
    assert state.connections == 2  # a transient error: reconnected, with a gap marker
    assert len(report.gaps) == 1


def test_finnhub_error_frame_stops_the_collector(kafka_bootstrap: str) -> None:
    trade = _compact({"data": [{"c": ["1"], "p": 195.12, "s": "AAPL", "t": 1718034704208, "v": 100}],
                      "type": "trade"})
    error = _compact({"type": "error", "msg": "Subscribing to too many symbols"})
    state = ServerState(batches=[[trade, error]])
    landing = _landing(kafka_bootstrap, "finnhub")

    def feed(port: int) -> FinnhubFeed:
        return FinnhubFeed("tok", ["AAPL", "MSFT"], stream_url=f"ws://127.0.0.1:{port}")

    async def handler(ws: ServerConnection) -> None:
        state.connections += 1
        for _ in range(2):
            state.received.append(json.loads(await ws.recv()))
        for frame in state.batches[0]:
            await ws.send(frame)
        await ws.wait_closed()

    with pytest.raises(FeedError, match="finnhub error: Subscribing to too many symbols"):
        asyncio.run(_serve_and_collect(handler, feed, landing, frames=10, timeout=10))
    assert state.connections == 1
    assert landing.landed == 1


def test_finnhub_collector_lands_trades_not_pings_and_reconnects(kafka_bootstrap: str) -> None:
    trades = [_compact({"data": [{"c": ["1", "12"], "p": 195.12, "s": "AAPL", "t": 1718034704208 + i, "v": 100}],
                        "type": "trade"}) for i in range(4)]
    state = ServerState(batches=[trades[:2], trades[2:]])
    landing = _landing(kafka_bootstrap, "finnhub")

    def feed(port: int) -> FinnhubFeed:
        return FinnhubFeed("tok", ["AAPL", "MSFT"], stream_url=f"ws://127.0.0.1:{port}")

    report = asyncio.run(_serve_and_collect(_finnhub_handler(state), feed, landing, frames=4))
    assert report.frames == 4
    assert report.control >= 3  # pings are heartbeats, never landed
    assert state.received[:2] == [{"type": "subscribe", "symbol": "AAPL"}, {"type": "subscribe", "symbol": "MSFT"}]
    raw = _landed(kafka_bootstrap, landing.topic)
    assert raw.filter(raw["kind"] == "data")["value"].to_list() == trades
    assert raw["kind"].to_list().count("gap") == 1


def test_synthetic_feed_lands_offline(kafka_bootstrap: str) -> None:
    landing = _landing(kafka_bootstrap, "synthetic")
    assert asyncio.run(run_synthetic(landing, ["AAPL", "MSFT"], frames=10, rate=0)) == 10
    raw = _landed(kafka_bootstrap, landing.topic)
    assert raw.height == 10
    assert all(json.loads(v)[0]["T"] == "t" for v in raw["value"])


def test_stream_command_lands_synthetic_frames(kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from mdpipeline.cli import app

    provider_topic = raw_stream_topic("synthetic").name
    monkeypatch.setenv("MDP_KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    before = _end(kafka_bootstrap, provider_topic)  # the topic is shared with other runs of the command
    result = CliRunner().invoke(app, ["stream", "--provider", "synthetic", "--symbols", "AAPL,MSFT",
                                      "--max-frames", "7", "--rate", "0"])
    assert result.exit_code == 0, result.output
    assert "landed 7 frames" in result.output
    assert _end(kafka_bootstrap, provider_topic) == before + 7
    assert _landed(kafka_bootstrap, provider_topic)["offset"].to_list()[before:] == list(range(before, before + 7))


def _end(bootstrap: str, topic: str) -> int:
    """The high watermark of partition 0 (0 when the topic does not exist yet)."""
    return end_offsets(bootstrap, topic).get(0, (0, 0))[1]


def _landed(bootstrap: str, topic: str) -> pl.DataFrame:
    """Every raw message of partition 0, read through the offset before the high watermark."""
    return read_messages(bootstrap, topic, 0, 0, last=_end(bootstrap, topic) - 1)
