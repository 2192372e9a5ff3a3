"""Published messages, read with a plain confluent-kafka consumer, match what docs/ promise.

Only docs/events.md and docs/schemas/*.json are used to interpret the messages: the schema file named
after the topic, the header schema, the key rule and the event_id formula.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from datetime import date
from pathlib import Path
from typing import Any

import dagster as dg
import jsonschema
import polars as pl
import psycopg
import pytest
from confluent_kafka import Consumer

from mdpipeline.contracts.events import BARS_1D_EVENT_FIELDS
from mdpipeline.distribute.outbox import outbox_rows, replace_pending
from mdpipeline.distribute.relay import drain
from mdpipeline.distribute.topics import BARS_1D, BARS_1M, CORPORATE_ACTIONS, DEAD_LETTER, ensure_topics
from mdpipeline.orchestration.assembly import build_definitions
from mdpipeline.orchestration.runner import materialize_range
from mdpipeline.storage.database import connect
from mdpipeline_tests.pipeline_helpers import settings_for

DOCS = Path(__file__).resolve().parent.parent / "docs"
START, END = date(2024, 6, 10), date(2024, 6, 11)


@pytest.fixture(autouse=True)
def _frames_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MDP_FRAMES_DIR", str(tmp_path / "frames"))


def schema_for(topic: str) -> jsonschema.Draft202012Validator:
    """The validator docs/schemas/ gives for a topic (or for headers)."""
    schema = json.loads((DOCS / "schemas" / f"{topic}.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def read_plain(bootstrap: str, topic: str, run_id: str, idle: float = 4.0) -> list[Any]:
    """Messages of `topic` with header mdp-run-id = run_id, read as docs/events.md shows."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"docs-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    out, last, started = [], time.monotonic(), False
    try:
        while time.monotonic() - last < (idle if started else 20.0):
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            started, last = True, time.monotonic()
            headers = {k: v.decode() for k, v in msg.headers() or []}
            if headers.get("mdp-run-id") == run_id:
                out.append(msg)
            consumer.commit(message=msg, asynchronous=False)
    finally:
        consumer.close()
    return out


def check_documented(topic: str, messages: list[Any]) -> list[dict]:
    """Validate value, headers, key and event_id of each message as docs/events.md describes them."""
    values, headers_schema, value_schema = [], schema_for("headers.v1"), schema_for(topic)
    for msg in messages:
        raw = msg.value().decode()
        value = json.loads(raw)
        value_schema.validate(value)
        headers = {k: v.decode() for k, v in msg.headers()}
        headers_schema.validate(headers)
        key = msg.key().decode() if msg.key() is not None else ""
        data_text = raw[raw.index('"data":') + len('"data":'):-1]
        assert json.loads(data_text) == value["data"]
        expected = hashlib.sha256(f"{topic}\x1f{key}\x1f{data_text}".encode()).hexdigest()[:32]
        assert value["event_id"] == expected == headers["mdp-event-id"]
        values.append(value)
    return values


def test_bar_messages_match_the_documented_schema(database_url: str, kafka_bootstrap: str) -> None:
    defs = build_definitions(settings_for(database_url, kafka_bootstrap))
    result = materialize_range(defs, START, END, providers=["synthetic", "file"],
                               instance=dg.DagsterInstance.ephemeral())
    assert result.success
    messages = read_plain(kafka_bootstrap, BARS_1D.name, result.run_id)
    values = check_documented(BARS_1D.name, messages)
    assert len(values) == (6 + 3) * 2
    assert all(m.key().decode() == str(v["data"]["instrument_id"]) for m, v in zip(messages, values, strict=True))

    # Minute bars: one message per instrument session, the bars as equal-length arrays in time order.
    minute = read_plain(kafka_bootstrap, BARS_1M.name, result.run_id)
    sessions = check_documented(BARS_1M.name, minute)
    assert len(sessions) == 6 * 2
    for msg, value in zip(minute, sessions, strict=True):
        bars = value["data"]["bars"]
        assert msg.key().decode() == str(value["data"]["instrument_id"])
        assert {len(v) for v in bars.values()} == {390}
        assert bars["ts"] == sorted(bars["ts"])
        assert bars["ts"][0].startswith(value["data"]["session_date"] + "T13:30:00")  # the 09:30 open, UTC in June
    with connect(database_url) as conn:
        stored = conn.execute("select count(*), sum(volume) from md.bars_1m where provider = 'synthetic'").fetchone()
    assert stored == (sum(len(v["data"]["bars"]["ts"]) for v in sessions),
                      sum(sum(v["data"]["bars"]["volume"]) for v in sessions))

    # Corporate actions: NVDA's 10-for-1 split on 2024-06-10 from both providers.
    actions = check_documented(CORPORATE_ACTIONS.name, read_plain(kafka_bootstrap, CORPORATE_ACTIONS.name,
                                                                  result.run_id))
    assert sorted((a["data"]["provider"], a["data"]["symbol"], a["data"]["action"], a["data"]["ratio"])
                  for a in actions) == [("file", "NVDA", "split", 10.0), ("synthetic", "NVDA", "split", 10.0)]


def test_dead_letters_match_the_documented_schema(conn: psycopg.Connection, kafka_bootstrap: str) -> None:
    run_id = uuid.uuid4().hex
    frame = pl.DataFrame({
        "instrument_id": [1, 2], "symbol": ["AAPL", "MSFT"], "session_date": [START, START],
        "provider": ["synthetic"] * 2, "open": [1.0, 2.0], "high": [1.0, 2.0], "low": [1.0, 2.0],
        "close": [1.0, 2.0], "volume": [10.0, float("inf")], "vwap": [None, 2.0], "trades": [None, 3],
    })
    rows = outbox_rows(frame, BARS_1D.name, BARS_1D_EVENT_FIELDS,
                       {"mdp-run-id": run_id, "mdp-provider": "synthetic"})
    with conn.transaction():
        replace_pending(conn, rows, provider="synthetic", start=START, end=START,
                        topics=(BARS_1D.name, DEAD_LETTER.name))
    ensure_topics(kafka_bootstrap, (BARS_1D, DEAD_LETTER))
    drain(conn, kafka_bootstrap)
    bars = check_documented(BARS_1D.name, read_plain(kafka_bootstrap, BARS_1D.name, run_id))
    letters = check_documented(DEAD_LETTER.name, read_plain(kafka_bootstrap, DEAD_LETTER.name, run_id))
    assert [b["data"]["symbol"] for b in bars] == ["AAPL"]
    assert [d["data"]["reason"] for d in letters] == ["volume is inf (JSON has no NaN or infinity)"]
