"""Hangs become failures: every wait on a peer that stops answering has a limit.

Real peers that stop answering: a PostgreSQL statement that runs long, a lock held by another session,
a transaction left idle, a TCP server that accepts and never speaks the protocol; a broker frozen with
SIGSTOP while an offset is committed; a websocket server that never answers the auth message or goes
quiet; an HTTP server that trickles its body in one byte at a time. Each call must fail (or give up)
within its configured limit, in a worker thread whose join is bounded, so a regression shows as a
failed test instead of a hung suite.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from mdpipeline.devservices import LocalBroker
from mdpipeline.distribute.topics import ensure_topics, raw_stream_topic
from mdpipeline.providers.errors import ProviderUnavailableError
from mdpipeline.providers.http import HttpClient, HttpPolicy, reset_shared_state
from mdpipeline.storage.database import connect
from mdpipeline.stream.collector import Backoff, Timeouts, collect
from mdpipeline.stream.feeds import AlpacaFeed
from mdpipeline.stream.landing import RawLanding
from mdpipeline.stream.offsets import commit_consumer_offset
from mdpipeline_tests.faults.alpaca_stream import KEY_ID, SECRET_KEY, AlpacaStream

pytestmark = pytest.mark.faults


def _bounded(call: Callable[[], Any], limit: float,
             on_hang: Callable[[], object] | None = None) -> tuple[Any, BaseException | None, float]:
    """Run `call` in a thread; (result, exception, seconds). Fails the test when it is still running after `limit`
    (after `on_hang`, which unblocks it so the test's clean-up does not hang too)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = call()
        except BaseException as exc:
            outcome["error"] = exc

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True, name=f"bounded-{call}")
    thread.start()
    thread.join(limit)
    took = time.monotonic() - started
    if thread.is_alive() and on_hang is not None:
        on_hang()
        thread.join(limit)
    assert took < limit, f"still waiting after {limit:g}s: no timeout applied"
    return outcome.get("result"), outcome.get("error"), took


# --- PostgreSQL ----------------------------------------------------------------------------------


