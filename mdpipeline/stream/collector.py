"""The websocket collector: connect, handshake, land data frames, reconnect with backoff on any drop.

After a reconnect it lands a gap marker covering the time without a connection, so the processing
side knows which interval may miss data (and can backfill it from the provider's REST API). The gap
starts at the last message received on the dropped connection, not when the drop was noticed: a
connection that went silent (a hung peer, a network black hole) is only found dead by the keepalive
pings, and what was sent meanwhile is lost too.

Nothing stops the collector but `stop`, `max_frames` or a refusal a reconnect cannot fix (FeedError):
- a frame the feed cannot read (not JSON, not UTF-8, an unexpected shape) is landed as it is, and
  the real-time job quarantines it with the reason;
- a frame over the websocket limit (`MAX_FRAME_BYTES`) makes the library close the connection (1009),
  a text frame that is not UTF-8 too (1007): the collector reconnects and records the gap;
- the opening handshake (`open_timeout`), the provider's auth/subscribe exchange (`handshake_timeout`)
  and, when set, the wait for the next message (`read_timeout`) are bounded: a peer that stops
  answering costs a reconnect, never a hang; keepalive pings (`ping_interval`, `ping_timeout`) find
  dead connections;
- frames the broker does not confirm become gap markers (`mdpipeline.stream.landing`);
- a collector that did not run for a while (SIGSTOP, a suspended VM) lands a gap marker for that
  interval: a provider that dropped frames meanwhile (slow client) may leave no other trace.

With a `CollectorState`, the collector saves until when everything it received is landed
(`ops.stream_collectors.covered_until`) about once a second; the next start of a collector of the same
name lands a gap marker from there to its first connection, so a crash, a SIGKILL or a stop is a
recorded, repaired gap rather than silent loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus, WebSocketException

from mdpipeline.env_numbers import env_number
from mdpipeline.providers.http import Redactor
from mdpipeline.stream.collector_state import CollectorState
from mdpipeline.stream.feeds import Feed, FeedError
from mdpipeline.stream.landing import MAX_FRAME_BYTES, RawLanding
from mdpipeline.stream.log_redaction import protect

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: delay n is uniform in [0, min(cap, base * 2**n)]."""

    base: float = 0.5
    cap: float = 30.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before reconnect attempt `attempt` (0-based)."""
        return random.uniform(0, min(self.cap, self.base * 2**attempt))


@dataclass(frozen=True)
class Timeouts:
    """Seconds the collector waits for the peer (None: no limit)."""

    open: float = 10.0  # TCP + TLS + HTTP upgrade
    handshake: float = 10.0  # the provider's auth and subscription answers
    read: float | None = None  # the next message on an open connection (quiet markets are legitimate)
    ping_interval: float = 20.0  # keepalive: a ping this often,
    ping_timeout: float = 20.0  # and the connection is dead when its pong takes longer than this

    @classmethod
    def from_env(cls) -> Timeouts:
        """MDP_STREAM_OPEN_TIMEOUT, _HANDSHAKE_TIMEOUT, _READ_TIMEOUT (0: none), _PING_INTERVAL, _PING_TIMEOUT."""
        def seconds(name: str, default: float | None) -> float | None:
            number = env_number(f"MDP_STREAM_{name}", allow_zero=True)
            return default if number is None else (number or None)
        return cls(open=seconds("OPEN_TIMEOUT", cls.open) or cls.open,
                   handshake=seconds("HANDSHAKE_TIMEOUT", cls.handshake) or cls.handshake,
                   read=seconds("READ_TIMEOUT", cls.read),
                   ping_interval=seconds("PING_INTERVAL", cls.ping_interval) or cls.ping_interval,
                   ping_timeout=seconds("PING_TIMEOUT", cls.ping_timeout) or cls.ping_timeout)


@dataclass
class CollectReport:
    """What a collector run did."""

    frames: int = 0
    control: int = 0
    connections: int = 0
    unreadable: int = 0  # frames the feed could not read, landed as they are
    gaps: list[tuple[datetime, datetime, str]] = field(default_factory=list)


class _SilentError(TimeoutError):
    """No message within the read timeout."""


async def collect(
    feed: Feed,
    landing: RawLanding,
    *,
    stop: asyncio.Event | None = None,
    max_frames: int | None = None,
    backoff: Backoff | None = None,
    open_timeout: float = 10.0,
    timeouts: Timeouts | None = None,
    state: CollectorState | None = None,
    checkpoint_interval: float = 1.0,
    max_size: int = MAX_FRAME_BYTES,
) -> CollectReport:
    """Run until `stop` is set or `max_frames` data frames were landed; then flush the landing.

    Raises FeedError when the provider refuses for good (credentials, subscription).
    """
    backoff = backoff or Backoff()
    limits = timeouts or Timeouts(open=open_timeout)
    stop = stop or asyncio.Event()
    redact = Redactor(feed.secrets())
    protect(feed.secrets())
    report = CollectReport()
    run = _Run(feed, landing, report, redact)
    if state is not None:
        run.restart_gap_from(await _start_state(state))
    checkpoints = asyncio.ensure_future(run.checkpoints(state, checkpoint_interval))
    attempt = 0
    try:
        while not stop.is_set():
            try:
                async with connect(feed.url(), open_timeout=limits.open, ping_interval=limits.ping_interval,
                                   ping_timeout=limits.ping_timeout, max_size=max_size) as ws:
                    await asyncio.wait_for(feed.handshake(ws), limits.handshake)
                    run.connected()
                    attempt = 0
                    while not stop.is_set():
                        receiving = asyncio.ensure_future(ws.recv())
                        stopping = asyncio.ensure_future(stop.wait())
                        done, _ = await asyncio.wait({receiving, stopping}, timeout=limits.read,
                                                     return_when=asyncio.FIRST_COMPLETED)
                        if receiving not in done:
                            receiving.cancel()
                            stopping.cancel()
                            if stopping in done:
                                break
                            raise _SilentError(f"no message for {limits.read:g}s")
                        stopping.cancel()
                        run.received(receiving.result())
                        if max_frames is not None and report.frames >= max_frames:
                            stop.set()
            except FeedError:
                raise
            except InvalidStatus as exc:
                if exc.response.status_code in (401, 403):
                    raise FeedError(f"{feed.provider}: handshake refused with HTTP "
                                    f"{exc.response.status_code}") from exc
                run.dropped(f"handshake: {exc}")
            except (WebSocketException, OSError, TimeoutError, ConnectionError) as exc:
                what = "handshake timed out" if isinstance(exc, TimeoutError) and not run.is_connected else ""
                run.dropped(what or f"{type(exc).__name__}: {exc}")
            if stop.is_set():
                break
            run.dropped("closed by server")  # a clean close is still a disconnection (no-op when recorded)
            delay = backoff.delay(attempt)
            attempt += 1
            log.warning("%s stream disconnected (%s); reconnecting in %.1fs", feed.provider, run.reason, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
    finally:
        checkpoints.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await checkpoints
        landing.flush()
        if state is not None:
            await run.save(state)
            await asyncio.to_thread(state.close)
    return report


async def _start_state(state: CollectorState) -> datetime | None:
    """Register the run; the previous run's coverage (None: first run, or the database is unreachable)."""
    try:
        previous = await asyncio.to_thread(state.start)
    except Exception as exc:  # the database is optional for collecting
        log.warning("collector %s: cannot read its previous coverage (%s); a restart gap cannot be recorded",
                    state.name, exc)
        return None
    return previous.covered_until if previous else None


