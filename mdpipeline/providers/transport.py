"""The transport seam under `HttpClient`: send one GET, hand back status, headers and the whole body.

The client holds the policy (retries, limits, breaker, classification, redaction) over a `Transport`,
as httpx's client does over its transports. `RequestsTransport` is the real one (a `requests` session
plus a deadline watchdog); the client's unit tests give it a scripted transport instead, so they run
without sockets. A transport raises `TransportError` for failures below HTTP (its `kind` says which);
any HTTP answer, whatever its status, is a `Response`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

import requests
from requests.structures import CaseInsensitiveDict

FailureKind = Literal["timeout", "truncated", "deadline", "connection"]


@dataclass(frozen=True)
class Response:
    """One HTTP answer with its body read in full (what `classify` hooks see).

    The attribute names are those of `requests.Response`, so hooks read `status_code`, `headers`
    (case-insensitive), `content`, `text` and `ok` alike.
    """

    status_code: int
    headers: Mapping[str, str] = field(default_factory=dict)
    content: bytes = b""

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", CaseInsensitiveDict(self.headers))

    @property
    def text(self) -> str:
        """The body decoded as UTF-8 (undecodable bytes replaced)."""
        return self.content.decode("utf-8", "replace")

    @property
    def ok(self) -> bool:
        """True for a status below 400 (as `requests.Response.ok`)."""
        return self.status_code < 400


class TransportError(Exception):
    """No (complete) HTTP answer: `kind` is timeout, truncated (body cut in transit), deadline (the whole
    response took too long) or connection. `reason` may hold the URL: the client redacts it."""

    def __init__(self, kind: FailureKind, reason: str) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason


class Transport(Protocol):
    """Sends GET requests; the URL already carries its query string."""

    def send(self, url: str, headers: Mapping[str, str], *, timeout: float, deadline: float) -> Response:
        """The answer to GET `url` (redirects not followed); TransportError when there is none."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class _Watchdog:
    """Interrupts a response still being read when its deadline passes (urllib3's `shutdown` ends a blocked
    read in another thread), so a body that trickles in byte by byte cannot hold the caller for hours."""

    def __init__(self, seconds: float) -> None:
        self.started = time.monotonic()
        self.seconds = seconds
        self.fired = False
        self._timer: threading.Timer | None = None

    def watch(self, resp: requests.Response) -> None:
        def interrupt() -> None:
            self.fired = True
            with contextlib.suppress(Exception):
                resp.raw.shutdown()

        remaining = self.seconds - (time.monotonic() - self.started)
        if remaining <= 0:
            interrupt()
            return
        self._timer = threading.Timer(remaining, interrupt)
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


class RequestsTransport:
    """The real transport: one pooled `requests` session. `timeout` bounds connecting and each wait for
    bytes; `deadline` bounds the whole response, body included (a watchdog interrupts a slow drip)."""

    def __init__(self, verify: bool | str = True) -> None:
        self._session = requests.Session()
        self._verify = verify

    def send(self, url: str, headers: Mapping[str, str], *, timeout: float, deadline: float) -> Response:
        watchdog = _Watchdog(deadline)
        try:
            resp = self._session.get(url, headers=dict(headers), verify=self._verify, timeout=(timeout, timeout),
                                     allow_redirects=False, stream=True)
            try:
                watchdog.watch(resp)
                body = resp.content
            finally:
                watchdog.cancel()
                resp.close()
            if watchdog.fired:
                raise TransportError("deadline", f"the response was not complete after {deadline:g}s")
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError) as exc:
            if watchdog.fired:
                raise TransportError("deadline", f"the response was not complete after {deadline:g}s") from None
            raise TransportError("truncated", _reason(exc)) from None
        except requests.exceptions.Timeout:
            raise TransportError("timeout", f"timed out after {timeout:g}s") from None
        except requests.exceptions.RequestException as exc:
            if watchdog.fired:
                raise TransportError("deadline", f"the response was not complete after {deadline:g}s") from None
            raise TransportError("connection", _reason(exc)) from None
        return Response(resp.status_code, resp.headers, body)

    def close(self) -> None:
        self._session.close()


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


__all__ = ["FailureKind", "RequestsTransport", "Response", "Transport", "TransportError"]
