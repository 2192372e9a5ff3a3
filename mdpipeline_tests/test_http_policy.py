"""The HTTP client's policy over its transport seam, without sockets: a scripted transport answers, the
client's retries, classification, redaction, breaker and shared state are what is tested. (The provider
tests and test_http_client.py talk to real local HTTP servers.)"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlsplit

import pytest

from mdpipeline.providers.breaker import CircuitBreaker
from mdpipeline.providers.errors import (
    CircuitOpenError,
    MalformedPayloadError,
    ProviderUnavailableError,
    RateLimitError,
)
from mdpipeline.providers.http import HttpClient, HttpPolicy
from mdpipeline.providers.provider_state import ProviderStates
from mdpipeline.providers.transport import Response, TransportError

SECRET = "k3y/with+chars="


class ScriptedTransport:
    """Answers GETs from a script (a Response, or a TransportError to raise), recording what was sent."""

    def __init__(self, *script: Response | TransportError) -> None:
        self.script = list(script)
        self.sent: list[tuple[str, dict[str, str]]] = []
        self.closed = False

    def send(self, url: str, headers: Mapping[str, str], *, timeout: float, deadline: float) -> Response:
        self.sent.append((url, dict(headers)))
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, TransportError):
            raise step
        return step

    def close(self) -> None:
        self.closed = True


def client(transport: ScriptedTransport, policy: HttpPolicy | None = None, states: ProviderStates | None = None,
           **kw: object) -> tuple[HttpClient, list[float]]:
    waits: list[float] = []
    made = HttpClient("seam", "https://api.example.test/v1", policy or HttpPolicy(backoff_initial=0.5),
                      sleep=waits.append, transport=transport, states=states or ProviderStates(),
                      **kw)  # type: ignore[arg-type]
    return made, waits


def ok(body: bytes = b'{"ok": true}') -> Response:
    return Response(200, {"Content-Type": "application/json"}, body)


def test_params_and_credentials_are_sent_and_redacted_in_the_result() -> None:
    transport = ScriptedTransport(ok())
    http, _ = client(transport, default_params={"apikey": SECRET}, default_headers={"X-Key": SECRET})
    result = http.get_json("/bars", {"symbol": "AAPL", "skip": None})
    url, headers = transport.sent[0]
    assert dict(parse_qsl(urlsplit(url).query)) == {"apikey": SECRET, "symbol": "AAPL"}
    assert urlsplit(url).path == "/v1/bars"
    assert headers["X-Key"] == SECRET
    assert result.params == {"apikey": "***", "symbol": "AAPL"}
    assert SECRET not in result.url
    assert result.endpoint == "/v1/bars"
    http.close()
    assert transport.closed


def test_transport_failures_become_typed_errors_retried_and_redacted() -> None:
    leak = f"HTTPSConnectionPool: Max retries exceeded with url: /v1/bars?apikey={SECRET}"
    transport = ScriptedTransport(TransportError("connection", leak), TransportError("timeout", "timed out after 10s"),
                                  TransportError("truncated", "IncompleteRead(3 bytes read)"), ok())
    http, waits = client(transport, default_params={"apikey": SECRET})
    assert http.get_json("/bars").json() == {"ok": True}
    assert len(transport.sent) == 4
    assert http.stats.retries == 3
    assert len(waits) == 3

    failing = ScriptedTransport(TransportError("connection", leak))
    http, _ = client(failing, HttpPolicy(max_attempts=2), default_params={"apikey": SECRET})
    with pytest.raises(ProviderUnavailableError) as info:
        http.get_json("/bars")
    assert SECRET not in str(info.value)
    assert "gave up after 2 attempts" in str(info.value)
    assert info.value.__cause__ is None

    cut = ScriptedTransport(TransportError("truncated", "IncompleteRead"))
    http, _ = client(cut, HttpPolicy(max_attempts=1))
    with pytest.raises(MalformedPayloadError, match="truncated in transit") as truncated:
        http.get_json("/bars")
    assert truncated.value.truncated

    slow = ScriptedTransport(TransportError("deadline", "the response was not complete after 5s"))
    http, _ = client(slow, HttpPolicy(max_attempts=1))
    with pytest.raises(ProviderUnavailableError, match="deadline"):
        http.get("/bars")


def test_retry_after_is_waited_and_an_over_long_one_fails_at_once() -> None:
    transport = ScriptedTransport(Response(429, {"Retry-After": "7"}, b"slow down"), ok())
    http, waits = client(transport)
    http.get_json("/bars")
    assert waits == [7.0]
    assert http.stats.throttled_seconds == 7.0
    assert http.stats.rate_limited == 1

    later = (datetime.now(UTC) + timedelta(hours=1)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    http, waits = client(ScriptedTransport(Response(429, {"retry-after": later}, b"")), HttpPolicy(max_retry_after=60))
    with pytest.raises(RateLimitError, match="more than max_retry_after 60s") as info:
        http.get("/bars")
    assert not info.value.retryable
    assert waits == []


def test_breaker_state_is_shared_per_provider_within_one_states_only() -> None:
    states = ProviderStates()
    down = Response(503, {}, b"down")
    policy = HttpPolicy(max_attempts=1, breaker_fail_max=2, breaker_reset_timeout=60)
    first, _ = client(ScriptedTransport(down), policy, states)
    for _ in range(2):
        with pytest.raises(ProviderUnavailableError):
            first.get("/x")
    assert first.breaker_state == "open"
    assert first.stats.breaker_opened == 1
    second, _ = client(ScriptedTransport(ok()), policy, states)
    with pytest.raises(CircuitOpenError, match="after 2 consecutive failures"):
        second.get("/x")
    isolated, _ = client(ScriptedTransport(ok()), policy, ProviderStates())
    assert isolated.get("/x").status == 200


def test_breaker_closed_open_half_open_closed_on_a_clock() -> None:
    now = [datetime(2024, 6, 3, 12, 0, tzinfo=UTC)]
    breaker = CircuitBreaker("clocked", fail_max=2, reset_timeout=30, clock=lambda: now[0])
    assert not breaker.failure("HTTP 503")
    breaker.success()  # an answer resets the count
    assert not breaker.failure("HTTP 503")
    assert breaker.failure("HTTP 502")
    assert breaker.state == "open"
    with pytest.raises(CircuitOpenError, match=r"next trial call allowed at 2024-06-03 12:00:30 UTC \(in 30s\)"):
        breaker.before_call()
    breaker.success()  # a request sent before it opened does not close it
    assert breaker.state == "open"
    now[0] += timedelta(seconds=30)
    assert breaker.state == "half-open"
    breaker.before_call()  # the trial call may go
    assert breaker.failure("HTTP 503")
    assert breaker.state == "open"
    now[0] += timedelta(seconds=31)
    breaker.before_call()
    breaker.success()
    assert breaker.state == "closed"


def test_importing_the_providers_has_no_side_effects() -> None:
    """No log filter attached and no provider state made at import: they come with the first client."""
    code = """
import logging
import mdpipeline.providers, mdpipeline.providers.http
from mdpipeline.providers.provider_state import process_states
assert logging.getLogger("urllib3.connectionpool").filters == [], "filter attached at import"
assert logging.getLogger("mdpipeline.providers").filters == [], "filter attached at import"
assert process_states.cache_info().currsize == 0, "provider states made at import"
from mdpipeline.providers.http import HttpClient, HttpPolicy
HttpClient("p", "http://127.0.0.1:9", HttpPolicy(), secrets=["s3cret"])
assert len(logging.getLogger("urllib3.connectionpool").filters) == 1
assert process_states().breaker_state("p") == "closed"
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