def test_a_long_statement_is_cancelled_at_the_statement_timeout(record_property: Callable[[str, object], None],
                                                                database_url: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MDP_PG_STATEMENT_TIMEOUT", "1")
    with connect(database_url) as conn:
        _, error, took = _bounded(lambda: conn.execute("select pg_sleep(8)"), 6, on_hang=conn.cancel_safe)
    assert isinstance(error, psycopg.errors.QueryCanceled)
    assert took < 4
    record_property("seconds_until_failure", round(took, 2))


def test_the_default_statement_timeout_is_generous_and_configurable(database_url: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MDP_PG_STATEMENT_TIMEOUT", raising=False)
    with connect(database_url) as conn:
        assert conn.execute("show statement_timeout").fetchone() == ("1h",)
        assert conn.execute("show lock_timeout").fetchone() == ("10min",)
        assert conn.execute("show idle_in_transaction_session_timeout").fetchone() == ("10min",)
        assert conn.execute("show timezone").fetchone() == ("UTC",)
    monkeypatch.setenv("MDP_PG_STATEMENT_TIMEOUT", "0")
    with connect(database_url) as conn:
        assert conn.execute("show statement_timeout").fetchone() == ("0",)
    monkeypatch.setenv("MDP_PG_STATEMENT_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="MDP_PG_STATEMENT_TIMEOUT"):
        connect(database_url)


def test_a_lock_wait_ends_at_the_lock_timeout(database_url: str, monkeypatch: pytest.MonkeyPatch,
                                              record_property: Callable[[str, object], None]) -> None:
    with connect(database_url) as holder:
        holder.execute("select pg_advisory_lock(4242)")
        monkeypatch.setenv("MDP_PG_LOCK_TIMEOUT", "1")
        with connect(database_url) as waiter:
            def wait_for_lock() -> None:
                with waiter.transaction():
                    waiter.execute("select pg_advisory_xact_lock(4242)")
            _, error, took = _bounded(wait_for_lock, 8, on_hang=waiter.cancel_safe)
    assert isinstance(error, psycopg.errors.LockNotAvailable)
    assert took < 4
    record_property("seconds_until_failure", round(took, 2))


def test_an_idle_transaction_is_ended_and_its_locks_released(database_url: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MDP_PG_IDLE_IN_TRANSACTION_TIMEOUT", "1")
    forgotten = connect(database_url)
    forgotten.execute("begin")
    forgotten.execute("select pg_advisory_xact_lock(4343)")
    time.sleep(2.5)  # the client forgot it: the server ends the session
    monkeypatch.setenv("MDP_PG_LOCK_TIMEOUT", "2")
    with connect(database_url) as other:
        _, error, _ = _bounded(lambda: other.execute("select pg_advisory_lock(4343)"), 6, on_hang=other.cancel_safe)
        assert error is None  # the lock was released with the session
    with pytest.raises(psycopg.Error, match="idle-in-transaction timeout"):
        forgotten.execute("select 1")
    forgotten.close()


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server that accepts connections and never sends a byte (a hung database or proxy)."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        for s in accepted:
            s.close()
        listener.close()


def test_connecting_to_a_server_that_never_answers_fails_at_the_connect_timeout(
    silent_server: int, monkeypatch: pytest.MonkeyPatch, record_property: Callable[[str, object], None],
) -> None:
    monkeypatch.setenv("MDP_PG_CONNECT_TIMEOUT", "2")
    _, error, took = _bounded(lambda: connect(f"postgresql://nobody@127.0.0.1:{silent_server}/x"), 15)
    assert isinstance(error, psycopg.OperationalError)
    assert took < 8  # libpq applies connect_timeout per address and attempt (2 s each here)
    record_property("seconds_until_failure", round(took, 2))


# --- Kafka ---------------------------------------------------------------------------------------


def test_committing_an_offset_to_a_frozen_broker_gives_up_in_time(
    own_broker: LocalBroker, record_property: Callable[[str, object], None],
) -> None:
    servers = own_broker.bootstrap_servers
    topic = raw_stream_topic(f"t-{uuid.uuid4().hex[:8]}")
    ensure_topics(servers, (topic,))
    assert commit_consumer_offset(servers, topic.name, 0, 0, timeout=30)  # the first waits for __consumer_offsets
    pid = own_broker.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        ok, error, took = _bounded(lambda: commit_consumer_offset(servers, topic.name, 0, 1, timeout=2), 15)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert error is None
    assert ok is False
    assert took < 6
    record_property("seconds_until_failure", round(took, 2))


# --- websockets ----------------------------------------------------------------------------------


def _collect_briefly(stream: AlpacaStream, kafka_bootstrap: str, timeouts: Timeouts, seconds: float) -> Any:
    topic = raw_stream_topic(f"alpaca-{uuid.uuid4().hex[:8]}")
    ensure_topics(kafka_bootstrap, (topic,))
    landing = RawLanding(kafka_bootstrap, topic.name, "alpaca")

    async def run() -> Any:
        stop = asyncio.Event()
        feed = AlpacaFeed(KEY_ID, SECRET_KEY, trades=["AAPL"], stream_url=stream.url)
        task = asyncio.ensure_future(collect(feed, landing, stop=stop, backoff=Backoff(0.05, 0.1), timeouts=timeouts))
        await asyncio.sleep(seconds)
        stop.set()
        return await asyncio.wait_for(task, 15)

    stream.start()
    try:
        return asyncio.run(run())
    finally:
        stream.stop()


def test_a_server_that_never_answers_the_handshake_costs_a_reconnect_not_a_hang(kafka_bootstrap: str) -> None:
    stream = AlpacaStream(silent_handshake=True)
    report, error, _ = _bounded(lambda: _collect_briefly(stream, kafka_bootstrap, Timeouts(handshake=1.0), 3.5), 30)
    assert error is None
    assert stream.connections >= 2  # gave up on the silent one and tried again
    assert report.connections == 0


def test_a_connection_that_goes_quiet_is_dropped_at_the_read_timeout(kafka_bootstrap: str) -> None:
    stream = AlpacaStream(scripts=[["[]"]], ping_interval=None)  # subscribed, then nothing at all
    report, error, _ = _bounded(lambda: _collect_briefly(stream, kafka_bootstrap, Timeouts(read=1.0), 3.5), 30)
    assert error is None
    assert report.connections >= 2
    assert any("no message for 1s" in reason for _, _, reason in report.gaps)


# --- HTTP ----------------------------------------------------------------------------------------


def _drip(seconds_per_byte: float, size: int, chunked: bool) -> Callable[[Request], Response]:
    def handler(_: Request) -> Response:
        def body() -> Iterator[bytes]:
            for _ in range(size):
                time.sleep(seconds_per_byte)
                yield b" "
        headers = {} if chunked else {"Content-Length": str(size)}
        return Response(body(), headers=headers, content_type="application/json")
    return handler


@pytest.mark.parametrize("chunked", [False, True])
def test_a_slow_drip_body_fails_at_the_deadline(httpserver: HTTPServer, chunked: bool,
                                                record_property: Callable[[str, object], None]) -> None:
    """One byte every 0.2 s never trips a 1 s read timeout; the whole response must still end at the deadline."""
    reset_shared_state("drip")
    httpserver.expect_request("/slow").respond_with_handler(_drip(0.2, 200, chunked))
    client = HttpClient("drip", httpserver.url_for("/"), HttpPolicy(timeout=1.0, deadline=2.0, max_attempts=1))
    _, error, took = _bounded(lambda: client.get("/slow"), 20)
    assert isinstance(error, ProviderUnavailableError)
    assert "deadline" in str(error)
    assert took < 4  # deadline + at most one read timeout
    record_property("seconds_until_failure", round(took, 2))


def test_the_deadline_defaults_from_the_environment(httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    reset_shared_state("drip")
    monkeypatch.setenv("MDP_HTTP_DEADLINE", "1.5")
    httpserver.expect_request("/slow").respond_with_handler(_drip(0.2, 100, chunked=True))
    client = HttpClient("drip", httpserver.url_for("/"), HttpPolicy(timeout=1.0, max_attempts=1))
    _, error, took = _bounded(lambda: client.get("/slow"), 20)
    assert isinstance(error, ProviderUnavailableError)
    assert took < 3.5
    assert HttpPolicy().response_deadline() == 1.5
    monkeypatch.delenv("MDP_HTTP_DEADLINE")
    assert HttpPolicy().response_deadline() == 300.0


def test_a_slow_body_within_the_deadline_is_complete(httpserver: HTTPServer) -> None:
    reset_shared_state("drip")
    httpserver.expect_request("/slow").respond_with_handler(_drip(0.05, 20, chunked=True))
    client = HttpClient("drip", httpserver.url_for("/"), HttpPolicy(timeout=1.0, deadline=10.0, max_attempts=1))
    assert client.get("/slow").body == b" " * 20
