"""The collector process killed (SIGKILL) and frozen (SIGSTOP), then restarted: every trade is stored once.

`mdpipeline stream --provider alpaca` runs as its own process against a live loopback Alpaca stream
(trades printed every second for six symbols, sent as they happen, none sent while no client is
connected) and the real broker and database. The test kills it, waits, starts it again, freezes it
long enough for the server to drop it as a slow client, lets it go, and stops it with SIGTERM. Then
the Dagster real-time sensor and job process the raw topic, the gap sensor and the gap repair job
backfill the recorded gaps from the loopback Alpaca history (same trades, with later cancels and
corrections), and:

- the gaps cover the time the process was dead and the time it was frozen (recorded from the state the
  killed process had saved in `ops.stream_collectors`, and from its stall), and all are repaired;
- md.ticks holds exactly every trade the exchange printed from the first to the last one sent: as
  streamed outside the repaired windows, as the history says inside them (nothing lost, nothing twice);
- no event id maps to two payloads, no outbox row is left pending, and the credentials appear nowhere:
  not in the database, not in the collector's output, not in the Dagster event log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from confluent_kafka import KafkaException
from pytest_httpserver import HTTPServer

from mdpipeline.distribute.subscriber import end_offsets, read_topic
from mdpipeline.distribute.topics import TICKS, ensure_topics, raw_stream_topic
from mdpipeline.orchestration.assembly import build_definitions
from mdpipeline.orchestration.realtime import raw_stream_sensor, stream_gap_repair_job, stream_gap_sensor
from mdpipeline.orchestration.resources import DatabaseResource, KafkaResource, ProvidersResource
from mdpipeline.providers.http import reset_shared_state
from mdpipeline.stream.collector_state import read_coverage
from mdpipeline.stream.gap_repair import DEFAULT_MARGIN
from mdpipeline_tests.faults.alpaca_stream import KEY_ID, SECRET_KEY, AlpacaStream, alpaca_history, expected_trades
from mdpipeline_tests.faults.invariants import (
    assert_events_consistent,
    assert_no_secret,
    assert_outbox_drained,
    assert_ticks_unique,
)
from mdpipeline_tests.pipeline_helpers import settings_for

pytestmark = pytest.mark.faults

SYMBOLS = ("AAPL", "META", "MSFT", "NVDA", "SPY", "TSLA")  # what gap repair asks Alpaca for (the universe's)


def _wait(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


class Collector:
    """`mdpipeline stream` as a process of its own; its output is kept in a file."""

    def __init__(self, workdir: Path, env: dict[str, str], topic: str) -> None:
        self.workdir, self.env, self.topic = workdir, env, topic
        self.process: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self) -> None:
        self.runs += 1
        log = (self.workdir / f"collector-{self.runs}.log").open("wb")
        cli = Path(sys.executable).with_name("mdpipeline")
        self.process = subprocess.Popen([str(cli), "stream", "--provider", "alpaca", "--symbols", ",".join(SYMBOLS),
                                         "--topic", self.topic], cwd=self.workdir, env=self.env, stdout=log,
                                        stderr=subprocess.STDOUT)

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        os.kill(self.process.pid, sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def output(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("collector-*.log")))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def stream() -> Iterator[AlpacaStream]:
    server = AlpacaStream(live=True, tick=0.2, ping_interval=0.5, ping_timeout=0.5).start()
    try:
        yield server
    finally:
        server.stop()


def _landed(servers: str, topic: str) -> int:
    """Frames on the raw topic so far (0 while its leader is not known yet)."""
    try:
        return end_offsets(servers, topic).get(0, (0, 0))[1]
    except KafkaException:
        return 0


def _process_everything(database_url: str, servers: str, topic: str, instance: dg.DagsterInstance) -> None:
    """Sensor ticks and realtime_ticks runs until the sensor finds nothing new."""
    defs = build_definitions(settings_for(database_url, servers))
    job = defs.get_job_def("realtime_ticks")
    sensor = raw_stream_sensor((topic,), name="crash_raw_stream")
    resources = {"db": DatabaseResource(url=database_url), "kafka": KafkaResource(bootstrap_servers=servers)}
    for _ in range(20):
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            result = sensor(context)
        if isinstance(result, dg.SkipReason):
            return
        for request in result.run_requests or []:
            assert job.execute_in_process(run_config=request.run_config, instance=instance, tags=request.tags).success
    raise AssertionError("the sensor kept finding new ranges")


def _repair_everything(database_url: str, servers: str, history_url: str, instance: dg.DagsterInstance) -> None:
    sensor = stream_gap_sensor(name="crash_gap_sensor")
    resources = {"db": DatabaseResource(url=database_url), "kafka": KafkaResource(bootstrap_servers=servers),
                 "providers": ProvidersResource(base_urls={"alpaca": history_url})}
    with dg.build_sensor_context(instance=instance, resources={"db": resources["db"]}) as context:
        request = sensor(context)
    assert isinstance(request, dg.RunRequest)
    assert stream_gap_repair_job.execute_in_process(resources=resources, instance=instance, tags=request.tags).success


def test_collector_killed_and_frozen_then_restarted_loses_nothing(
    database_url: str, conn: psycopg.Connection, kafka_bootstrap: str, stream: AlpacaStream,
    httpserver: HTTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    record_property: Callable[[str, object], None],
) -> None:
    spec = raw_stream_topic(f"alpaca-{uuid.uuid4().hex[:8]}")
    topic = spec.name
    ensure_topics(kafka_bootstrap, (spec,))
    requests = alpaca_history(httpserver)
    env = {**os.environ, "MDP_DATABASE_URL": database_url, "MDP_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "ALPACA_API_KEY_ID": KEY_ID, "ALPACA_API_SECRET_KEY": SECRET_KEY, "MDP_ALPACA_STREAM_URL": stream.url}
    collector = Collector(tmp_path, env, topic)
    try:
        # 1. A first collector runs, then is killed without a chance to say anything.
        collector.start()
        _wait(lambda: _landed(kafka_bootstrap, topic) >= 10, "frames from the first collector")
        _wait(lambda: (c := read_coverage(conn, topic)) is not None and c.covered_until is not None,
              "the first collector's saved coverage")
        collector.signal(signal.SIGKILL)
        killed_at = datetime.now(UTC)
        assert collector.wait() == -signal.SIGKILL
        time.sleep(3)  # trades printed meanwhile reach nobody

        # 2. A second collector of the same name; frozen for 4 s (the server drops it as a slow client).
        landed = _landed(kafka_bootstrap, topic)
        collector.start()
        restarted_at = datetime.now(UTC)
        _wait(lambda: _landed(kafka_bootstrap, topic) >= landed + 10, "frames from the second collector")
        connections = stream.connections
        collector.signal(signal.SIGSTOP)
        stopped_at = datetime.now(UTC)
        time.sleep(4)
        collector.signal(signal.SIGCONT)
        continued_at = datetime.now(UTC)
        _wait(lambda: stream.connections > connections, "the frozen collector to reconnect")
        landed = _landed(kafka_bootstrap, topic)
        _wait(lambda: _landed(kafka_bootstrap, topic) >= landed + 10, "frames after the reconnect")

        # 3. A clean stop.
        collector.signal(signal.SIGTERM)
        assert collector.wait() == 0, collector.output()
    finally:
        collector.stop()
    sent = stream.trades_sent()

    instance = dg.DagsterInstance.ephemeral()
    _process_everything(database_url, kafka_bootstrap, topic, instance)
    gaps = conn.execute("select disconnected_at, reconnected_at, reason from ops.stream_gaps order by gap_id")\
        .fetchall()
    restart = [g for g in gaps if "collector restarted" in g[2]]
    assert len(restart) == 1
    assert restart[0][0] <= killed_at <= restart[0][1]
    assert restart[0][1] >= restarted_at
    # The freeze, stall or drop is recorded: a gap that ends after the freeze. It may start after the freeze
    # too (frames the kernel buffered while the collector was stopped are read after SIGCONT, and the gap
    # starts at the last frame received); what was lost inside it is checked below, against the repair.
    frozen = [(a, b) for a, b, reason in gaps if "collector restarted" not in reason and b >= continued_at]
    assert frozen, (stopped_at, continued_at, gaps)

    reset_shared_state("alpaca")
    monkeypatch.setenv("ALPACA_API_KEY_ID", KEY_ID)
    monkeypatch.setenv("ALPACA_API_SECRET_KEY", SECRET_KEY)
    monkeypatch.setenv("MDP_ALPACA_STREAM_URL", stream.url)
    _repair_everything(database_url, kafka_bootstrap, httpserver.url_for("/"), instance)
    assert conn.execute("select count(*) from ops.stream_gaps where repair_status = 'repaired'").fetchone() == \
        (len(gaps),)
    assert requests  # the history was asked

    windows = [(a - DEFAULT_MARGIN, b + DEFAULT_MARGIN) for a, b, _ in gaps]
    expected = expected_trades(SYMBOLS, sent[0]["t"], sent[-1]["t"], windows)
    stored = set(conn.execute("select symbol, sequence, price from md.ticks").fetchall())
    first, last = sent[0]["t"][:26], sent[-1]["t"][:26]
    in_range = {t for t in stored if t in expected or _within(conn, t, first, last)}
    assert in_range == expected, (f"missing {len(expected - in_range)}: {sorted(expected - in_range)[:5]}; "
                                  f"unexpected {len(in_range - expected)}: {sorted(in_range - expected)[:5]}")
    assert assert_ticks_unique(conn) >= len(expected)
    counts = [c for (c,) in conn.execute("select repair_counts from ops.stream_gaps order by gap_id")]
    record_property("trades_expected", len(expected))
    record_property("gaps", [f"{(b - a).total_seconds():.1f}s {r.split(':')[0]}" for a, b, r in gaps])
    record_property("restart_gap_starts_before_kill_s", round((killed_at - restart[0][0]).total_seconds(), 2))
    record_property("repaired_inserted", sum(c["inserted"] for c in counts))
    record_property("repaired_duplicates", sum(c["duplicates"] for c in counts))

    events = [e for e in read_topic(kafka_bootstrap, TICKS.name) if e.headers.get("mdp-raw-topic") == topic]
    assert_events_consistent(events)
    assert_outbox_drained(conn, kafka_bootstrap)
    assert_no_secret([KEY_ID, SECRET_KEY], conn=conn, texts=[collector.output()], instance=instance)


def _within(conn: psycopg.Connection, trade: tuple[str, int, float], first: str, last: str) -> bool:
    """True when the stored trade's time lies in [first, last] (repair windows reach a little beyond)."""
    row = conn.execute("select to_char(ts at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US')"
                       " from md.ticks where symbol = %s and sequence = %s", trade[:2]).fetchone()
    assert row is not None
    return first <= row[0] <= last
