"""Gap repair: a stream gap is backfilled from the provider's REST history and reconciled with md.ticks.

Real database and broker; Alpaca's historical trades API is a pytest-httpserver loopback server speaking
its documented format (`{"trades": {symbol: [...]}, "next_page_token"}`), with two pages, a trade the
stream already delivered, a correction, a cancel, an `incorrect` trade never stored and an invalid one.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import polars as pl
import psycopg
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from mdpipeline.distribute.subscriber import read_topic
from mdpipeline.distribute.topics import TICKS, TopicSpec, ensure_topics
from mdpipeline.orchestration.realtime import stream_gap_repair_job, stream_gap_sensor
from mdpipeline.orchestration.resources import DatabaseResource, KafkaResource, ProvidersResource
from mdpipeline.providers.http import reset_shared_state
from mdpipeline.settings import DEFAULT_UNIVERSE
from mdpipeline.stream.gap_repair import AlpacaTrades, SyntheticTrades, open_gaps, repair_gaps
from mdpipeline.stream.landing import RawLanding
from mdpipeline.stream.process import process_range
from mdpipeline.stream.synthetic import HISTORY_CANCEL_EVERY, HISTORY_CORRECT_EVERY, history_frames, synthetic_history
from mdpipeline.universe import load_universe
from mdpipeline_tests.test_events_schema import schema_for

UNIVERSE = load_universe(DEFAULT_UNIVERSE)
DISCONNECTED = datetime(2024, 6, 10, 14, 30, 10, tzinfo=UTC)
RECONNECTED = datetime(2024, 6, 10, 14, 30, 20, tzinfo=UTC)


def _trade(i: int, t: str, p: float, s: int = 100, **extra: Any) -> dict[str, Any]:
    return {"t": f"2024-06-10T14:30:{t}Z", "x": "V", "p": p, "s": s, "c": ["@"], "i": i, "z": "C", **extra}


# What the stream delivered before the disconnect and after the reconnect (Alpaca stream frames).
STREAMED = {
    "AAPL": [_trade(1, "05", 190.00), _trade(2, "09.5", 190.05, 50), _trade(3, "09.8", 190.07, 20),
             _trade(9, "21", 190.50, 5)],
    "MSFT": [_trade(51, "09", 400.00, 10)],
}
# Alpaca's historical answer for the gap (+- 2 s), in two pages (sorted by symbol, then time).
PAGES = {
    None: {"trades": {"AAPL": [_trade(2, "09.5", 190.05, 50), _trade(3, "09.8", 190.07, 20, u="canceled"),
                               _trade(4, "12.123456789", 190.10, 30), _trade(5, "13", 0.0, 10)]},
           "next_page_token": "QUFQTHwyMDI0"},
    "QUFQTHwyMDI0": {"trades": {"AAPL": [_trade(6, "15", 190.20, 40), _trade(7, "16", 190.90, 1, u="incorrect"),
                                         _trade(9, "21", 190.50, 5)],
                                "MSFT": [_trade(51, "09", 400.10, 10, u="corrected"), _trade(52, "18", 400.20, 7)]},
                     "next_page_token": None},
}
EXPECTED_AFTER = {("AAPL", 1, 190.00), ("AAPL", 2, 190.05), ("AAPL", 4, 190.10), ("AAPL", 6, 190.20),
                  ("AAPL", 9, 190.50), ("MSFT", 51, 400.10), ("MSFT", 52, 400.20)}
EXPECTED_COUNTS = {"fetched": 9, "inserted": 3, "duplicates": 2, "corrected": 1, "cancelled": 1,
                   "already_absent": 1, "quarantined": 1}


def _ticks(conn: psycopg.Connection) -> set[tuple[str, int, float]]:
    return set(conn.execute("select symbol, sequence, price from md.ticks").fetchall())  # type: ignore[arg-type]


def _full_ticks(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute("select symbol, sequence, ts, price, size, exchange, conditions, run_id from md.ticks"
                        " order by symbol, sequence").fetchall()


def _land_and_process(conn: psycopg.Connection, kafka: str, provider: str, before: list[str], after: list[str],
                      disconnected: datetime, reconnected: datetime) -> str:
    topic = TopicSpec(f"raw.stream.{provider}-{uuid.uuid4().hex[:8]}.v1", partitions=1)
    ensure_topics(kafka, (topic,))
    landing = RawLanding(kafka, topic.name, provider)
    for frame in before:
        landing.land(frame)
    landing.gap(disconnected, reconnected, "ConnectionClosedError: no close frame received")
    for frame in after:
        landing.land(frame)
    assert landing.flush() == 0
    last = len(before) + len(after)
    report = process_range(conn, kafka, topic=topic.name, partition=0, first=0, last=last,
                           symbology=UNIVERSE.symbology, run_id="stream-run")
    assert report.applied
    assert report.gaps == 1
    return topic.name


@pytest.fixture
def alpaca_history(httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, str]]:
    """The loopback Alpaca historical trades endpoint; returns the requests it received."""
    monkeypatch.setenv("ALPACA_API_KEY_ID", "key-id")
    monkeypatch.setenv("ALPACA_API_SECRET_KEY", "secret-key")
    monkeypatch.delenv("MDP_ALPACA_STREAM_URL", raising=False)
    monkeypatch.delenv("MDP_ALPACA_BASE_URL", raising=False)
    reset_shared_state("alpaca")
    seen: list[dict[str, str]] = []

    def handler(request: Request) -> Response:
        if request.headers.get("APCA-API-KEY-ID") != "key-id" or \
                request.headers.get("APCA-API-SECRET-KEY") != "secret-key":
            return Response(json.dumps({"message": "forbidden"}), status=403, content_type="application/json")
        seen.append(dict(request.args))
        page = PAGES.get(request.args.get("page_token"))
        if page is None:
            return Response(json.dumps({"message": "invalid page token"}), status=400,
                            content_type="application/json")
        return Response(json.dumps(page), content_type="application/json")

    httpserver.expect_request("/v2/stocks/trades", method="GET").respond_with_handler(handler)
    return seen


def test_alpaca_gap_is_backfilled_reconciled_and_published_once(
    database_url: str, conn: psycopg.Connection, kafka_bootstrap: str, httpserver: HTTPServer,
    alpaca_history: list[dict[str, str]],
) -> None:
    frames = {s: json.dumps([{"T": "t", "S": s, **t} for t in trades]) for s, trades in STREAMED.items()}
    before = [json.dumps([{"T": "t", "S": "AAPL", **t} for t in STREAMED["AAPL"][:3]]), frames["MSFT"]]
    after = [json.dumps([{"T": "t", "S": "AAPL", **STREAMED["AAPL"][3]}])]
    topic = _land_and_process(conn, kafka_bootstrap, "alpaca", before, after, DISCONNECTED, RECONNECTED)
    assert _ticks(conn) == {("AAPL", 1, 190.00), ("AAPL", 2, 190.05), ("AAPL", 3, 190.07), ("AAPL", 9, 190.50),
                            ("MSFT", 51, 400.00)}
    gap_id = conn.execute("select gap_id from ops.stream_gaps").fetchone()[0]  # type: ignore[index]

    resources = {"db": DatabaseResource(url=database_url), "kafka": KafkaResource(bootstrap_servers=kafka_bootstrap),
                 "providers": ProvidersResource(base_urls={"alpaca": httpserver.url_for("/")})}
    instance = dg.DagsterInstance.ephemeral()
    result = stream_gap_repair_job.execute_in_process(resources=resources, instance=instance)
    assert result.success

    # Two pages requested, with the documented parameters, over the gap +- 2 s.
    common = {"symbols": "AAPL,META,MSFT,NVDA,SPY,TSLA", "start": "2024-06-10T14:30:08.000000Z",
              "end": "2024-06-10T14:30:22.000000Z", "limit": "10000", "feed": "iex", "sort": "asc"}
    assert alpaca_history == [common, {**common, "page_token": "QUFQTHwyMDI0"}]

    assert _ticks(conn) == EXPECTED_AFTER
    ns_trade = conn.execute("select ts from md.ticks where sequence = 4").fetchone()
    assert ns_trade == (datetime(2024, 6, 10, 14, 30, 12, 123456, tzinfo=UTC),)
    status, repaired_at, counts, run_id = conn.execute(  # type: ignore[misc]
        "select repair_status, repaired_at, repair_counts, repair_run_id from ops.stream_gaps").fetchone()
    assert (status, counts, run_id) == ("repaired", EXPECTED_COUNTS, result.run_id)
    assert repaired_at is not None
    assert conn.execute("select symbol, stage, check_name from quality.quarantine").fetchall() == [
        ("AAPL", "gap_repair", "value_range")]

    # md.ticks.v1: the repair's events, valid against the documented schema, all relayed.
    events = [json.loads(e.value) for e in read_topic(kafka_bootstrap, TICKS.name)
              if e.headers.get("mdp-gap-id") == str(gap_id) and e.headers.get("mdp-raw-topic") == topic]
    validator = schema_for(TICKS.name)
    for event in events:
        validator.validate(event)
    assert sorted((e["data"]["action"], e["data"]["sequence"], e["data"]["price"], e["data"]["corrects"])
                  for e in events) == [
        ("cancel", 3, 190.07, None), ("cancel", 51, 400.00, None),
        ("new", 4, 190.10, None), ("new", 6, 190.20, None), ("new", 51, 400.10, 51), ("new", 52, 400.20, None)]
    assert next(e["data"]["ts"] for e in events if e["data"]["sequence"] == 4) == "2024-06-10T14:30:12.123456789Z"
    outbox = conn.execute("select count(*), count(published_at) from ops.outbox_events").fetchone()
    assert outbox is not None
    assert outbox[0] == outbox[1]

    # Re-running changes nothing: the gap is closed, nothing is fetched, written or announced.
    rows = _full_ticks(conn)
    again = stream_gap_repair_job.execute_in_process(resources=resources, instance=instance)
    assert again.success
    assert len(alpaca_history) == 2
    assert _full_ticks(conn) == rows
    assert conn.execute("select count(*) from ops.outbox_events").fetchone() == (outbox[0],)

    # Even re-reconciling the same interval (gap reopened by hand) finds only duplicates.
    conn.execute("update ops.stream_gaps set repair_status = null, repaired_at = null")
    report = repair_gaps(conn, None, sources={"alpaca": AlpacaTrades.from_env(base_url=httpserver.url_for("/"))},
                         symbology=UNIVERSE.symbology, run_id="again")
    assert [r.counts for r in report.repairs] == [{
        "fetched": 9, "inserted": 0, "duplicates": 6, "corrected": 0, "cancelled": 0, "already_absent": 2,
        "quarantined": 1, "events": 0}]
    assert _full_ticks(conn) == rows
    assert conn.execute("select count(*) from ops.outbox_events").fetchone() == (outbox[0],)


def test_synthetic_gap_is_regenerated_deterministically(conn: psycopg.Connection, kafka_bootstrap: str) -> None:
    symbols = ["AAPL", "MSFT", "NVDA"]
    base = 1_718_029_800  # 2024-06-10T14:30:00Z
    k0 = -(-(base + 10) // HISTORY_CANCEL_EVERY) * HISTORY_CANCEL_EVERY  # a second whose trades get canceled
    k1 = -(-(k0 + 61) // HISTORY_CORRECT_EVERY) * HISTORY_CORRECT_EVERY  # a second whose trades get corrected
    assert k0 % HISTORY_CORRECT_EVERY
    assert k1 % HISTORY_CANCEL_EVERY

    def at(seconds: float) -> datetime:
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)

    disconnected, reconnected = at(k0 + 1.5), at(k1 - 0.5)  # canceled trades streamed before, corrected after
    streamed = synthetic_history(symbols, at(base), at(k1 + 30), view="stream")
    before = [t for t in streamed if t["t"] < disconnected.strftime("%Y-%m-%dT%H:%M:%S.%f")]
    after = [t for t in streamed if t["t"] > reconnected.strftime("%Y-%m-%dT%H:%M:%S.%f")]
    _land_and_process(conn, kafka_bootstrap, "synthetic", history_frames(before), history_frames(after),
                      disconnected, reconnected)

    report = repair_gaps(conn, kafka_bootstrap, sources={"synthetic": SyntheticTrades(seed=7)},
                         symbology=UNIVERSE.symbology, run_id="repair", symbols={"synthetic": symbols})
    [repair] = report.repairs
    assert repair.status == "repaired"

    def key(t: dict[str, Any]) -> tuple[str, int, float, int]:
        return t["S"], t["i"], t["p"], t["s"]

    window_start, window_end = disconnected - timedelta(seconds=2), reconnected + timedelta(seconds=2)
    rest = synthetic_history(symbols, window_start, window_end, view="rest")
    outside = [t for t in before + after if (t["i"], t["S"]) not in {(r["i"], r["S"]) for r in rest}]
    expected = {key(t) for t in outside} | {key(t) for t in rest if t.get("u") != "canceled"}
    stored = set(conn.execute("select symbol, sequence, price, size::int from md.ticks").fetchall())
    assert stored == expected
    overlap = [t for t in before + after if window_start <= datetime.fromisoformat(t["t"][:26] + "+00:00")]
    overlap = [t for t in overlap if datetime.fromisoformat(t["t"][:26] + "+00:00") <= window_end]
    assert repair.counts["cancelled"] == 3
    assert repair.counts["corrected"] == 3
    assert repair.counts["duplicates"] == len(overlap) - 6 > 0
    assert repair.counts["inserted"] == len(expected) - len(before) - len(after) + 3
    assert report.published == repair.counts["events"] > 0

    rows = conn.execute("select * from md.ticks order by symbol, sequence").fetchall()
    outbox = conn.execute("select count(*) from ops.outbox_events").fetchone()
    assert repair_gaps(conn, kafka_bootstrap, sources={"synthetic": SyntheticTrades(seed=7)},
                       symbology=UNIVERSE.symbology, run_id="again").repairs == []
    assert conn.execute("select * from md.ticks order by symbol, sequence").fetchall() == rows
    assert conn.execute("select count(*) from ops.outbox_events").fetchone() == outbox


def _insert_gap(conn: psycopg.Connection, provider: str, offset: int = 7) -> int:
    row = conn.execute(
        "insert into ops.stream_gaps (provider, topic, raw_offset, disconnected_at, reconnected_at, reason)"
        " values (%s, %s, %s, %s, %s, 'closed by server') returning gap_id",
        (provider, f"raw.stream.{provider}.v1", offset, DISCONNECTED, RECONNECTED)).fetchone()
    assert row is not None
    return int(row[0])


def test_finnhub_gaps_are_marked_unrepairable_not_closed(database_url: str, conn: psycopg.Connection) -> None:
    gap_id = _insert_gap(conn, "finnhub")
    sensor = stream_gap_sensor(name="test_gap_sensor")
    instance = dg.DagsterInstance.ephemeral()
    with dg.build_sensor_context(instance=instance, resources={"db": DatabaseResource(url=database_url)}) as ctx:
        request = sensor(ctx)
    assert isinstance(request, dg.RunRequest)
    assert request.run_key == f"gaps:{gap_id}"

    report = repair_gaps(conn, None, sources={}, symbology=UNIVERSE.symbology, run_id="r1")
    assert [(r.gap_id, r.status) for r in report.repairs] == [(gap_id, "unrepairable")]
    status, note, repaired_at = conn.execute(  # type: ignore[misc]
        "select repair_status, repair_note, repaired_at from ops.stream_gaps").fetchone()
    assert status == "unrepairable"
    assert "free tier" in note
    assert repaired_at is None
    assert open_gaps(conn) == []
    assert repair_gaps(conn, None, sources={}, symbology=UNIVERSE.symbology, run_id="r2").repairs == []
    with dg.build_sensor_context(instance=instance, resources={"db": DatabaseResource(url=database_url)}) as ctx:
        assert isinstance(sensor(ctx), dg.SkipReason)


def test_failed_fetch_leaves_the_gap_open(conn: psycopg.Connection) -> None:
    gap_id = _insert_gap(conn, "alpaca")
    source = AlpacaTrades(key_id="", secret_key="", base_url="http://127.0.0.1:9")
    report = repair_gaps(conn, None, sources={"alpaca": source}, symbology=UNIVERSE.symbology, run_id="r1")
    assert [(r.gap_id, r.status) for r in report.repairs] == [(gap_id, "failed")]
    assert [g.gap_id for g in open_gaps(conn)] == [gap_id]
    note = conn.execute("select repair_note from ops.stream_gaps").fetchone()
    assert note is not None
    assert "ALPACA_API_KEY_ID" in note[0]
    assert conn.execute("select count(*) from md.ticks").fetchone() == (0,)


class _Renumbering:
    """A source without stable trade ids: the same trades come back under new ids on every call."""

    provider = "synthetic"
    identity = "content"

    def __init__(self) -> None:
        self.calls = 0

    def trades(self, symbols: list[str], start: datetime, end: datetime) -> pl.DataFrame:
        self.calls += 1
        frame = SyntheticTrades().trades(symbols, start, end).filter(pl.col("update").is_null())
        return frame.with_columns(pl.col("sequence") + self.calls * 10**12)


def test_content_identity_drops_duplicates_by_ts_price_size_exchange(conn: psycopg.Connection) -> None:
    _insert_gap(conn, "synthetic")
    source = _Renumbering()
    kwargs = {"sources": {"synthetic": source}, "symbology": UNIVERSE.symbology, "symbols": {"synthetic": ["SPY"]}}
    [first] = repair_gaps(conn, None, run_id="r1", **kwargs).repairs  # type: ignore[arg-type]
    assert first.counts["inserted"] == first.counts["fetched"] > 0
    rows = _full_ticks(conn)
    outbox = conn.execute("select count(*) from ops.outbox_events").fetchone()
    conn.execute("update ops.stream_gaps set repair_status = null, repaired_at = null")
    [second] = repair_gaps(conn, None, run_id="r2", **kwargs).repairs  # type: ignore[arg-type]
    assert source.calls == 2
    assert second.counts["duplicates"] == second.counts["fetched"] == first.counts["fetched"]
    assert second.counts["inserted"] == 0
    assert _full_ticks(conn) == rows
    assert conn.execute("select count(*) from ops.outbox_events").fetchone() == outbox
