"""The resilient HTTP client against a real HTTP server on loopback: retries, limits, breaker, secrets."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import requests
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from mdpipeline.providers.base import ProviderError
from mdpipeline.providers.errors import (
    BadRequestError,
    CircuitOpenError,
    EntitlementError,
    MalformedPayloadError,
    ProviderUnavailableError,
    RateLimitError,
)
from mdpipeline.providers.http import (
    HttpClient,
    HttpPolicy,
    breaker_state,
    json_body,
    parse_retry_after,
    reset_shared_state,
)
from mdpipeline.providers.limits import TokenBucket
from mdpipeline_tests.provider_servers import (
    SleepRecorder,
    closed_port_url,
    json_response,
    raw_response,
    script,
    slow,
    truncated_response,
)

SECRET = "s3cr3t-KEY+/="  # has characters that URL encoding changes
OK = json_response({"ok": True})


@pytest.fixture(autouse=True)
def _fresh_shared_state() -> Iterator[None]:
    reset_shared_state()
    yield
    reset_shared_state()


def make_client(server: HTTPServer, policy: HttpPolicy | None = None, name: str = "testprov",
                **kw: object) -> tuple[HttpClient, SleepRecorder]:
    sleep = SleepRecorder()
    client = HttpClient(name, server.url_for("/"), policy or HttpPolicy(timeout=2.0), sleep=sleep,
                        **kw)  # type: ignore[arg-type]
    return client, sleep


def test_retries_5xx_storm_then_success(httpserver: HTTPServer) -> None:
    s = script(httpserver, "/data", raw_response("oops", 500), raw_response("bad gw", 502),
               raw_response("busy", 503), json_response({"v": 1}))
    client, sleep = make_client(httpserver, HttpPolicy(timeout=2.0, backoff_initial=0.5, backoff_max=4.0))
    result = client.get_json("/data", {"symbol": "AAPL"})
    assert result.json() == {"v": 1}
    assert result.status == 200
    assert s.count == 4
    assert client.stats.attempts == 4
    assert client.stats.retries == 3
    assert len(sleep.waits) == 3
    # full-jitter exponential: attempt n waits uniform(0, min(max, initial * 2**(n-1)))
    assert all(0 <= w <= bound for w, bound in zip(sleep.waits, (0.5, 1.0, 2.0), strict=True))
    assert client.stats.backoff_seconds == pytest.approx(sum(sleep.waits))
    assert client.breaker_state == "closed"


def test_5xx_storm_exhausts_attempts(httpserver: HTTPServer) -> None:
    s = script(httpserver, "/data", raw_response("busy", 503))
    client, sleep = make_client(httpserver, HttpPolicy(timeout=2.0, max_attempts=3, breaker_fail_max=10))
    with pytest.raises(ProviderUnavailableError, match=r"HTTP 503: busy \(gave up after 3 attempts\)"):
        client.get_json("/data")
    assert s.count == 3
    assert len(sleep.waits) == 2


def test_429_retry_after_seconds_is_honoured(httpserver: HTTPServer) -> None:
    s = script(httpserver, "/data", json_response({"error": "slow down"}, 429, {"Retry-After": "7"}), OK)
    client, sleep = make_client(httpserver)
    assert client.get_json("/data").json() == {"ok": True}
    assert sleep.waits == [7.0]
    assert s.count == 2
    assert client.stats.rate_limited == 1
    assert client.stats.throttled_seconds == pytest.approx(7.0)
    assert client.breaker_state == "closed"  # a rate limit is an answer, not an outage


def test_429_retry_after_http_date_is_honoured(httpserver: HTTPServer) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    script(httpserver, "/data", raw_response("", 429, headers={"Retry-After": when}), OK)
    client, sleep = make_client(httpserver)
    client.get_json("/data")
    assert len(sleep.waits) == 1
    assert 27 <= sleep.waits[0] <= 30


def test_429_without_retry_after_backs_off_then_gives_up(httpserver: HTTPServer) -> None:
    s = script(httpserver, "/data", raw_response("Too Many Requests", 429))
    client, sleep = make_client(httpserver, HttpPolicy(timeout=2.0, max_attempts=3))
    with pytest.raises(RateLimitError, match="HTTP 429") as info:
        client.get_json("/data")
    assert info.value.retry_after is None
    assert s.count == 3
    assert len(sleep.waits) == 2
    assert client.stats.rate_limited == 3


def test_retry_after_beyond_policy_fails_at_once(httpserver: HTTPServer) -> None:
    s = script(httpserver, "/data", raw_response("", 429, headers={"Retry-After": "3600"}))
    client, sleep = make_client(httpserver, HttpPolicy(timeout=2.0, max_retry_after=120))
    with pytest.raises(RateLimitError) as info:
        client.get_json("/data")
    assert info.value.retry_after == 3600
    assert not info.value.retryable
    assert "more than max_retry_after" in str(info.value)
    assert s.count == 1
    assert sleep.waits == []


def test_timeout_is_retried_then_reported(httpserver: HTTPServer) -> None:
    s = script(httpserver, "/slow", slow(0.6, OK))
    client, _ = make_client(httpserver, HttpPolicy(timeout=0.2, max_attempts=2))
    started = time.monotonic()
    with pytest.raises(ProviderUnavailableError, match=r"timed out after 0.2s \(gave up after 2 attempts\)"):
        client.get_json("/slow")
    assert time.monotonic() - started < 3
    assert client.stats.attempts == 2
    assert s.count >= 1  # the server may still be sleeping on the second one


def test_timeout_then_success(httpserver: HTTPServer) -> None:
    script(httpserver, "/slow", slow(0.5, OK), OK)
    client, _ = make_client(httpserver, HttpPolicy(timeout=0.2))
    assert client.get_json("/slow").json() == {"ok": True}
    assert client.stats.retries >= 1


def test_breaker_opens_then_half_open_success_closes(httpserver: HTTPServer, caplog: pytest.LogCaptureFixture
                                                     ) -> None:
    caplog.set_level(logging.INFO, logger="mdpipeline.providers")
    s = script(httpserver, "/data", raw_response("down", 503), raw_response("down", 503), raw_response("down", 503),
               OK)
    policy = HttpPolicy(timeout=2.0, max_attempts=1, breaker_fail_max=3, breaker_reset_timeout=2.0)
    client, _ = make_client(httpserver, policy)
    for _ in range(3):
        with pytest.raises(ProviderUnavailableError):
            client.get_json("/data")
    assert client.breaker_state == "open"
    assert client.stats.breaker_opened == 1
    assert breaker_state("testprov") == "open"

    # Open: the call is not made, and the message says why and when it will try again.
    with pytest.raises(CircuitOpenError, match=r"circuit breaker open after 3 consecutive failures") as info:
        client.get_json("/data")
    assert "HTTP 503: down" in str(info.value)
    assert "next trial call allowed at" in str(info.value)
    assert s.count == 3
    # Every client of the same provider shares the breaker.
    other, _ = make_client(httpserver, policy)
    with pytest.raises(CircuitOpenError):
        other.get("/data")
    assert s.count == 3

    time.sleep(2.1)  # a reset timeout long enough that a loaded machine cannot pass it before the checks above
    assert client.breaker_state == "half-open"
    assert client.get_json("/data").json() == {"ok": True}  # the trial call succeeds
    assert client.breaker_state == "closed"
    assert s.count == 4
    messages = [r.getMessage() for r in caplog.records]
    assert any("circuit breaker closed -> open" in m for m in messages)
    assert any("-> half-open" in m for m in messages)
    assert any("half-open -> closed" in m for m in messages)


def test_breaker_half_open_failure_reopens(httpserver: HTTPServer) -> None:
    script(httpserver, "/data", raw_response("down", 500))
    policy = HttpPolicy(timeout=2.0, max_attempts=1, breaker_fail_max=2, breaker_reset_timeout=0.2)
    client, _ = make_client(httpserver, policy)
    for _ in range(2):
        with pytest.raises(ProviderUnavailableError):
            client.get("/data")
    time.sleep(0.25)
    with pytest.raises(ProviderUnavailableError):
        client.get("/data")  # the trial call fails
    assert client.breaker_state == "open"
    with pytest.raises(CircuitOpenError):
        client.get("/data")


def test_breaker_opening_mid_retry_stops_the_retries(httpserver: HTTPServer) -> None:
    s = script(httpserver, "/data", raw_response("down", 502))
    client, _ = make_client(httpserver, HttpPolicy(timeout=2.0, max_attempts=10, breaker_fail_max=3))
    with pytest.raises(CircuitOpenError):
        client.get_json("/data")
    assert s.count == 3


def test_client_errors_are_not_retried_and_do_not_trip_the_breaker(httpserver: HTTPServer) -> None:
    s404 = script(httpserver, "/missing", json_response({"error": "Unknown symbol"}, 404))
    s403 = script(httpserver, "/premium", json_response({"error": "You don't have access to this resource."}, 403))
    s401 = script(httpserver, "/auth", raw_response("Unauthorized", 401))
    client, sleep = make_client(httpserver, HttpPolicy(timeout=2.0, breaker_fail_max=2))
    for _ in range(3):
        with pytest.raises(BadRequestError, match="HTTP 404"):
            client.get_json("/missing")
    with pytest.raises(EntitlementError, match="You don't have access to this resource"):
        client.get_json("/premium")
    with pytest.raises(EntitlementError, match="HTTP 401"):
        client.get_json("/auth")
    assert (s404.count, s403.count, s401.count) == (3, 1, 1)
    assert sleep.waits == []
    assert client.breaker_state == "closed"


def test_redirects_are_not_followed(httpserver: HTTPServer) -> None:
    script(httpserver, "/moved", Response("", status=302, headers={"Location": "http://elsewhere.invalid/x"}))
    client, _ = make_client(httpserver)
    with pytest.raises(BadRequestError, match=r"redirect to http://elsewhere\.invalid/x"):
        client.get("/moved")


def test_invalid_json_fails_without_retry(httpserver: HTTPServer) -> None:
    s = script(httpserver, "/data", raw_response(b"<html>gateway says hi</html>"))
    client, _ = make_client(httpserver)
    with pytest.raises(MalformedPayloadError, match="not valid JSON") as info:
        client.get_json("/data")
    assert not info.value.truncated
    assert s.count == 1
    # get() does not parse: the bytes are handed over as sent, and json() raises the typed error.
    raw = client.get("/data")
    assert raw.body == b"<html>gateway says hi</html>"
    with pytest.raises(MalformedPayloadError):
        raw.json()


def test_empty_body_is_malformed(httpserver: HTTPServer) -> None:
    script(httpserver, "/data", raw_response(b""))
    client, _ = make_client(httpserver)
    with pytest.raises(MalformedPayloadError, match="empty body"):
        client.get_json("/data")


def test_truncated_body_is_retried(httpserver: HTTPServer) -> None:
    s = script(httpserver, "/data", truncated_response(b'{"t": [1, 2, 3'), json_response({"t": [1, 2, 3]}))
    client, _ = make_client(httpserver)
    assert client.get_json("/data").json() == {"t": [1, 2, 3]}
    assert s.count == 2
    assert client.stats.retries == 1


def test_truncated_body_storm_fails_typed(httpserver: HTTPServer) -> None:
    script(httpserver, "/data", truncated_response(b'{"t": [1, 2, 3'))
    client, _ = make_client(httpserver, HttpPolicy(timeout=2.0, max_attempts=2))
    with pytest.raises(MalformedPayloadError, match="truncated in transit") as info:
        client.get_json("/data")
    assert info.value.truncated


def test_daily_limit_refuses_without_calling(httpserver: HTTPServer) -> None:
    s = script(httpserver, "/data", OK)
    client, sleep = make_client(httpserver, HttpPolicy(timeout=2.0, daily_limit=2))
    client.get_json("/data")
    client.get_json("/data")
    with pytest.raises(RateLimitError, match="daily limit of 2 requests reached") as info:
        client.get_json("/data")
    assert not info.value.retryable
    assert s.count == 2
    assert sleep.waits == []
    # The quota is per provider name: a second client of the same provider is refused too.
    other, _ = make_client(httpserver, HttpPolicy(timeout=2.0, daily_limit=2))
    with pytest.raises(RateLimitError):
        other.get("/data")
    assert s.count == 2


def test_token_bucket_spaces_requests(httpserver: HTTPServer) -> None:
    script(httpserver, "/data", OK)
    client, sleep = make_client(httpserver, HttpPolicy(timeout=2.0, rate_per_second=10.0, burst=2))
    for _ in range(4):
        client.get("/data")
    # two from the burst, then one token every 0.1s (reserved in order)
    assert len(sleep.waits) == 2
    assert sleep.waits[0] == pytest.approx(0.1, abs=0.05)
    assert sleep.waits[1] == pytest.approx(0.2, abs=0.07)
    assert client.stats.throttled_seconds == pytest.approx(sum(sleep.waits))


def test_token_bucket_is_thread_safe() -> None:
    now = [0.0]
    bucket = TokenBucket(5.0, burst=1, clock=lambda: now[0])
    waits: list[float] = []
    lock = threading.Lock()

    def take() -> None:
        w = bucket.reserve()
        with lock:
            waits.append(w)

    threads = [threading.Thread(target=take) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(waits) == pytest.approx([i / 5.0 for i in range(20)])


def test_max_concurrent_limits_parallel_requests() -> None:
    server = HTTPServer(threaded=True)
    server.start()
    try:
        active, peak = [0], [0]
        lock = threading.Lock()

        def handler(_: Request) -> Response:
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            time.sleep(0.1)
            with lock:
                active[0] -= 1
            return OK

        server.expect_request("/data").respond_with_handler(handler)
        client = HttpClient("concurrent", server.url_for("/"), HttpPolicy(timeout=5.0, max_concurrent=2))
        threads = [threading.Thread(target=client.get, args=("/data",)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert client.stats.attempts == 6
        assert peak[0] == 2
    finally:
        server.stop()


def test_secrets_never_leave_the_client(httpserver: HTTPServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    seen = script(httpserver, "/query", OK, query={"function": "X"})
    echo = script(httpserver, "/echo", raw_response(f"invalid key {SECRET} for this call", 400))
    down = script(httpserver, "/down", raw_response(f"upstream {SECRET} down", 503))
    client, _ = make_client(httpserver, HttpPolicy(timeout=2.0, max_attempts=2),
                            default_params={"apikey": SECRET}, default_headers={"X-Token": SECRET})
    result = client.get_json("/query", {"function": "X", "symbol": "AAPL"})
    assert seen.args()["apikey"] == SECRET  # the server does get the key...
    assert seen.requests[-1].headers["X-Token"] == SECRET
    assert result.params == {"apikey": "***", "function": "X", "symbol": "AAPL"}  # ...the result does not
    assert SECRET not in result.url
    assert "apikey=***" in result.url
    assert result.endpoint == "/query"

    errors: list[str] = []
    for path, kind in (("/echo", BadRequestError), ("/down", ProviderUnavailableError)):
        with pytest.raises(kind) as info:
            client.get_json(path)
        errors.append(str(info.value))
        assert info.value.__cause__ is None
    refused = HttpClient("refused", closed_port_url(), HttpPolicy(timeout=1.0, max_attempts=1),
                         default_params={"apikey": SECRET})
    with pytest.raises(ProviderUnavailableError) as info:
        refused.get_json("/query", {"symbol": "AAPL"})
    errors.append(str(info.value))
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__
    assert (echo.count, down.count) == (1, 2)
    ours = [r.getMessage() for r in caplog.records if not r.name.startswith("werkzeug")]  # not the test server's
    assert any("urllib3" in r.name for r in caplog.records)  # DEBUG request lines were logged, redacted
    for text in [*errors, *ours]:
        for form in (SECRET, requests.utils.quote(SECRET, safe="")):
            assert form not in text
    assert "apikey=***" in errors[2]


def test_secrets_passed_explicitly_are_redacted(httpserver: HTTPServer) -> None:
    script(httpserver, "/a", raw_response("denied", 403))
    client, _ = make_client(httpserver, default_params={"auth": "tok-123"}, secrets=["tok-123"])
    with pytest.raises(EntitlementError) as info:
        client.get_json("/a")
    assert "tok-123" not in str(info.value)
    assert "auth=***" in str(info.value)


def test_classify_hook_turns_200_bodies_into_typed_errors(httpserver: HTTPServer) -> None:
    note = {"Note": "Thank you for using Alpha Vantage! Our standard API call frequency is 5 calls per minute."}
    s = script(httpserver, "/query", json_response(note), json_response({"data": 1}))

    def classify(resp: requests.Response) -> None:
        body = json_body(resp)
        if isinstance(body, dict) and "Note" in body:
            raise RateLimitError(body["Note"], retry_after=12.0)

    client, sleep = make_client(httpserver, classify=classify)
    assert client.get_json("/query").json() == {"data": 1}
    assert sleep.waits == [12.0]
    assert s.count == 2


def test_absolute_urls_must_stay_on_the_base_origin(httpserver: HTTPServer) -> None:
    s = script(httpserver, "/v2/next", OK)
    client, _ = make_client(httpserver, default_params={"apiKey": SECRET})
    result = client.get(httpserver.url_for("/v2/next") + "?cursor=abc")
    assert result.status == 200
    assert result.params == {"cursor": "abc", "apiKey": "***"}
    assert s.args() == {"cursor": "abc", "apiKey": SECRET}
    with pytest.raises(BadRequestError, match="refusing to send credentials"):
        client.get("https://evil.example/v2/next?cursor=abc")


def test_base_url_keeps_its_path_prefix(httpserver: HTTPServer) -> None:
    s = script(httpserver, "/v1/api/iserver/history", OK)
    client = HttpClient("prefixed", httpserver.url_for("/v1/api/"), HttpPolicy())
    assert client.get_json("iserver/history").endpoint == "/v1/api/iserver/history"
    assert s.count == 1


def test_parse_retry_after() -> None:
    # HTTP dates are read by urllib3 against the clock (whole seconds): a date 30 s ahead, and one past.
    ahead = format_datetime((datetime.now(UTC) + timedelta(seconds=30)).replace(microsecond=0), usegmt=True)
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after(ahead) == pytest.approx(30.0, abs=1.5)
    assert parse_retry_after("Mon, 03 Jun 2024 11:00:00 GMT") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_policy_from_options() -> None:
    policy = HttpPolicy.from_options({"http": {"rate_per_second": 0.5, "daily_limit": 25}}, daily_limit=500, burst=3)
    assert (policy.rate_per_second, policy.daily_limit, policy.burst) == (0.5, 25, 3)
    with pytest.raises(ProviderError, match="unknown http policy option"):
        HttpPolicy.from_options({"http": {"rate": 1}})
