"""The resilient HTTP client every network provider fetches through: policy over a transport seam.

`HttpClient` (this module) runs one call: it builds the URL, then per attempt, in this order: breaker
check (open -> `CircuitOpenError`, no request), daily quota (spent -> `RateLimitError`, no request; the
provider's own "daily quota spent" answer marks the day spent for everyone), token bucket wait,
concurrency slot, the request through its `Transport`, then classification: the provider's `classify`
hook first (it sees every response and may raise a typed error, e.g. for an HTTP 200 rate-limit body),
then the status code (429 -> RateLimitError, 401/403 -> EntitlementError, other 4xx/3xx ->
BadRequestError, 5xx -> ProviderUnavailableError). Transport failures become ProviderUnavailableError
(timeouts, connection errors, a response past its deadline) or MalformedPayloadError(truncated=True).

The parts live beside it: `transport` (sending; `RequestsTransport` with the deadline watchdog),
`policy` (`HttpPolicy`, which errors are retried and how long to wait, Retry-After parsing), `breaker`
(the circuit breaker), `limits` (daily quota, token bucket; `LimitsStore`, the seam for limits shared by
every process), `provider_state` (what every client of one provider name shares in a process) and
`redaction` (secrets out of URLs, messages and logs).

Secrets (`secrets=`, default header values, and default params named like credentials) are replaced
by `***` in every URL, message, log line and `HttpResult`; exceptions from the transport (whose
messages may hold the full URL) are never chained.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests
import tenacity

from mdpipeline.providers.base import ProviderError
from mdpipeline.providers.errors import (
    BadRequestError,
    EntitlementError,
    MalformedPayloadError,
    ProviderUnavailableError,
    QuotaStoreError,
    RateLimitError,
)
from mdpipeline.providers.limits import LimitsStore
from mdpipeline.providers.policy import HttpPolicy, counts_for_breaker, parse_retry_after
from mdpipeline.providers.provider_state import ProviderStates, breaker_state, process_states, reset_shared_state
from mdpipeline.providers.redaction import (
    CREDENTIAL_PARAMS,
    REDACTED,
    Redactor,
    install_log_filter,
    redact_registered,
    register_secrets,
    registered_secrets,
)
from mdpipeline.providers.transport import RequestsTransport, Response, Transport, TransportError

log = logging.getLogger("mdpipeline.providers")

USER_AGENT = "mdpipeline/0.1 (+https://github.com/mdpipeline)"
_SNIPPET = 200


@dataclass
class HttpStats:
    """Counters of one client, for logs and asset metadata."""

    attempts: int = 0  # requests sent
    retries: int = 0  # attempts after the first of a call
    throttled_seconds: float = 0.0  # waited for the token bucket or a Retry-After
    backoff_seconds: float = 0.0  # waited between failed attempts (not rate limits)
    rate_limited: int = 0  # RateLimitError outcomes (429, rate-limit bodies, daily quota)
    breaker_opened: int = 0  # times an attempt of this client tripped the breaker

    def as_dict(self) -> dict[str, float | int]:
        """The counters as a plain dict."""
        return dict(vars(self))


_UNPARSED: Any = object()


@dataclass(frozen=True)
class HttpResult:
    """One response, with secrets already removed from `url` and `params`."""

    url: str  # as sent, secrets replaced by ***
    endpoint: str  # the URL path
    params: dict[str, Any]  # the query as sent (text values, a next-page URL's own query included), secrets ***
    status: int
    content_type: str
    body: bytes
    fetched_at: datetime
    _parsed: Any = field(default=_UNPARSED, repr=False, compare=False)

    def json(self) -> Any:
        """The body as JSON; MalformedPayloadError when it is not JSON."""
        if self._parsed is _UNPARSED:
            object.__setattr__(self, "_parsed", parse_json(self.body, f"GET {self.url}"))
        return self._parsed


def parse_json(body: bytes, where: str) -> Any:
    """`body` as JSON; MalformedPayloadError naming `where` (and the position, never the content) if not."""
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise MalformedPayloadError(f"{where}: body is not UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        what = "empty body" if not body.strip() else f"{exc.msg} at byte {exc.pos} of {len(body)}"
        raise MalformedPayloadError(f"{where}: body is not valid JSON ({what})") from None


def json_body(response: Response) -> Any | None:
    """The JSON of `response`, or None when it is not JSON (for `classify` hooks)."""
    try:
        return json.loads(response.content)
    except ValueError:
        return None


Classify = Callable[[Response], None]


class HttpClient:
    """GETs against one provider's base URL, with the policy's retries, limits and breaker."""

    def __init__(self, provider: str, base_url: str, policy: HttpPolicy, *, secrets: Sequence[str] = (),
                 default_params: Mapping[str, str] | None = None, default_headers: Mapping[str, str] | None = None,
                 classify: Classify | None = None, sleep: Callable[[float], None] = time.sleep,
                 verify: bool | str = True, limits_store: LimitsStore | None = None,
                 transport: Transport | None = None, states: ProviderStates | None = None) -> None:
        """`limits_store`: where the provider's daily quota and token bucket are held for every process
        (the database's: `mdpipeline.storage.provider_limits.quota_store(url)`, handed down by the layer
        that has the URL); None keeps them in this process. `transport`: how requests are sent
        (default: `RequestsTransport(verify)`). `states`: where the breaker and limits shared by clients of
        one provider live (default: the process's)."""
        if not base_url or urlsplit(base_url).scheme not in ("http", "https"):
            raise ProviderError(f"{provider}: base URL must be http(s)://..., got {base_url!r}")
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self.policy = policy
        self.default_params = dict(default_params or {})
        self.default_headers = {"User-Agent": USER_AGENT, **dict(default_headers or {})}
        implied = [str(v) for k, v in self.default_params.items() if k in CREDENTIAL_PARAMS]
        self.redact = Redactor([*secrets, *implied, *(default_headers or {}).values()])
        install_log_filter().add(self.redact.secrets)
        self.classify = classify
        self.stats = HttpStats()
        self._sleep = sleep
        self._transport: Transport = transport or RequestsTransport(verify)
        self._state = (states or process_states()).get(provider, policy, limits_store)

    @property
    def breaker_state(self) -> str:
        """closed | open | half-open, shared by every client of this provider."""
        return self._state.breaker.state

    def get_json(self, path: str, params: Mapping[str, Any] | None = None) -> HttpResult:
        """GET and check the body is JSON (invalid JSON -> MalformedPayloadError); body kept as sent."""
        return self._call(path, params, parse_json=True)

    def get(self, url_or_path: str, params: Mapping[str, Any] | None = None) -> HttpResult:
        """GET raw bytes. An absolute URL (e.g. a next-page link) must be on the base URL's origin."""
        return self._call(url_or_path, params, parse_json=False)

    def close(self) -> None:
        """Close the transport's connections."""
        self._transport.close()

    # -- retry loop ----------------------------------------------------------------------------------

    def _call(self, url_or_path: str, params: Mapping[str, Any] | None, *, parse_json: bool) -> HttpResult:
        url = self._prepare(self._absolute(url_or_path),
                            {**self.default_params, **{k: v for k, v in (params or {}).items() if v is not None}})
        retrying = self.policy.retrying(self._sleep, self._before_sleep)
        try:
            return retrying(self._attempt, url, parse_json)
        except ProviderError as exc:
            attempts = retrying.statistics.get("attempt_number", 1)
            if attempts > 1 and exc.args:
                exc.args = (f"{exc.args[0]} (gave up after {attempts} attempts)", *exc.args[1:])
            raise

    def _before_sleep(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.upcoming_sleep
        self.stats.retries += 1
        if isinstance(exc, RateLimitError):
            self.stats.throttled_seconds += wait
        else:
            self.stats.backoff_seconds += wait
        log.warning("%s: attempt %d/%d failed: %s; retrying in %.2fs", self.provider, state.attempt_number,
                    self.policy.max_attempts, exc, wait)

    # -- one attempt -----------------------------------------------------------------------------------

    def _attempt(self, url: str, parse_json: bool) -> HttpResult:
        state = self._state
        state.breaker.before_call()
        try:
            state.limits.take()
        except RateLimitError:
            self.stats.rate_limited += 1
            raise
        wait = state.limits.reserve()
        if wait > 0:
            self.stats.throttled_seconds += wait
            self._sleep(wait)
        with state.slot():
            self.stats.attempts += 1
            try:
                result = self._send(url)
                if parse_json:
                    result.json()
            except ProviderError as exc:
                if isinstance(exc, RateLimitError):
                    self.stats.rate_limited += 1
                    self.policy.cap_retry_after(exc)
                    if exc.daily:
                        self._exhaust_quota()
                if counts_for_breaker(exc):
                    self.stats.breaker_opened += state.breaker.failure(str(exc))
                else:
                    state.breaker.success()
                raise
        state.breaker.success()
        return result

    def _exhaust_quota(self) -> None:
        """The provider said its daily quota is spent: mark the shared day spent (best effort)."""
        try:
            self._state.limits.exhaust()
        except QuotaStoreError as err:
            log.warning("%s: could not mark the daily quota as spent: %s", self.provider, err)

    def _send(self, url: str) -> HttpResult:
        shown = self.redact(url)
        where = f"{self.provider}: GET {shown}"
        deadline = self.policy.response_deadline()
        try:
            resp = self._transport.send(url, self.default_headers, timeout=self.policy.timeout, deadline=deadline)
        except TransportError as exc:
            reason = self.redact(exc.reason)
            if exc.kind == "truncated":
                raise MalformedPayloadError(f"{where}: body truncated in transit ({reason})", truncated=True) from None
            if exc.kind == "deadline":
                raise ProviderUnavailableError(f"{where}: {reason} (deadline; a body trickling in never trips the "
                                               "per-read timeout)") from None
            raise ProviderUnavailableError(f"{where}: {reason}") from None
        sent = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
        result = HttpResult(
            url=shown, endpoint=urlsplit(url).path, params=self.redact.params(sent), status=resp.status_code,
            content_type=resp.headers.get("Content-Type", ""), body=resp.content, fetched_at=datetime.now(UTC))
        self._classify(resp, where)
        return result

    def _classify(self, resp: Response, where: str) -> None:
        """Provider hook first, then the status code."""
        if self.classify is not None:
            try:
                self.classify(resp)
            except ProviderError as exc:
                exc.args = (f"{where}: {self.redact(str(exc))}",)
                raise
            except ValueError as exc:
                raise MalformedPayloadError(f"{where}: unexpected body ({self.redact(str(exc))})") from None
        status = resp.status_code
        if 200 <= status < 300:
            return
        detail = f"{where} -> HTTP {status}: {self._snippet(resp)}"
        if status == 429:
            raise RateLimitError(detail, retry_after=parse_retry_after(resp.headers.get("Retry-After")))
        if status in (401, 403):
            raise EntitlementError(detail)
        if 300 <= status < 400:
            location = self.redact(resp.headers.get("Location", "?"))
            raise BadRequestError(f"{where} -> HTTP {status} redirect to {location} (redirects are not followed)")
        if 400 <= status < 500:
            raise BadRequestError(detail)
        raise ProviderUnavailableError(detail)

    # -- helpers -------------------------------------------------------------------------------------

    def _absolute(self, url_or_path: str) -> str:
        parts = urlsplit(url_or_path)
        if not parts.scheme:
            return f"{self.base_url}/{url_or_path.lstrip('/')}"
        base = urlsplit(self.base_url)
        if (parts.scheme, parts.netloc) != (base.scheme, base.netloc):
            raise BadRequestError(
                f"{self.provider}: refusing to send credentials to {parts.scheme}://{parts.netloc} "
                f"(base URL is {base.scheme}://{base.netloc})")
        return url_or_path

    def _prepare(self, url: str, params: Mapping[str, Any]) -> str:
        """`url` with `params` encoded into its query, exactly as it will be sent."""
        try:
            return requests.Request("GET", url, params=dict(params)).prepare().url or url
        except requests.exceptions.RequestException as exc:
            raise BadRequestError(f"{self.provider}: cannot build a request for {self.redact(url)}: "
                                  f"{self.redact(f'{type(exc).__name__}: {exc}')}") from None

    def _snippet(self, resp: Response) -> str:
        text = " ".join(resp.content[: _SNIPPET * 2].decode("utf-8", "replace").split())
        text = self.redact(text)
        return (text[:_SNIPPET] + "...") if len(text) > _SNIPPET else (text or "(empty body)")


__all__ = [
    "REDACTED",
    "Classify",
    "HttpClient",
    "HttpPolicy",
    "HttpResult",
    "HttpStats",
    "Redactor",
    "Response",
    "breaker_state",
    "json_body",
    "parse_json",
    "parse_retry_after",
    "redact_registered",
    "register_secrets",
    "registered_secrets",
    "reset_shared_state",
]
