"""Bad frames on the real-time path: from a websocket server to md.ticks, each costs one frame at most.

A loopback Alpaca stream sends, between valid trade frames, frames that are not JSON, not UTF-8 (binary,
and a text frame the client must refuse), of wrong JSON types, with out-of-range timestamps, holding a
NUL character or nested objects, a 2 MB frame (over the broker's default 1 MB message limit) and one
over the collector's websocket limit. The real collector lands what it can read and cannot, the
Dagster sensor and job process the raw range, and the invariants hold: every valid trade is stored
once, every frame that could not be parsed is quarantined with its reason and its bytes, the two
frames the websocket library refused are covered by recorded gaps, the offset advances (the sensor has
nothing left to request), nothing stays pending in the outbox.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import dagster as dg
import polars as pl
import psycopg
import pytest

from mdpipeline.distribute.publisher import send
from mdpipeline.distribute.subscriber import read_topic
from mdpipeline.distribute.topics import TICKS, TopicSpec, ensure_topics
from mdpipeline.orchestration.assembly import build_definitions
from mdpipeline.orchestration.realtime import raw_stream_sensor
from mdpipeline.orchestration.resources import DatabaseResource, KafkaResource
from mdpipeline.settings import DEFAULT_UNIVERSE
from mdpipeline.stream.gap_repair import DEFAULT_MARGIN
from mdpipeline.stream.offsets import read_messages
from mdpipeline.stream.process import process_range
from mdpipeline.universe import load_universe
from mdpipeline_tests.faults.alpaca_stream import KEY_ID, SECRET_KEY, AlpacaStream, Binary, InvalidText
from mdpipeline_tests.faults.alpaca_stream import collect_scripts as _collect
from mdpipeline_tests.faults.invariants import (
    assert_events_consistent,
    assert_no_secret,
    assert_outbox_drained,
    assert_ticks_unique,
)
from mdpipeline_tests.pipeline_helpers import settings_for

pytestmark = pytest.mark.faults

UNIVERSE = load_universe(DEFAULT_UNIVERSE)
DAY = datetime(2024, 6, 10, 14, 0, tzinfo=UTC)
COLLECTOR_LIMIT = 16 * 1024 * 1024  # the collector's websocket max_size (MAX_FRAME_BYTES)


def _trade(i: int, symbol: str = "AAPL", **changes: object) -> dict:
    at = DAY + timedelta(milliseconds=i)
    trade = {"T": "t", "S": symbol, "i": i, "x": "V", "p": 100.0 + i / 1000, "s": 10, "c": ["@"],
             "t": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "z": "C"}
    return {**trade, **changes}


def _frame(*trades: dict) -> str:
    return json.dumps(list(trades), separators=(",", ":"))


def _good(first: int, n: int = 3) -> tuple[str, list[int]]:
    ids = list(range(first, first + n))
    return _frame(*(_trade(i, "MSFT" if i % 2 else "AAPL") for i in ids)), ids


def _bad_frames() -> dict[str, str | bytes]:
    """Frames a collector can receive whole but no parser can use (name -> frame)."""
    return {
        "not_json": "this is not JSON {",
        "binary_not_utf8": b"\xff\xfe\x00\x81 not text",
        "wrong_types": _frame(_trade(500, p="one hundred")),
        "nul_character": _frame(_trade(501, x="V\u0000")),
        "nested_object": _frame(_trade(502, S={"ticker": "AAPL"})),
        "lone_surrogate": _frame(_trade(503)).replace('"x":"V"', '"x":"\\ud800"'),
        "json_number": "42",
    }


def test_bad_websocket_frames_cost_one_frame_each(database_url: str, conn: psycopg.Connection,
                                                  kafka_bootstrap: str,
                                                  record_property: Callable[[str, object], None]) -> None:
    bad = _bad_frames()
    frames, expected_ids = [], []
    for n in range(5):
        frame, ids = _good(n * 10)
        frames.append(frame)
        expected_ids += ids
    out_of_range = _frame(_trade(600, t="9999-06-10T15:00:00Z"), _trade(601, t="2500-01-01T00:00:00Z"), _trade(602))
    big_trades = [_trade(1000 + i, "MSFT") for i in range(18_000)]
    big = _frame(*big_trades)  # about 2 MB: over the broker's and producer's default message size
    assert 1_900_000 < len(big) < COLLECTOR_LIMIT
    oversize = _frame(*(_trade(100_000 + i) for i in range(160_000)))  # over the collector's websocket limit
    assert len(oversize) > COLLECTOR_LIMIT
    stream = AlpacaStream(scripts=[
        [frames[0], bad["not_json"], Binary(bad["binary_not_utf8"]), frames[1], bad["wrong_types"], out_of_range,
         big, bad["nul_character"], bad["nested_object"], Binary(frames[2].encode()), bad["lone_surrogate"],
         bad["json_number"], InvalidText(b'[{"T":"t","S":"AAPL\xff"}]')],
        [frames[3], oversize],
        [frames[4]],
    ])
    topic, landing = _collect(kafka_bootstrap, stream, expect_connections=3)
    assert landing.failed == []

    # The Dagster sensor requests the whole raw range; one run applies it.
    defs = build_definitions(settings_for(database_url, kafka_bootstrap))
    job = defs.get_job_def("realtime_ticks")
    sensor = raw_stream_sensor((topic.name,), name="fault_raw_stream")
    instance = dg.DagsterInstance.ephemeral()
    resources = {"db": DatabaseResource(url=database_url), "kafka": KafkaResource(bootstrap_servers=kafka_bootstrap)}
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    [request] = result.run_requests or []
    run = job.execute_in_process(run_config=request.run_config, instance=instance, tags=request.tags)
    assert run.success
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        assert isinstance(sensor(context), dg.SkipReason)  # the offset advanced past every bad frame

    # Every valid trade once: the five small frames, the binary copy of one of them, the valid trade next to
    # two out-of-range timestamps, the 2 MB frame.
    stored = dict(conn.execute("select sequence, price from md.ticks").fetchall())
    want = {i: 100.0 + i / 1000 for i in [*expected_ids, 602, *(1000 + i for i in range(18_000))]}
    assert stored == want
    assert_ticks_unique(conn)

    # Every frame that could not be parsed: quarantined with a reason and its bytes.
    quarantined = conn.execute("select reason, row_data from quality.quarantine where check_name = 'malformed_frame'"
                               " order by (row_data->>'offset')::bigint").fetchall()
    assert len(quarantined) == len(bad)
    kept = [base64.b64decode(r["value_base64"]) if "value_base64" in r else r["value"].encode()
            for _, r in quarantined]
    assert sorted(kept) == sorted(v if isinstance(v, bytes) else v.encode() for v in bad.values())
    reasons = {r["offset"]: reason for reason, r in quarantined}
    assert all(reasons.values())
    assert any("not UTF-8" in r for r in reasons.values())
    assert any("not JSON" in r for r in reasons.values())
    assert any("NUL" in r for r in reasons.values())
    # The two out-of-range timestamps are rejected as rows, with the reason.
    rows = conn.execute("select check_name, reason, row_data->>'sequence' from quality.quarantine"
                        " where check_name <> 'malformed_frame' order by 3").fetchall()
    assert [(c, s) for c, _, s in rows] == [("missing_value", "600"), ("missing_value", "601")]
    assert all("1970..2199" in r for _, r, _ in rows)

    # The frame that was not UTF-8 text and the one over the websocket limit: refused by the library, the
    # connection dropped, and the interval recorded as a gap for gap repair.
    gaps = conn.execute("select reason, disconnected_at, reconnected_at from ops.stream_gaps order by gap_id")\
        .fetchall()
    assert len(gaps) == 2
    assert "1007" in gaps[0][0] or "invalid" in gaps[0][0].lower()
    assert "1009" in gaps[1][0] or "too big" in gaps[1][0].lower()
    # Gap intervals are in the collector's receive clock; repair fetches them with DEFAULT_MARGIN around.
    invalid_sent = next(s.at for s in stream.sent if isinstance(s.frame, InvalidText))
    assert gaps[0][1] - DEFAULT_MARGIN <= invalid_sent <= gaps[0][2]
    oversize_sent = next(s.at for s in stream.sent if s.frame is oversize)
    assert gaps[1][1] - DEFAULT_MARGIN <= oversize_sent <= gaps[1][2]

    events = [e for e in read_topic(kafka_bootstrap, TICKS.name) if e.headers.get("mdp-raw-topic") == topic.name]
    assert len(assert_events_consistent(events)) == len(want)
    record_property("frames_landed", landing.landed)
    record_property("frames_quarantined", len(quarantined))
    record_property("rows_quarantined", len(rows))
    record_property("ticks_stored", len(stored))
    record_property("gaps", len(gaps))
    assert_outbox_drained(conn, kafka_bootstrap)
    assert_no_secret([SECRET_KEY, KEY_ID], conn=conn, instance=instance)


def test_frames_no_collector_would_land_are_quarantined_too(conn: psycopg.Connection, kafka_bootstrap: str) -> None:
    """Landed by hand (an old collector, another tool): unknown or missing provider, broken gap markers,
    Finnhub frames with wrong types or a timestamp past 2262; the range still applies in one run."""
    topic = TopicSpec(f"raw.stream.mixed-{uuid.uuid4().hex[:8]}.v1", partitions=1)
    ensure_topics(kafka_bootstrap, (topic,))
    good, ids = _good(0)
    gap = {"kind": "gap", "provider": "alpaca", "disconnected_at": "2024-06-10T14:00:00.000000Z",
           "reconnected_at": "2024-06-10T14:00:05.000000Z", "reason": "closed by server"}
    for value, kind, provider in [
        (good, "data", "alpaca"),                                                  # 0 ok
        (good, "data", "nobody"),                                                  # 1 unknown provider
        (json.dumps({"type": "trade", "data": [
            {"s": "AAPL", "p": 190.0, "t": 1718031600000, "v": 5, "c": []},
            {"s": "AAPL", "p": 190.1, "t": 10**17, "v": 5, "c": []}]}), "data", "finnhub"),  # 2 one past 2262
        (json.dumps({"type": "trade", "data": [{"s": "AAPL", "p": "x", "t": 1, "v": 5}]}), "data",
         "finnhub"),                                                               # 3 wrong JSON type
        ("[1, 2]", "data", "finnhub"),                                             # 4 not an object
        (json.dumps(gap), "gap", "alpaca"),                                        # 5 ok gap marker
        ("{not json", "gap", "alpaca"),                                            # 6 broken gap marker
        (json.dumps({**gap, "disconnected_at": "yesterday"}), "gap", "alpaca"),    # 7 bad times
        (good, "quote", "alpaca"),                                                 # 8 unknown kind
    ]:
        _land_raw(kafka_bootstrap, topic.name, value, kind, provider)

    report = process_range(conn, kafka_bootstrap, topic=topic.name, partition=0, first=0, last=8,
                           symbology=UNIVERSE.symbology, run_id="mixed")
    assert report.applied
    assert report.frames_quarantined == 6
    assert report.gaps == 1
    frames = dict(conn.execute("select (row_data->>'offset')::int, reason from quality.quarantine"
                               " where check_name = 'malformed_frame'").fetchall())
    assert sorted(frames) == [1, 3, 4, 6, 7, 8]
    assert "no parser for frames of provider nobody" in frames[1]
    assert "deserializing" in frames[3]
    assert "not a JSON object" in frames[4]
    assert "malformed gap marker" in frames[6] or "not JSON" in frames[6]
    assert "malformed gap marker" in frames[7]
    assert "unknown frame kind quote" in frames[8]
    assert conn.execute("select count(*) from md.ticks").fetchone() == (len(ids) + 1,)
    rejected = conn.execute("select reason from quality.quarantine where check_name <> 'malformed_frame'").fetchall()
    assert len(rejected) == 1
    assert "1970..2199" in rejected[0][0]
    assert conn.execute("select next_offset from ops.stream_offsets").fetchone() == (9,)
    assert_ticks_unique(conn)
    assert_outbox_drained(conn, kafka_bootstrap)


def _land_raw(servers: str, topic: str, value: str, kind: str, provider: str) -> None:
    """One message with the collector's headers but any kind and value (as a foreign tool might land it)."""
    delivery = send(servers, topic, [None], [value], [("mdp-provider", provider.encode()), ("mdp-kind", kind.encode()),
                                                      ("mdp-received-at", b"2024-06-10T14:00:00.000000Z")])
    assert delivery.confirmed == 1


