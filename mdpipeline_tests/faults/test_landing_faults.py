"""The collector's broker hangs: frames it cannot land become a recorded gap, not only a log line.

The real collector lands a live loopback Alpaca stream on a broker of the test's own; the broker is
frozen (SIGSTOP) for longer than the landing producer's `message.timeout.ms`, so deliveries fail. Once
it is back, the collector lands a gap marker covering the frames it lost, the real-time job records it,
and every trade the server sent is either stored or inside a recorded gap (for gap repair).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Callable
from datetime import datetime

import psycopg
import pytest

from mdpipeline.devservices import LocalBroker
from mdpipeline.distribute.subscriber import end_offsets
from mdpipeline.distribute.topics import ensure_topics, raw_stream_topic
from mdpipeline.settings import DEFAULT_UNIVERSE
from mdpipeline.stream.collector import Backoff, collect
from mdpipeline.stream.feeds import AlpacaFeed
from mdpipeline.stream.gap_repair import DEFAULT_MARGIN
from mdpipeline.stream.landing import RawLanding
from mdpipeline.stream.process import process_range
from mdpipeline.universe import load_universe
from mdpipeline_tests.faults.alpaca_stream import KEY_ID, SECRET_KEY, AlpacaStream
from mdpipeline_tests.faults.invariants import assert_ticks_unique

pytestmark = pytest.mark.faults

MESSAGE_TIMEOUT_MS = 2000


def test_frames_the_broker_never_confirms_become_a_gap(conn: psycopg.Connection, own_broker: LocalBroker,
                                                       record_property: Callable[[str, object], None]) -> None:
    servers = own_broker.bootstrap_servers
    pid = own_broker.pid
    assert pid is not None
    topic = raw_stream_topic(f"alpaca-{uuid.uuid4().hex[:8]}")
    ensure_topics(servers, (topic,))
    landing = RawLanding(servers, topic.name, "alpaca", producer_config={"message.timeout.ms": MESSAGE_TIMEOUT_MS})
    stream = AlpacaStream(live=True, tick=0.1, ping_interval=None, symbols=("AAPL", "MSFT")).start()

    async def run() -> None:
        stop = asyncio.Event()
        feed = AlpacaFeed(KEY_ID, SECRET_KEY, trades=["AAPL", "MSFT"], stream_url=stream.url)
        task = asyncio.ensure_future(collect(feed, landing, stop=stop, backoff=Backoff(0.05, 0.2),
                                             checkpoint_interval=0.5))
        await asyncio.sleep(2)
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(MESSAGE_TIMEOUT_MS / 1000 + 2)
        finally:
            os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 30
        while landing.gaps_landed == 0:
            assert time.monotonic() < deadline, f"no gap marker landed (failed: {landing.failed[:3]})"
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.5)
        stop.set()
        await asyncio.wait_for(task, 60)

    try:
        asyncio.run(run())
    finally:
        stream.stop()
    assert landing.failed  # the fault really cost deliveries
    assert landing.lost_total > 0

    last = end_offsets(servers, topic.name)[0][1] - 1
    report = process_range(conn, servers, topic=topic.name, partition=0, first=0, last=last,
                           symbology=load_universe(DEFAULT_UNIVERSE).symbology, run_id="landing-fault")
    assert report.gaps >= 1
    gaps = conn.execute("select disconnected_at, reconnected_at, reason from ops.stream_gaps").fetchall()
    assert any("not landed" in reason for _, _, reason in gaps)
    stored = {r[0] for r in conn.execute("select sequence from md.ticks")}
    sent = stream.trades_sent()
    # Frames the producer gave up on may still have been written once the broker woke up (the requests
    # were in its socket buffers): reported lost, then found. Whatever is really missing must be in a gap.
    missing = [t for t in sent if t["i"] not in stored]

    def at(ts: str) -> datetime:
        return datetime.fromisoformat(ts[:26] + "+00:00")

    uncovered = [t for t in missing
                 if not any(a - DEFAULT_MARGIN <= at(t["t"]) <= b + DEFAULT_MARGIN for a, b, _ in gaps)]
    assert uncovered == [], f"{len(uncovered)} lost trades outside every recorded gap, e.g. {uncovered[:2]}"
    record_property("failed_deliveries", len(landing.failed))
    record_property("trades_sent", len(sent))
    record_property("trades_lost_all_in_gaps", len(missing))
    record_property("gaps", [f"{(b - a).total_seconds():.1f}s" for a, b, _ in gaps])
    assert_ticks_unique(conn)
