"""A small circuit breaker per provider: closed -> open after `fail_max` consecutive failures -> half-open
once `reset_timeout` has passed -> closed on the first success (open again on a failure).

Written here rather than taken from pybreaker: pybreaker's `call()` (and `calling()`) holds the
breaker's lock for the whole wrapped call, which would serialize a provider's concurrent requests
(IBKR's history requests run five at a time), and its open state only moves on inside a call. The HTTP
client needs three questions answered without holding a lock across the request: may I send
(`before_call`, raising CircuitOpenError with the time of the next trial), it failed (`failure`), it
answered (`success`). What counts as a failure is the client's business: transport failures only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from mdpipeline.providers.errors import CircuitOpenError

log = logging.getLogger("mdpipeline.providers")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class CircuitBreaker:
    """Consecutive-failure breaker shared by every client of one provider in a process (thread-safe)."""

    def __init__(self, name: str, fail_max: int = 5, reset_timeout: float = 60.0,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.name = name
        self.fail_max = fail_max
        self.reset_timeout = reset_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._opened_at: datetime | None = None
        self.last_failure = ""

    def configure(self, fail_max: int, reset_timeout: float) -> None:
        """Change the thresholds (the latest client's policy wins); the state is kept."""
        with self._lock:
            self.fail_max, self.reset_timeout = fail_max, reset_timeout

    def _reopen_at(self) -> datetime | None:
        if self._state != OPEN or self._opened_at is None:
            return None
        return self._opened_at + timedelta(seconds=self.reset_timeout)

    @property
    def state(self) -> str:
        """closed | open | half-open (an open breaker whose reset timeout passed lets a trial call through)."""
        with self._lock:
            reopen = self._reopen_at()
            if reopen is not None and self._clock() >= reopen:
                return HALF_OPEN
            return self._state

    def before_call(self) -> None:
        """CircuitOpenError while open and the reset timeout has not passed; else the call may go (after the
        timeout, as the half-open trial)."""
        with self._lock:
            reopen = self._reopen_at()
            if reopen is None:
                return
            now = self._clock()
            if now < reopen:
                raise CircuitOpenError(
                    f"{self.name}: circuit breaker open after {self.fail_max} consecutive failures "
                    f"(last: {self.last_failure}); no request sent; next trial call allowed at "
                    f"{reopen:%Y-%m-%d %H:%M:%S} UTC (in {(reopen - now).total_seconds():.0f}s)")
            self._move(HALF_OPEN)

    def success(self) -> None:
        """The provider answered: reset the count, close a half-open breaker. While open (a request sent
        before it opened) outcomes are ignored, as pybreaker does."""
        with self._lock:
            if self._state == OPEN:
                return
            self._failures = 0
            if self._state != CLOSED:
                self._move(CLOSED)

    def failure(self, reason: str) -> bool:
        """A transport failure; True when it opened the breaker."""
        with self._lock:
            if self._state == OPEN:
                return False
            self._failures += 1
            self.last_failure = reason
            if self._state == HALF_OPEN or (self._state == CLOSED and self._failures >= self.fail_max):
                self._opened_at = self._clock()
                self._move(OPEN)
                return True
            return False

    def _move(self, new: str) -> None:
        old, self._state = self._state, new
        if new == OPEN:
            log.warning("%s: circuit breaker %s -> open after %d consecutive failures (last: %s); "
                        "no requests for %.0fs", self.name, old, self._failures, self.last_failure,
                        self.reset_timeout)
        else:
            log.info("%s: circuit breaker %s -> %s", self.name, old, new)


__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "CircuitBreaker"]