def test_a_parser_panic_costs_only_its_frame() -> None:
    """pyo3's PanicException is a BaseException: it must not escape the per-frame isolation either."""
    from polars.exceptions import PanicException

    from mdpipeline.stream.bad_frames import isolate

    raw = pl.DataFrame({"offset": [0, 1, 2, 3], "value": ["a", "boom", "c", "d"]})

    def parse(frames: pl.DataFrame) -> pl.DataFrame:
        if "boom" in frames["value"].to_list():
            raise PanicException("called `Option::unwrap()` on a `None` value")
        return frames

    parsed, rejected = isolate(raw, parse)
    assert parsed["offset"].to_list() == [0, 2, 3]
    assert rejected.rows() == [(1, "PanicException: called `Option::unwrap()` on a `None` value")]


@pytest.mark.parametrize("kind", ["not_json", "binary_not_utf8", "json_number", "frame_of_2_mb"])
def test_the_collector_survives_a_bad_frame_and_lands_it(kafka_bootstrap: str, kind: str) -> None:
    """Each of these stopped the collector for good before (a JSON or decode error out of the feed, the
    producer refusing a message over 1 MB); now each is landed as received, the frames after it too."""
    bad: str | bytes = _frame(*(_trade(1000 + i) for i in range(18_000))) if kind == "frame_of_2_mb" \
        else _bad_frames()[kind]
    before, _ = _good(0)
    after, _ = _good(10)
    stream = AlpacaStream(scripts=[[before, Binary(bad) if isinstance(bad, bytes) else bad, after]])
    topic, landing = _collect(kafka_bootstrap, stream, expect_connections=1)
    landed = read_messages(kafka_bootstrap, topic.name, 0, 0, last=2)
    as_bytes = [base64.b64decode(v) if e == "base64" else v.encode()
                for v, e in landed.select("value", "encoding").rows()]
    assert as_bytes == [before.encode(), bad if isinstance(bad, bytes) else bad.encode(), after.encode()]
    assert landing.failed == []
