"""Rate-limit headers other than Retry-After."""

from __future__ import annotations

import time


def seconds_until_reset(reset: str | None, now: float | None = None) -> float | None:
    """Seconds from `now` (default: the clock) until an epoch-seconds reset header (`X-RateLimit-Reset`
    of Alpaca and Finnhub), 0 when past; None when absent or not a number."""
    try:
        at = float(reset.strip()) if reset and reset.strip() else None
    except ValueError:
        return None
    if at is None:
        return None
    return max(0.0, at - (time.time() if now is None else now))


__all__ = ["seconds_until_reset"]
