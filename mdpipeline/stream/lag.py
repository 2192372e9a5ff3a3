"""How far the real-time job is behind a raw topic partition, and the bounds it should stay within.

- `frames_behind`: messages in the partition's log after the processed offset (what the next runs have
  to do);
- `seconds_behind`: how long the oldest of them has waited since the collector received it (its
  `mdp-received-at`, else when it was landed); 0 when nothing is behind.

Bounds come from the environment (docs/configuration.md): `MDP_REALTIME_MAX_LAG_SECONDS` (default 60)
and `MDP_REALTIME_MAX_LAG_FRAMES` (default 100,000; 0 = no bound on frames).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from mdpipeline.env_numbers import env_number
from mdpipeline.stream.offsets import RangeUnavailableError, log_position, read_messages

DEFAULT_MAX_LAG_SECONDS = 60.0
DEFAULT_MAX_LAG_FRAMES = 100_000


@dataclass(frozen=True)
class StreamLag:
    """The backlog of one raw topic partition after a processed offset."""

    frames_behind: int
    seconds_behind: float
    log_end: int  # the partition's high watermark when measured


@dataclass(frozen=True)
class LagBounds:
    """How far behind the real-time job may fall before its lag check fails (None: no bound)."""

    seconds: float | None
    frames: int | None

    @classmethod
    def from_env(cls) -> LagBounds:
        """MDP_REALTIME_MAX_LAG_SECONDS and MDP_REALTIME_MAX_LAG_FRAMES (0 = no bound), or the defaults."""
        seconds = env_number("MDP_REALTIME_MAX_LAG_SECONDS", allow_zero=True)
        frames = env_number("MDP_REALTIME_MAX_LAG_FRAMES", allow_zero=True)
        return cls(seconds=DEFAULT_MAX_LAG_SECONDS if seconds is None else (seconds or None),
                   frames=DEFAULT_MAX_LAG_FRAMES if frames is None else (int(frames) or None))

    def exceeded(self, lag: StreamLag) -> list[str]:
        """Why `lag` is beyond the bounds (empty when it is within them)."""
        why = []
        if self.seconds is not None and lag.seconds_behind > self.seconds:
            why.append(f"{lag.seconds_behind:.1f} s behind (bound {self.seconds:g} s)")
        if self.frames is not None and lag.frames_behind > self.frames:
            why.append(f"{lag.frames_behind} frames behind (bound {self.frames})")
        return why


def stream_lag(bootstrap_servers: str, topic: str, partition: int, next_offset: int,
               now: datetime | None = None) -> StreamLag:
    """The backlog of `topic`/`partition` after `next_offset` (the first offset not yet processed)."""
    position = log_position(bootstrap_servers, topic, partition)
    if position is None:
        return StreamLag(0, 0.0, 0)
    start = max(next_offset, position.low)
    behind = max(position.high - start, 0)
    if not behind:
        return StreamLag(0, 0.0, position.high)
    try:
        oldest = read_messages(bootstrap_servers, topic, partition, start, last=start, timeout=10.0)
    except RangeUnavailableError:
        oldest = None
    waited = 0.0
    if oldest is not None and oldest.height:
        since = oldest["received_at"][0] or oldest["landed_at"][0]
        if since is not None:
            waited = max(((now or datetime.now(UTC)) - since).total_seconds(), 0.0)
    return StreamLag(behind, waited, position.high)
