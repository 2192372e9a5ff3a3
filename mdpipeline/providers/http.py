"""The resilient HTTP client every network provider fetches through.

One `HttpClient` per provider instance; what must be shared by every client of one provider (the
circuit breaker, the token bucket, the daily quota, the concurrency slots) lives in a module-level
registry keyed by the provider *name*, so two assets of one provider in one process respect one limit.
The daily quota and the token bucket go further when the client has a database URL: they are held in
the database (`mdpipeline.providers.limits`), so every process and run shares them.

Per attempt, in this order: breaker check (open -> `CircuitOpenError`, no request), daily quota
(spent -> `RateLimitError`, no request; the provider's own "daily quota spent" answer marks the day
spent for everyone), token bucket wait, concurrency slot, the request, then
classification: the provider's `classify` hook first (it sees every response and may raise a typed
error, e.g. for an HTTP 200 rate-limit body), then the status code (429 -> RateLimitError,
401/403 -> EntitlementError, other 4xx/3xx -> BadRequestError, 5xx -> ProviderUnavailableError).

Retries (tenacity, full-jitter exponential backoff): RateLimitError (waiting Retry-After when given,
unless it exceeds `max_retry_after`), ProviderUnavailableError, and MalformedPayloadError only when the
body was truncated in transit (a complete invalid body comes back the same, so it fails at once).
BadRequestError and EntitlementError are never retried. The breaker (pybreaker) counts each failed
*attempt* that is a transport failure (ProviderUnavailableError or a truncated body); any other
answer from the provider counts as a success, since the source is alive.

Timeouts: `timeout` bounds connecting and each wait for bytes; `deadline` (default $MDP_HTTP_DEADLINE or
300 s) bounds a whole response, body included: a server that trickles its body in never trips the
per-read timeout, so a watchdog interrupts the read at the deadline (ProviderUnavailableError, retried).

Secrets (`secrets=`, default header values, and default params named like credentials) are replaced
by `***` in every URL, message, log line and `HttpResult`; exceptions from `requests` (whose messages
hold the full URL) are never chained, and a log filter redacts them from urllib3's DEBUG request lines.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, urlsplit

import pybreaker
import requests
import tenacity

from mdpipeline.env_numbers import env_number
from mdpipeline.providers.base import ProviderError, RawPayload
from mdpipeline.providers.errors import (
    BadRequestError,
    CircuitOpenError,
    EntitlementError,
    MalformedPayloadError,
    ProviderUnavailableError,
    QuotaStoreError,
    RateLimitError,
)
from mdpipeline.providers.limits import Limits, TokenBucket, limits_for, zone

log = logging.getLogger("mdpipeline.providers")

REDACTED = "***"
# Default params with these names are credentials even when not listed in `secrets=`.
CREDENTIAL_PARAMS = frozenset({"apikey", "api_key", "apiKey", "token", "key", "secret", "access_token"})
USER_AGENT = "mdpipeline/0.1 (+https://github.com/mdpipeline)"
_SNIPPET = 200
DEFAULT_DEADLINE = 300.0  # seconds for a whole response (a slow-drip body never trips the per-read timeout)


@dataclass(frozen=True)
class HttpPolicy:
    """Timeouts, retries, limits and breaker settings of one provider (from the universe file)."""

    timeout: float = 10.0  # seconds to connect, and between bytes when reading (requests semantics)
    deadline: float | None = None  # seconds for a whole response, body included; None: MDP_HTTP_DEADLINE or 300
    max_attempts: int = 5
    backoff_initial: float = 0.5  # tenacity wait_random_exponential multiplier
    backoff_max: float = 30.0
    rate_per_second: float | None = None  # token bucket refill; None = unlimited
    burst: int = 1
    daily_limit: int | None = None  # hard cap per provider day, counted per request (shared via the database)
    quota_timezone: str = "UTC"  # where the provider's day starts (its documented reset), e.g. America/New_York
    max_concurrent: int | None = None
    breaker_fail_max: int = 5
    breaker_reset_timeout: float = 60.0
    max_retry_after: float = 120.0  # honour Retry-After up to this; longer -> RateLimitError at once

    @classmethod
    def from_options(cls, options: Mapping[str, Any], **defaults: Any) -> HttpPolicy:
        """A policy from a provider's universe options (`http:` mapping), over per-provider defaults."""
        given = options.get("http") or {}
        if not isinstance(given, Mapping):
            raise ProviderError(f"provider option 'http' must be a mapping, got {type(given).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(given) - known)
        if unknown:
            raise ProviderError(
                f"unknown http policy option(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**{**defaults, **given})

    def __post_init__(self) -> None:
        zone(self.quota_timezone)

    def response_deadline(self) -> float:
        """Seconds a whole response may take: `deadline`, else $MDP_HTTP_DEADLINE, else 300."""
        if self.deadline is not None:
            return self.deadline
        seconds = env_number("MDP_HTTP_DEADLINE")
        return DEFAULT_DEADLINE if seconds is None else seconds


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

    def to_payload(self, provider: str, dataset: str, request_key: str, session_date: date,
                   session_end: date | None = None) -> RawPayload:
        """This response as a raw payload covering sessions [session_date, session_end] (body untouched)."""
        return RawPayload(
            provider=provider, dataset=dataset, session_date=session_date, session_end=session_end,
            request_key=request_key, endpoint=self.endpoint, params=dict(self.params), body=self.body,
            content_type=self.content_type or "application/octet-stream", status=self.status,
            fetched_at=self.fetched_at)

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


def json_body(response: requests.Response) -> Any | None:
    """The JSON of `response`, or None when it is not JSON (for `classify` hooks)."""
    try:
        return json.loads(response.content)
    except ValueError:
        return None


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or HTTP date); None when absent/invalid."""
    if not value or not value.strip():
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class Redactor:
    """Replaces secret values (raw and URL-encoded) by `***` in text."""

    def __init__(self, secrets: Sequence[str]) -> None:
        forms = {f for s in secrets if s for f in (s, quote(s, safe=""), quote_plus(s))}
        self._forms = sorted(forms, key=len, reverse=True)  # longest first: no partial leftovers
        self.secrets = frozenset(s for s in secrets if s)

    def __call__(self, text: str) -> str:
        for form in self._forms:
            text = text.replace(form, REDACTED)
        return text

    def params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """`params` with secret values replaced (keys kept)."""
        return {k: (REDACTED if str(v) in self.secrets else v) for k, v in params.items()}


class _SecretLogFilter(logging.Filter):
    """Redacts every client's secrets from log records of loggers that print request URLs.

    urllib3 logs each request line (with the query string, hence the API key) at DEBUG; this filter
    sits on that logger so turning DEBUG on never leaks a key.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        self._redact = Redactor(())

    def add(self, secrets: frozenset[str]) -> None:
        with self._lock:
            if not secrets <= self._secrets:
                self._secrets |= secrets
                self._redact = Redactor(sorted(self._secrets))

    def redact(self, text: str) -> str:
        """`text` with every registered secret replaced."""
        return self._redact(text) if self._redact.secrets else text

    def redactor(self) -> Redactor:
        """The current redactor (its `secrets` are every registered secret)."""
        return self._redact

    def filter(self, record: logging.LogRecord) -> bool:
        redact = self._redact
        if redact.secrets:
            message = record.getMessage()
            clean = redact(message)
            if clean != message:
                record.msg, record.args = clean, None
        return True


_LOG_FILTER = _SecretLogFilter()
for _name in ("urllib3.connectionpool", "mdpipeline.providers"):
    logging.getLogger(_name).addFilter(_LOG_FILTER)


def register_secrets(secrets: Sequence[str]) -> None:
    """Add secrets (e.g. a websocket feed's credentials) to those redacted from every filtered logger."""
    _LOG_FILTER.add(frozenset(s for s in secrets if s))


def redact_registered(text: str) -> str:
    """`text` with every registered secret replaced by `***`."""
    return _LOG_FILTER.redact(text)


def registered_secrets() -> frozenset[str]:
    """Every secret registered so far (for filters that must also catch pieces of them)."""
    return _LOG_FILTER.redactor().secrets


def _counts_for_breaker(exc: BaseException) -> bool:
    """Transport failures trip the breaker; any real answer from the provider does not."""
    return isinstance(exc, ProviderUnavailableError) or (
        isinstance(exc, MalformedPayloadError) and exc.truncated)


class _BreakerListener(pybreaker.CircuitBreakerListener):
    """Logs state changes and remembers when the breaker opened and why."""

    def __init__(self, shared: _Shared) -> None:
        self.shared = shared

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        old = old_state.name if old_state is not None else "none"
        if new_state.name == pybreaker.STATE_OPEN:
            self.shared.opened_at = datetime.now(UTC)
            log.warning("%s: circuit breaker %s -> open after %d consecutive failures (last: %s); "
                        "no requests for %.0fs", cb.name, old, cb.fail_max, self.shared.last_failure,
                        cb.reset_timeout)
        else:
            log.info("%s: circuit breaker %s -> %s", cb.name, old, new_state.name)

    def failure(self, cb: pybreaker.CircuitBreaker, exc: BaseException) -> None:
        self.shared.last_failure = str(exc)


class _Shared:
    """What every client of one provider name shares in this process: the breaker, the concurrency slots,
    and the request limits (held in the database when the client has a database URL)."""

    def __init__(self, provider: str, policy: HttpPolicy, database_url: str | None) -> None:
        self.provider = provider
        self.opened_at: datetime | None = None
        self.last_failure = ""
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=policy.breaker_fail_max, reset_timeout=policy.breaker_reset_timeout,
            exclude=[lambda e: not _counts_for_breaker(e)], listeners=[_BreakerListener(self)],
            name=provider, throw_new_error_on_trip=False)
        self.database_url = database_url or None
        self.limits: Limits = limits_for(provider, self.database_url)
        self.max_concurrent: int | None = None
        self.slots: threading.BoundedSemaphore | None = None
        self.configure(policy, database_url)

    def configure(self, policy: HttpPolicy, database_url: str | None) -> None:
        """Apply `policy` (the latest client's wins); a client with a database URL moves the limits there,
        one without leaves them where they are (never back from the database into this process)."""
        self.breaker.fail_max = policy.breaker_fail_max
        self.breaker.reset_timeout = policy.breaker_reset_timeout
        if database_url and database_url != self.database_url:
            self.database_url = database_url
            self.limits = limits_for(self.provider, database_url)
        self.limits.configure(policy.rate_per_second, policy.burst, policy.daily_limit, policy.quota_timezone)
        if policy.max_concurrent != self.max_concurrent:
            self.max_concurrent = policy.max_concurrent
            self.slots = threading.BoundedSemaphore(policy.max_concurrent) if policy.max_concurrent else None

    def reopen_at(self) -> datetime | None:
        """When an open breaker lets the next trial call through; None when it is not open."""
        if self.breaker.current_state != pybreaker.STATE_OPEN:
            return None
        opened = self.opened_at or datetime.now(UTC)
        return opened + timedelta(seconds=self.breaker.reset_timeout)

    def state(self) -> str:
        """closed | open | half-open (an open breaker whose reset timeout passed lets a trial through)."""
        reopen = self.reopen_at()
        if reopen is not None and datetime.now(UTC) >= reopen:
            return pybreaker.STATE_HALF_OPEN
        return str(self.breaker.current_state)

    def check_closed(self) -> None:
        """CircuitOpenError while the breaker is open and its reset timeout has not passed."""
        reopen = self.reopen_at()
        now = datetime.now(UTC)
        if reopen is not None and now < reopen:
            raise CircuitOpenError(
                f"{self.provider}: circuit breaker open after {self.breaker.fail_max} consecutive failures "
                f"(last: {self.last_failure}); no request sent; next trial call allowed at "
                f"{reopen:%Y-%m-%d %H:%M:%S} UTC (in {(reopen - now).total_seconds():.0f}s)")

    def record(self, exc: BaseException | None) -> None:
        """Feed one attempt's outcome to the breaker (outside the request, so requests run in parallel)."""

        def outcome() -> None:
            if exc is not None:
                raise exc

        with contextlib.suppress(ProviderError, pybreaker.CircuitBreakerError):
            self.breaker.call(outcome)

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the provider's concurrent-request slots (if limited)."""
        slots = self.slots
        if slots is None:
            yield
            return
        with slots:
            yield


