"""Gap repair against a misbehaving provider: 503 storms, 429 with Retry-After, truncated and slow-drip bodies.

A recorded stream gap (landed as a marker, processed by the real-time job) is repaired by the Dagster
`stream_gap_repair` job from a loopback Alpaca history server that first misbehaves. Per case:

- a 503 storm longer than the client's attempts fails the run; the gap stays open with the error (without
  the credentials) and the next run, once the provider is back, repairs it;
- a 429 with `Retry-After: 1` is waited out, a truncated body and a body that trickles in past the
  deadline are retried: the first run repairs the gap;
- afterwards md.ticks holds exactly the trades of the interval (history inside the repair window,
  stream outside), once each; the outbox is drained; the credentials are nowhere in the database, the
  logs or the Dagster event log.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import dagster as dg
import psycopg
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from mdpipeline.distribute.topics import ensure_topics, raw_stream_topic
from mdpipeline.orchestration.realtime import stream_gap_repair_job
from mdpipeline.orchestration.resources import DatabaseResource, KafkaResource, ProvidersResource
from mdpipeline.providers.http import reset_shared_state
from mdpipeline.settings import DEFAULT_UNIVERSE
from mdpipeline.stream.gap_repair import DEFAULT_MARGIN
from mdpipeline.stream.landing import RawLanding
from mdpipeline.stream.process import process_range
from mdpipeline.stream.synthetic import history_frames, synthetic_history
from mdpipeline.universe import load_universe
from mdpipeline_tests.faults.alpaca_stream import KEY_ID, SECRET_KEY, alpaca_history, expected_trades, trade_time
from mdpipeline_tests.faults.invariants import assert_no_secret, assert_outbox_drained, assert_ticks_unique

pytestmark = pytest.mark.faults

SYMBOLS = ("AAPL", "META", "MSFT", "NVDA", "SPY", "TSLA")
BEGIN = datetime(2024, 6, 10, 14, 30, 0, tzinfo=UTC)
DISCONNECTED, RECONNECTED = BEGIN + timedelta(seconds=20), BEGIN + timedelta(seconds=30)
END = BEGIN + timedelta(seconds=50)
Answer = Callable[[Request], Response]


def _status(code: int, headers: dict[str, str] | None = None) -> Answer:
    return lambda _: Response('{"message": "unavailable"}', status=code, headers=headers or {},
                              content_type="application/json")


def _truncated(_: Request) -> Response:
    response = Response('{"trades": {"AAPL": [', content_type="application/json")
    response.headers["Content-Length"] = "500"
    return response


def _drip(_: Request) -> Response:
    def body() -> Iterator[bytes]:
        for _ in range(100):
            time.sleep(0.1)
            yield b" "
    return Response(body(), content_type="application/json")


CASES: dict[str, tuple[list[Answer], int]] = {  # answers before the data; runs that fail first
    "503_storm": ([_status(503)] * 5, 1),
    "429_retry_after": ([_status(429, {"Retry-After": "1"})], 0),
    "truncated_body": ([_truncated], 0),
    "slow_drip_body": ([_drip, _drip], 0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_gap_repair_through_a_misbehaving_provider(
    case: str, database_url: str, conn: psycopg.Connection, kafka_bootstrap: str, httpserver: HTTPServer,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    record_property: Callable[[str, object], None],
) -> None:
    faults, failing_runs = CASES[case]
    monkeypatch.setenv("ALPACA_API_KEY_ID", KEY_ID)
    monkeypatch.setenv("ALPACA_API_SECRET_KEY", SECRET_KEY)
    monkeypatch.setenv("MDP_HTTP_DEADLINE", "1.5")
    monkeypatch.delenv("MDP_ALPACA_STREAM_URL", raising=False)
    reset_shared_state("alpaca")
    served = alpaca_history(httpserver, faults=faults)

    # The stream delivered everything but [DISCONNECTED, RECONNECTED], then a gap marker was landed.
    streamed = synthetic_history(SYMBOLS, BEGIN, END, view="stream")
    before = [t for t in streamed if trade_time(t["t"]) < DISCONNECTED]
    after = [t for t in streamed if trade_time(t["t"]) > RECONNECTED]
    topic = raw_stream_topic(f"alpaca-{uuid.uuid4().hex[:8]}")
    ensure_topics(kafka_bootstrap, (topic,))
    landing = RawLanding(kafka_bootstrap, topic.name, "alpaca")
    frames = history_frames(before) + history_frames(after)
    for frame in history_frames(before):
        landing.land(frame)
    landing.gap(DISCONNECTED, RECONNECTED, "ConnectionClosedError: no close frame received")
    for frame in history_frames(after):
        landing.land(frame)
    assert landing.flush() == 0
    process_range(conn, kafka_bootstrap, topic=topic.name, partition=0, first=0, last=len(frames),
                  symbology=load_universe(DEFAULT_UNIVERSE).symbology, run_id="stream")

    instance = dg.DagsterInstance.ephemeral()
    resources = {"db": DatabaseResource(url=database_url), "kafka": KafkaResource(bootstrap_servers=kafka_bootstrap),
                 "providers": ProvidersResource(base_urls={"alpaca": httpserver.url_for("/")})}
    outcomes = []
    for _ in range(failing_runs + 1):
        reset_shared_state("alpaca")  # each run is a process of its own in a deployment: a fresh breaker
        started = time.monotonic()
        result = stream_gap_repair_job.execute_in_process(resources=resources, instance=instance,
                                                          raise_on_error=False)
        outcomes.append((result.success, time.monotonic() - started))
        if not result.success:
            status, note = conn.execute(  # type: ignore[misc]
                "select repair_status, repair_note from ops.stream_gaps").fetchone()
            assert status is None  # still open: retried by the next run
            assert "503" in note
    assert [ok for ok, _ in outcomes] == [False] * failing_runs + [True]
    assert all(took < 60 for _, took in outcomes)
    if case == "429_retry_after":
        assert outcomes[-1][1] >= 1.0  # waited as asked
    assert served  # the data was fetched in the end
    record_property("runs", [f"{'ok' if ok else 'failed'} {took:.1f}s" for ok, took in outcomes])

    assert conn.execute("select repair_status from ops.stream_gaps").fetchone() == ("repaired",)
    window = [(DISCONNECTED - DEFAULT_MARGIN, RECONNECTED + DEFAULT_MARGIN)]
    expected = expected_trades(SYMBOLS, streamed[0]["t"], streamed[-1]["t"], window)
    stored = set(conn.execute("select symbol, sequence, price from md.ticks").fetchall())
    assert stored == expected
    assert assert_ticks_unique(conn) == len(expected)
    assert_outbox_drained(conn, kafka_bootstrap)
    assert_no_secret([KEY_ID, SECRET_KEY], conn=conn, texts=[caplog.text], instance=instance)
