"""Trade corrections and cancels on the real-time path, from a loopback Alpaca websocket server to md.ticks.

Alpaca's documented messages: `t` trade, `c` correction (`oi`/`op`/`os`/`oc` the original, `ci`/`cp`/`cs`/
`cc` the corrected trade), `x` cancel/error (`i` the trade cancelled). The real collector lands the frames on
the real broker, the real Dagster sensor and job apply them: the stored tick is replaced or removed, its
previous version is kept in md.ticks_revisions, and md.ticks.v1 carries a cancel (and, for a correction,
the corrected trade) naming the event id of the trade it cancels or replaces.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from mdpipeline.distribute.subscriber import read_topic
from mdpipeline.distribute.topics import TICKS
from mdpipeline_tests.faults.alpaca_stream import AlpacaStream, collect_scripts
from mdpipeline_tests.realtime_helpers import run_realtime
from mdpipeline_tests.test_events_schema import schema_for

DAY = datetime(2024, 6, 10, 14, 0, tzinfo=UTC)


def _at(ms: int) -> str:
    return (DAY + timedelta(milliseconds=ms)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _trade(i: int, price: float, symbol: str = "AAPL") -> dict:
    return {"T": "t", "S": symbol, "i": i, "x": "V", "p": price, "s": 100, "c": ["@"], "t": _at(i), "z": "C"}


def _correction(original: dict, new_id: int, new_price: float) -> dict:
    return {"T": "c", "S": original["S"], "x": original["x"], "oi": original["i"], "op": original["p"],
            "os": original["s"], "oc": original["c"], "ci": new_id, "cp": new_price, "cs": original["s"],
            "cc": original["c"], "z": "C", "t": original["t"]}


def _cancel(original: dict) -> dict:
    return {"T": "x", "S": original["S"], "i": original["i"], "x": original["x"], "p": original["p"],
            "s": original["s"], "a": "C", "z": "C", "t": original["t"]}


def _frame(*messages: dict) -> str:
    return json.dumps(list(messages), separators=(",", ":"))


@pytest.mark.both_layouts
def test_corrections_and_cancels_replace_stored_ticks_keep_revisions_and_name_the_original_event(
    database_url: str, conn: psycopg.Connection, kafka_bootstrap: str,
) -> None:
    t1, t2, t3, t4 = _trade(1, 100.0), _trade(2, 101.0, "MSFT"), _trade(3, 102.0), _trade(4, 103.0)
    c10 = _correction(t1, 10, 100.5)
    c11 = _correction({**t1, "i": 10, "p": 100.5}, 11, 100.25)  # a correction of the correction
    # First connection: trades, a correction of 1, a cancel of 2, a correction of that correction, a cancel
    # of a trade never seen. Processed as one range.
    first = [_frame(t1, t2, t3), _frame(c10, _cancel(t2)), _frame(c11, _cancel(_trade(999, 1.0)))]
    stream = AlpacaStream(scripts=[first])
    topic, _ = collect_scripts(kafka_bootstrap, stream, expect_connections=1)
    assert len(run_realtime(database_url, kafka_bootstrap, topic.name)) == 1

    stored = dict(conn.execute("select sequence, price from md.ticks").fetchall())
    assert stored == {3: 102.0, 11: 100.25}
    assert conn.execute("select corrects from md.ticks where sequence = 11").fetchone() == (10,)
    revisions = conn.execute("select sequence, price, change, superseded_by from md.ticks_revisions"
                             " order by sequence").fetchall()
    assert revisions == [(1, 100.0, "correct", 10), (2, 101.0, "cancel", None), (10, 100.5, "correct", 11)]

    values = [json.loads(e.value) for e in read_topic(kafka_bootstrap, TICKS.name)
              if e.headers.get("mdp-raw-topic") == topic.name]
    validator = schema_for(TICKS.name)
    for value in values:
        validator.validate(value)
    by_action = {(v["data"]["action"], v["data"]["sequence"]): v for v in values}
    new_id = {seq: v["event_id"] for (action, seq), v in by_action.items() if action == "new"}
    # Plain trades carry no original_event_id (their data, and so their ids, are as before).
    assert all("original_event_id" not in by_action[("new", s)]["data"] for s in (1, 2, 3))
    assert by_action[("cancel", 1)]["data"]["original_event_id"] == new_id[1]
    assert by_action[("new", 10)]["data"]["original_event_id"] == new_id[1]
    assert by_action[("new", 10)]["data"]["corrects"] == 1
    assert by_action[("cancel", 2)]["data"]["original_event_id"] == new_id[2]
    assert by_action[("cancel", 10)]["data"]["original_event_id"] == new_id[10]
    assert by_action[("new", 11)]["data"]["original_event_id"] == new_id[10]
    assert "original_event_id" not in by_action[("cancel", 999)]["data"]  # never stored: nothing to name
    # The stored rows keep the id of the event that announced them.
    stored_ids = dict(conn.execute("select sequence, event_id from md.ticks").fetchall())
    assert stored_ids == {3: new_id[3], 11: new_id[11]}

    # A later connection (a later range) cancels a trade stored by the first run and corrects another:
    # the originals are found in md.ticks.
    stream = AlpacaStream(scripts=[[_frame(t4), _frame(_cancel(t3), _correction(t4, 12, 103.5))]])
    topic2, _ = collect_scripts(kafka_bootstrap, stream, expect_connections=1)
    assert len(run_realtime(database_url, kafka_bootstrap, topic2.name)) == 1
    assert dict(conn.execute("select sequence, price from md.ticks").fetchall()) == {11: 100.25, 12: 103.5}
    later = {(v["data"]["action"], v["data"]["sequence"]): v for v in
             (json.loads(e.value) for e in read_topic(kafka_bootstrap, TICKS.name)
              if e.headers.get("mdp-raw-topic") == topic2.name)}
    assert later[("cancel", 3)]["data"]["original_event_id"] == new_id[3]
    assert later[("new", 12)]["data"]["original_event_id"] == later[("new", 4)]["event_id"]
    assert conn.execute("select count(*) from md.ticks_revisions where change = 'cancel'").fetchone() == (2,)


def test_bad_frames_and_a_bad_correction_are_quarantined_and_the_offset_advances(
    database_url: str, conn: psycopg.Connection, kafka_bootstrap: str,
) -> None:
    t1, t2 = _trade(1, 100.0), _trade(2, 101.0)
    bad_price = _correction(t2, 20, 0.0)  # a correction to a non-positive price: rejected, the trade stays
    script = [_frame(t1, t2), "{not json", _frame(bad_price), _frame(_correction(t1, 10, 100.5))]
    stream = AlpacaStream(scripts=[script])
    topic, _ = collect_scripts(kafka_bootstrap, stream, expect_connections=1)
    assert len(run_realtime(database_url, kafka_bootstrap, topic.name)) == 1

    assert dict(conn.execute("select sequence, price from md.ticks").fetchall()) == {2: 101.0, 10: 100.5}
    quarantined = conn.execute("select check_name, row_data->>'offset' from quality.quarantine"
                               " where check_name = 'malformed_frame'").fetchall()
    assert quarantined == [("malformed_frame", "1")]  # the whole frame, by its offset
    reasons = dict(conn.execute("select check_name, reason from quality.quarantine"
                                " where check_name <> 'malformed_frame'").fetchall())
    # Both halves of the bad correction: the corrected trade, and the cancel of the original it came with.
    assert set(reasons) == {"value_range", "correction_rejected"}
    assert "price must be > 0" in reasons["value_range"]
    assert "the corrected trade 20 was rejected" in reasons["correction_rejected"]
    assert conn.execute("select count(*) from md.ticks_revisions where sequence = 2").fetchone() == (0,)
    assert conn.execute("select next_offset from ops.stream_offsets").fetchone() == (len(script),)