_REGISTRY: dict[str, _Shared] = {}
_REGISTRY_LOCK = threading.Lock()


def _shared_for(provider: str, policy: HttpPolicy, database_url: str | None) -> _Shared:
    with _REGISTRY_LOCK:
        shared = _REGISTRY.get(provider)
        if shared is None:
            shared = _REGISTRY[provider] = _Shared(provider, policy, database_url)
        else:
            shared.configure(policy, database_url)
        return shared


def breaker_state(provider: str) -> str:
    """State of the breaker of `provider` in this process ("closed" when no client was made yet)."""
    with _REGISTRY_LOCK:
        shared = _REGISTRY.get(provider)
    return shared.state() if shared else pybreaker.STATE_CLOSED


def reset_shared_state(provider: str | None = None) -> None:
    """Forget breakers, buckets and quotas (of one provider, or all) of this process: for tests and
    long-lived workers. Quotas held in the database are not touched: they belong to every process."""
    with _REGISTRY_LOCK:
        if provider is None:
            _REGISTRY.clear()
        else:
            _REGISTRY.pop(provider, None)


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


class HttpClient:
    """GETs against one provider's base URL, with the policy's retries, limits and breaker."""

    def __init__(self, provider: str, base_url: str, policy: HttpPolicy, *, secrets: Sequence[str] = (),
                 default_params: Mapping[str, str] | None = None, default_headers: Mapping[str, str] | None = None,
                 classify: Callable[[requests.Response], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep, verify: bool | str = True,
                 database_url: str | None = None) -> None:
        """`database_url`: where the provider's daily quota and token bucket are held for every process
        (`ops.provider_quota`); None keeps them in this process."""
        if not base_url or urlsplit(base_url).scheme not in ("http", "https"):
            raise ProviderError(f"{provider}: base URL must be http(s)://..., got {base_url!r}")
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self.policy = policy
        self.default_params = dict(default_params or {})
        self.default_headers = {"User-Agent": USER_AGENT, **dict(default_headers or {})}
        implied = [str(v) for k, v in self.default_params.items() if k in CREDENTIAL_PARAMS]
        self.redact = Redactor([*secrets, *implied, *(default_headers or {}).values()])
        _LOG_FILTER.add(self.redact.secrets)
        self.classify = classify
        self.stats = HttpStats()
        self._sleep = sleep
        self._verify = verify
        self._session = requests.Session()
        self._shared = _shared_for(provider, policy, database_url)
        self._backoff = tenacity.wait_random_exponential(multiplier=policy.backoff_initial, max=policy.backoff_max)

    @property
    def breaker_state(self) -> str:
        """closed | open | half-open, shared by every client of this provider."""
        return self._shared.state()

    def get_json(self, path: str, params: Mapping[str, Any] | None = None) -> HttpResult:
        """GET and check the body is JSON (invalid JSON -> MalformedPayloadError); body kept as sent."""
        return self._call(path, params, parse_json=True)

    def get(self, url_or_path: str, params: Mapping[str, Any] | None = None) -> HttpResult:
        """GET raw bytes. An absolute URL (e.g. a next-page link) must be on the base URL's origin."""
        return self._call(url_or_path, params, parse_json=False)

    def close(self) -> None:
        """Close the underlying connection pool."""
        self._session.close()

    # -- retry loop ----------------------------------------------------------------------------------

    def _call(self, url_or_path: str, params: Mapping[str, Any] | None, *, parse_json: bool) -> HttpResult:
        url = self._absolute(url_or_path)
        merged = {**self.default_params, **{k: v for k, v in (params or {}).items() if v is not None}}
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(max(1, self.policy.max_attempts)),
            retry=tenacity.retry_if_exception(self._retryable),
            wait=self._wait,
            sleep=self._sleep,
            before_sleep=self._before_sleep,
            reraise=True,
        )
        try:
            return retrying(self._attempt, url, merged, parse_json)
        except ProviderError as exc:
            attempts = retrying.statistics.get("attempt_number", 1)
            if attempts > 1 and exc.args:
                exc.args = (f"{exc.args[0]} (gave up after {attempts} attempts)", *exc.args[1:])
            raise

    def _retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, RateLimitError):
            return exc.retryable
        if isinstance(exc, MalformedPayloadError):
            return exc.truncated
        return isinstance(exc, ProviderUnavailableError)

    def _wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RateLimitError) and exc.retry_after is not None:
            return exc.retry_after
        return float(self._backoff(state))

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

    def _attempt(self, url: str, params: dict[str, Any], parse_json: bool) -> HttpResult:
        shared = self._shared
        shared.check_closed()
        try:
            shared.limits.take()
        except RateLimitError:
            self.stats.rate_limited += 1
            raise
        wait = shared.limits.reserve()
        if wait > 0:
            self.stats.throttled_seconds += wait
            self._sleep(wait)
        before = shared.breaker.current_state
        with shared.slot():
            self.stats.attempts += 1
            try:
                result = self._send(url, params)
                if parse_json:
                    result.json()
            except ProviderError as exc:
                if isinstance(exc, RateLimitError):
                    self.stats.rate_limited += 1
                    self._cap_retry_after(exc)
                    if exc.daily:
                        self._exhaust_quota()
                shared.record(exc)
                if before != pybreaker.STATE_OPEN and shared.breaker.current_state == pybreaker.STATE_OPEN:
                    self.stats.breaker_opened += 1
                raise
        shared.record(None)
        return result

    def _exhaust_quota(self) -> None:
        """The provider said its daily quota is spent: mark the shared day spent (best effort)."""
        try:
            self._shared.limits.exhaust()
        except QuotaStoreError as err:
            log.warning("%s: could not mark the daily quota as spent: %s", self.provider, err)

    def _cap_retry_after(self, exc: RateLimitError) -> None:
        """A Retry-After beyond the policy's `max_retry_after` is not waited for: fail now, say why."""
        if exc.retry_after is not None and exc.retry_after > self.policy.max_retry_after and exc.retryable:
            exc.retryable = False
            exc.args = (f"{exc.args[0] if exc.args else exc} (asked to wait {exc.retry_after:g}s, more than "
                        f"max_retry_after {self.policy.max_retry_after:g}s)",)

    def _send(self, url: str, params: dict[str, Any]) -> HttpResult:
        try:
            prepared = requests.Request("GET", url, params=params).prepare().url or url
        except requests.exceptions.RequestException as exc:
            raise BadRequestError(f"{self.provider}: cannot build a request for {self.redact(url)}: "
                                  f"{self._reason(exc)}") from None
        shown = self.redact(prepared)
        sent = dict(parse_qsl(urlsplit(prepared).query, keep_blank_values=True))  # as sent, URL query included
        deadline = self.policy.response_deadline()
        watchdog = _Watchdog(deadline)
        try:
            resp = self._session.get(url, params=params, headers=self.default_headers, verify=self._verify,
                                     timeout=(self.policy.timeout, self.policy.timeout), allow_redirects=False,
                                     stream=True)
            try:
                watchdog.watch(resp)
                body = resp.content
            finally:
                watchdog.cancel()
                resp.close()
            if watchdog.fired:
                raise requests.exceptions.ChunkedEncodingError("deadline")
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError) as exc:
            if watchdog.fired:
                raise ProviderUnavailableError(
                    f"{self.provider}: GET {shown}: the response was not complete after {deadline:g}s (deadline; "
                    "a body trickling in never trips the per-read timeout)") from None
            raise MalformedPayloadError(
                f"{self.provider}: GET {shown}: body truncated in transit ({self._reason(exc)})",
                truncated=True) from None
        except requests.exceptions.Timeout:
            raise ProviderUnavailableError(
                f"{self.provider}: GET {shown}: timed out after {self.policy.timeout:g}s") from None
        except requests.exceptions.RequestException as exc:
            if watchdog.fired:
                raise ProviderUnavailableError(
                    f"{self.provider}: GET {shown}: the response was not complete after {deadline:g}s (deadline)") \
                    from None
            raise ProviderUnavailableError(f"{self.provider}: GET {shown}: {self._reason(exc)}") from None
        result = HttpResult(
            url=shown, endpoint=urlsplit(url).path, params=self.redact.params(sent), status=resp.status_code,
            content_type=resp.headers.get("Content-Type", ""), body=body, fetched_at=datetime.now(UTC))
        self._classify(resp, shown)
        return result

    def _classify(self, resp: requests.Response, shown: str) -> None:
        """Provider hook first, then the status code."""
        where = f"{self.provider}: GET {shown}"
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

    def _snippet(self, resp: requests.Response) -> str:
        text = " ".join(resp.content[: _SNIPPET * 2].decode("utf-8", "replace").split())
        text = self.redact(text)
        return (text[:_SNIPPET] + "...") if len(text) > _SNIPPET else (text or "(empty body)")

    def _reason(self, exc: BaseException) -> str:
        return self.redact(f"{type(exc).__name__}: {exc}")


__all__ = [
    "HttpClient",
    "HttpPolicy",
    "HttpResult",
    "HttpStats",
    "Redactor",
    "TokenBucket",
    "breaker_state",
    "json_body",
    "parse_json",
    "parse_retry_after",
    "redact_registered",
    "register_secrets",
    "registered_secrets",
    "reset_shared_state",
]
