"""Quotes on the real-time path: a loopback Alpaca websocket server -> the real collector -> the raw topic on the
real broker -> the real Dagster sensor and job -> md.quotes, quality.quarantine and md.quotes.v1.

Alpaca's documented quote message: `{"T":"q","S","bx","bp","bs","ax","ap","as","c":[...],"z","t"}`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from mdpipeline.distribute.subscriber import read_topic
from mdpipeline.distribute.topics import QUOTES
from mdpipeline_tests.faults.alpaca_stream import AlpacaStream, collect_scripts
from mdpipeline_tests.realtime_helpers import run_realtime
from mdpipeline_tests.test_events_schema import schema_for

DAY = datetime(2024, 6, 10, 14, 0, tzinfo=UTC)


def _quote(n: int, symbol: str = "AAPL", bid: float = 190.0, ask: float = 190.02, bid_size: float = 3,
           ask_size: float = 5) -> dict:
    at = (DAY + timedelta(milliseconds=n)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"T": "q", "S": symbol, "bx": "V", "bp": bid, "bs": bid_size, "ax": "Q", "ap": ask, "as": ask_size,
            "c": ["R"], "z": "C", "t": at}


def _frame(*messages: dict) -> str:
    return json.dumps(list(messages), separators=(",", ":"))


@pytest.mark.both_layouts
def test_quotes_are_validated_stored_and_published(database_url: str, conn: psycopg.Connection,
                                                   kafka_bootstrap: str) -> None:
    good = [_quote(1), _quote(2, "MSFT", 420.0, 420.05), _quote(3, bid=190.01, ask=190.03)]
    trade = {"T": "t", "S": "AAPL", "i": 1, "x": "V", "p": 190.02, "s": 100, "c": ["@"],
             "t": "2024-06-10T14:00:00.004Z", "z": "C"}
    bad = {
        "crossed_quote": _quote(10, bid=190.05, ask=190.0),
        "locked_quote": _quote(11, bid=190.0, ask=190.0),
        "value_range": _quote(12, bid_size=0),
        "symbology": _quote(13, "ZZZZ"),
    }
    wrong_type = _frame({**_quote(20), "bp": "190.00"})  # not a number: the frame cannot be parsed
    too_large = _frame(_quote(21)).replace('"ap":190.02', '"ap":1e999')  # not a double: the frame cannot be parsed
    negative = _frame(_quote(22, ask=-190.0))
    script = [_frame(good[0], trade), _frame(*bad.values()), wrong_type, _frame(good[1]), too_large, negative,
              _frame(good[2], good[2])]  # the last one twice: an exact duplicate is stored once
    topic, landing = collect_scripts(kafka_bootstrap, AlpacaStream(scripts=[script]), expect_connections=1,
                                     quotes=True)
    assert landing.failed == []
    runs = run_realtime(database_url, kafka_bootstrap, topic.name)  # ends when the sensor has nothing left
    assert len(runs) == 1

    stored = conn.execute("select symbol, bid_price, ask_price, bid_size, ask_size, bid_exchange, ask_exchange,"
                          " conditions, tape, session_date::text from md.quotes order by ts").fetchall()
    assert stored == [("AAPL", 190.0, 190.02, 3.0, 5.0, "V", "Q", "R", "C", "2024-06-10"),
                      ("MSFT", 420.0, 420.05, 3.0, 5.0, "V", "Q", "R", "C", "2024-06-10"),
                      ("AAPL", 190.01, 190.03, 3.0, 5.0, "V", "Q", "R", "C", "2024-06-10")]
    assert conn.execute("select count(*) from md.ticks").fetchone() == (1,)  # the trade beside the quote

    rejected = dict(conn.execute("select check_name, reason from quality.quarantine where dataset = 'quotes'"
                                 ).fetchall())
    assert set(rejected) == set(bad)
    assert "above ask" in rejected["crossed_quote"]
    assert any(r.startswith("value_range") for r in rejected.values())
    negative_row = conn.execute("select reason from quality.quarantine where dataset = 'quotes'"
                                " and row_data->>'ask_price' = '-190.0'").fetchone()
    assert negative_row is not None
    assert "ask price must be > 0 and finite" in negative_row[0]
    assert "crossed_quote" in negative_row[0]
    frames = conn.execute("select row_data->>'offset' from quality.quarantine"
                          " where check_name = 'malformed_frame'").fetchall()
    assert sorted(frames) == [("2",), ("4",)]  # quarantined whole; the offset moved past them
    assert conn.execute("select next_offset from ops.stream_offsets").fetchone() == (len(script),)

    values = [json.loads(e.value) for e in read_topic(kafka_bootstrap, QUOTES.name)
              if e.headers.get("mdp-raw-topic") == topic.name]
    validator = schema_for(QUOTES.name)
    for value in values:
        validator.validate(value)
    values.sort(key=lambda v: v["data"]["ts"])  # per instrument in order; instruments are on their own partitions
    assert [(v["data"]["symbol"], v["data"]["bid_price"]) for v in values] == [
        ("AAPL", 190.0), ("MSFT", 420.0), ("AAPL", 190.01)]
    assert {v["event_id"] for v in values} == {r[0] for r in conn.execute("select event_id from md.quotes")}
    assert conn.execute("select count(*) from ops.outbox").fetchone() == (0,)