class _Run:
    """The collector's connection state, the gaps it lands and the coverage it reports."""

    def __init__(self, feed: Feed, landing: RawLanding, report: CollectReport, redact: Redactor) -> None:
        self.feed = feed
        self.landing = landing
        self.report = report
        self.redact = redact
        self.down_since: datetime | None = None  # set while there is no connection (after a first one)
        self.reason = ""
        self.is_connected = False
        self.last_message_at: datetime | None = None  # on the current connection
        self.last_frame_at: datetime | None = None

    def restart_gap_from(self, covered_until: datetime | None) -> None:
        """A previous run covered everything received before `covered_until`: the gap starts there."""
        if covered_until is not None:
            self.down_since = covered_until
            self.reason = (f"collector restarted: frames received before {covered_until.isoformat()} were landed by "
                           "the previous run; none were collected until this run connected")

    def connected(self) -> None:
        now = datetime.now(UTC)
        self.report.connections += 1
        self.landing.new_connection()
        self.is_connected, self.last_message_at = True, now
        if self.down_since is not None:
            reason = self.redact(self.reason)
            self.landing.gap(self.down_since, now, reason)
            self.report.gaps.append((self.down_since, now, reason))
            self.down_since = None

    def received(self, frame: str | bytes) -> None:
        now = datetime.now(UTC)
        self.last_message_at = now
        try:
            is_data = self.feed.is_data(frame)
        except (FeedError, ConnectionError):
            raise
        except Exception as exc:  # unreadable: landed as it is; the real-time job quarantines it with the reason
            log.warning("%s: a frame of %d bytes could not be read (%s); landed as received", self.feed.provider,
                        len(frame), type(exc).__name__)
            self.report.unreadable += 1
            is_data = True
        if is_data:
            self.landing.land(frame, now)
            self.report.frames += 1
            self.last_frame_at = now
        else:
            self.report.control += 1

    def dropped(self, reason: str) -> None:
        """The connection (or the attempt) ended; the gap starts at the last message received on it."""
        if self.down_since is None:
            self.down_since = self.last_message_at or datetime.now(UTC)
            self.reason = self.redact(reason)
        self.is_connected = False

    def covered_until(self) -> datetime | None:
        alive = self.last_message_at if self.is_connected else self.down_since
        return self.landing.covered_until(alive) if alive is not None else None

    async def save(self, state: CollectorState) -> None:
        self.landing.report_losses()
        covered = self.covered_until()
        if covered is not None:
            await asyncio.to_thread(state.save, covered, self.last_frame_at, self.report.frames)

    def stalled(self, since: datetime, seconds: float) -> None:
        """The collector did not run for `seconds` (SIGSTOP, a suspended VM, a starved host): a peer that
        dropped frames meanwhile may leave no other trace, so the interval is a gap."""
        if not self.is_connected:
            return  # the disconnection's own gap covers it
        now = datetime.now(UTC)
        reason = f"collector stalled for {seconds:.1f}s (suspended or starved): frames may have been dropped"
        log.warning("%s: %s", self.feed.provider, reason)
        self.landing.gap(since, now, reason)
        self.report.gaps.append((since, now, reason))

    async def checkpoints(self, state: CollectorState | None, interval: float) -> None:
        """Land gap markers for lost frames and save the coverage, every `interval` seconds; a tick that
        comes much later than due means the collector was stalled (`stalled`)."""
        tolerance = max(2.0, 2 * interval)
        while True:
            before, before_wall = time.monotonic(), datetime.now(UTC)
            await asyncio.sleep(interval)
            late = time.monotonic() - before - interval
            if late > tolerance:
                self.stalled(before_wall, late + interval)
            try:
                if state is None:
                    self.landing.report_losses()
                else:
                    await self.save(state)
            except Exception as exc:  # never let bookkeeping stop collecting
                log.warning("%s collector checkpoint failed: %s", self.feed.provider, self.redact(str(exc)))
