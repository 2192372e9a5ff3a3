"""The websocket collector: connect, handshake, land data frames, reconnect with backoff on any drop.

After a reconnect it lands a gap marker covering the time without a connection, so the processing
side knows which interval may miss data (and can backfill it from the provider's REST API).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus, WebSocketException

from mdpipeline.stream.feeds import Feed, FeedError
from mdpipeline.stream.landing import RawLanding

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: delay n is uniform in [0, min(cap, base * 2**n)]."""

    base: float = 0.5
    cap: float = 30.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before reconnect attempt `attempt` (0-based)."""
        return random.uniform(0, min(self.cap, self.base * 2**attempt))


@dataclass
class CollectReport:
    """What a collector run did."""

    frames: int = 0
    control: int = 0
    connections: int = 0
    gaps: list[tuple[datetime, datetime, str]] = field(default_factory=list)


async def collect(
    feed: Feed,
    landing: RawLanding,
    *,
    stop: asyncio.Event | None = None,
    max_frames: int | None = None,
    backoff: Backoff | None = None,
    open_timeout: float = 10.0,
) -> CollectReport:
    """Run until `stop` is set or `max_frames` data frames were landed; then flush the landing.

    Raises FeedError when the provider refuses for good (credentials, subscription).
    """
    backoff = backoff or Backoff()
    stop = stop or asyncio.Event()
    report = CollectReport()
    attempt = 0
    down_since: datetime | None = None
    reason = ""
    try:
        while not stop.is_set():
            try:
                async with connect(feed.url(), open_timeout=open_timeout, ping_interval=20, ping_timeout=20,
                                   max_size=2**24) as ws:
                    await feed.handshake(ws)
                    report.connections += 1
                    attempt = 0
                    landing.new_connection()
                    if down_since is not None:
                        now = datetime.now(UTC)
                        landing.gap(down_since, now, reason)
                        report.gaps.append((down_since, now, reason))
                        down_since = None
                    while not stop.is_set():
                        receiving = asyncio.ensure_future(ws.recv())
                        stopping = asyncio.ensure_future(stop.wait())
                        done, _ = await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
                        if receiving not in done:
                            receiving.cancel()
                            break
                        stopping.cancel()
                        frame = receiving.result()
                        if feed.is_data(frame):
                            landing.land(frame, datetime.now(UTC))
                            report.frames += 1
                            if max_frames is not None and report.frames >= max_frames:
                                stop.set()
                        else:
                            report.control += 1
            except FeedError:
                raise
            except InvalidStatus as exc:
                if exc.response.status_code in (401, 403):
                    raise FeedError(f"{feed.provider}: handshake refused with HTTP {exc.response.status_code}") from exc
                down_since, reason = down_since or datetime.now(UTC), f"handshake: {exc}"
            except (WebSocketException, OSError, TimeoutError, ConnectionError) as exc:
                down_since, reason = down_since or datetime.now(UTC), f"{type(exc).__name__}: {exc}"
            if stop.is_set():
                break
            if down_since is None:  # the server closed cleanly: still a disconnection
                down_since, reason = datetime.now(UTC), "closed by server"
            delay = backoff.delay(attempt)
            attempt += 1
            log.warning("%s stream disconnected (%s); reconnecting in %.1fs", feed.provider, reason, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
    finally:
        landing.flush()
    return report
