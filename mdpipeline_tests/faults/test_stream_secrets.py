"""Credentials never reach the logs, even with the websocket library at DEBUG.

`websockets` logs the opening request line (Finnhub's token is in the URL) and every frame sent
(Alpaca's auth message carries the key and the secret), cut after 75 characters, so a secret may show
only in part. Real collectors run against loopback Alpaca and Finnhub servers with every logger at
DEBUG; the captured records must hold neither the credentials nor any 8-character piece of them, while
the library's request and frame lines are there (the test would notice if nothing were logged).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

import pytest
from websockets.asyncio.server import ServerConnection, serve

from mdpipeline.distribute.topics import ensure_topics, raw_stream_topic
from mdpipeline.stream.collector import Backoff, collect
from mdpipeline.stream.feeds import AlpacaFeed, FinnhubFeed
from mdpipeline.stream.landing import RawLanding
from mdpipeline_tests.faults.alpaca_stream import KEY_ID, SECRET_KEY, AlpacaStream
from mdpipeline_tests.faults.invariants import assert_no_secret

pytestmark = pytest.mark.faults

FINNHUB_TOKEN = "cq1finnhubTOKENabcdefgh12"


def _pieces(secret: str, size: int = 8) -> list[str]:
    return [secret[i:i + size] for i in range(len(secret) - size + 1)]


def _landing(kafka_bootstrap: str, provider: str) -> RawLanding:
    topic = raw_stream_topic(f"{provider}-{uuid.uuid4().hex[:8]}")
    ensure_topics(kafka_bootstrap, (topic,))
    return RawLanding(kafka_bootstrap, topic.name, provider)


def test_alpaca_credentials_stay_out_of_debug_logs(kafka_bootstrap: str, caplog: pytest.LogCaptureFixture) -> None:
    frame = json.dumps([{"T": "t", "S": "AAPL", "i": 1, "x": "V", "p": 1.0, "s": 1, "c": ["@"],
                         "t": "2024-06-10T14:00:00Z"}])
    stream = AlpacaStream(scripts=[[frame]]).start()
    try:
        with caplog.at_level(logging.DEBUG):
            feed = AlpacaFeed(KEY_ID, SECRET_KEY, trades=["AAPL"], stream_url=stream.url)
            report = asyncio.run(asyncio.wait_for(collect(feed, _landing(kafka_bootstrap, "alpaca"), max_frames=1,
                                                          backoff=Backoff(0.05, 0.1)), 30))
    finally:
        stream.stop()
    assert report.frames == 1
    assert stream.auth == [{"action": "auth", "key": KEY_ID, "secret": SECRET_KEY}]  # they were sent
    assert_no_secret([KEY_ID, SECRET_KEY, *_pieces(SECRET_KEY), *_pieces(KEY_ID)], texts=[caplog.text])
    assert "> TEXT '*** (a frame with credentials)'" in caplog.text  # the auth frame was logged, redacted


def test_finnhub_token_stays_out_of_debug_logs(kafka_bootstrap: str, caplog: pytest.LogCaptureFixture) -> None:
    trade = json.dumps({"type": "trade", "data": [{"s": "AAPL", "p": 1.0, "t": 1718031600000, "v": 1, "c": []}]})
    paths: list[str] = []

    async def handler(ws: ServerConnection) -> None:
        paths.append(ws.request.path if ws.request else "")
        await ws.recv()
        await ws.send(trade)
        await ws.wait_closed()

    async def run() -> int:
        async with serve(handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            feed = FinnhubFeed(FINNHUB_TOKEN, ["AAPL"], stream_url=f"ws://127.0.0.1:{port}")
            report = await asyncio.wait_for(collect(feed, _landing(kafka_bootstrap, "finnhub"), max_frames=1,
                                                    backoff=Backoff(0.05, 0.1)), 30)
            return report.frames

    with caplog.at_level(logging.DEBUG):
        assert asyncio.run(run()) == 1
    assert paths == [f"/?token={FINNHUB_TOKEN}"]  # it was sent
    assert_no_secret([FINNHUB_TOKEN, *_pieces(FINNHUB_TOKEN)], texts=[caplog.text])
    assert "> GET /?token=***" in caplog.text  # the request line was logged, redacted
