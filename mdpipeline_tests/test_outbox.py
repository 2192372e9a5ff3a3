"""The transactional outbox and its relay against the real database and broker, including faults.

Faults are real: an unreachable broker, a database that refuses the publication mark after the
broker confirmed, a value the broker refuses, a NaN. A broker killed, stopped or restarted during
a drain is in mdpipeline_tests/faults/.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from mdpipeline.contracts.events import BARS_1D_EVENT_FIELDS
from mdpipeline.devservices.postgres import free_port
from mdpipeline.distribute.events import bar_events, lineage_headers
from mdpipeline.distribute.outbox import (
    OUTBOX_COLUMNS,
    outbox_rows,
    pending,
    replace_pending,
    write_outbox,
)
from mdpipeline.distribute.relay import _mark, drain
from mdpipeline.distribute.subscriber import end_offsets
from mdpipeline.distribute.topics import BARS_1D, DEAD_LETTER, TopicSpec, ensure_topics
from mdpipeline.orchestration.assembly import build_definitions
from mdpipeline.orchestration.runner import materialize_range
from mdpipeline.storage import migrations
from mdpipeline.storage.bars import read_bars_1d
from mdpipeline.storage.database import connect
from mdpipeline_tests.pipeline_helpers import canonical_bars, event_values, events_of_run, settings_for

START, END = date(2024, 6, 3), date(2024, 6, 14)
BARS = 6 * 10  # synthetic: 6 symbols x 10 sessions


@pytest.fixture(autouse=True)
def _frames_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MDP_FRAMES_DIR", str(tmp_path / "frames"))


def _run(defs: dg.Definitions, select: str | None = None) -> dg.ExecuteInProcessResult:
    return materialize_range(defs, START, END, providers=["synthetic"], select=select,
                             instance=dg.DagsterInstance.ephemeral())


def _pending(conn: psycopg.Connection) -> int:
    """Pending daily-bar announcements (the run also announces minute-bar sessions and corporate actions)."""
    row = conn.execute("select count(*) from ops.outbox where topic = %s",
                       (BARS_1D.name,)).fetchone()
    assert row is not None
    return int(row[0])


def _expected_ids(database_url: str) -> set[str]:
    with connect(database_url) as conn:
        bars = read_bars_1d(conn, start=START, end=END, provider="synthetic")
    return set(bar_events(bars, BARS_1D.name)["event_id"])


def test_store_writes_the_outbox_in_the_data_transaction(database_url: str, kafka_bootstrap: str) -> None:
    defs = build_definitions(settings_for(database_url, kafka_bootstrap))
    stored = _run(defs, select="not group:published")
    assert stored.success
    with connect(database_url) as conn:
        rows = pending(conn, provider="synthetic", topics=(BARS_1D.name,))
        headers = json.loads(rows["headers"][0])
    assert rows.height == BARS
    assert set(rows["event_id"]) == _expected_ids(database_url)
    assert set(rows["topic"]) == {BARS_1D.name}
    with connect(database_url) as conn:  # minute bars: one announcement per instrument session
        sessions = conn.execute("select count(*) from ops.outbox where topic = 'md.bars.1m.v1'").fetchone()
    assert sessions == (BARS,)
    assert headers == lineage_headers(stored.run_id, START, END, "synthetic")

    # A store that fails half-way (here: while queueing the announcements, after the bars were compared)
    # leaves both the old bars and the old pending announcements.
    with connect(database_url) as conn:
        conn.execute("""
            create function reject_0612() returns trigger language plpgsql as $$
            begin
              if new.session_date = date '2024-06-12' then raise exception 'disk full (simulated)'; end if;
              return new;
            end $$;
            create trigger reject_0612 before insert on ops.outbox for each row execute function reject_0612();
        """)
    assert not _run(defs, select="not group:published").success
    with connect(database_url) as conn:
        after = pending(conn, provider="synthetic", topics=(BARS_1D.name,))
    assert after["outbox_id"].to_list() == rows["outbox_id"].to_list()


def test_crash_after_commit_before_send_loses_nothing(database_url: str, kafka_bootstrap: str) -> None:
    # The broker is unreachable when the publish step runs: the store committed, nothing was sent.
    # Only the daily-bar chain runs: each publish step waits for the broker (15 s) before it fails.
    unreachable = f"127.0.0.1:{free_port()}"
    crashed = _run(build_definitions(settings_for(database_url, unreachable)),
                   select='+key:"published/synthetic/bars_1d"')
    assert not crashed.success
    failed_steps = {e.step_key for e in crashed.all_events if e.is_step_failure}
    assert any("published" in (k or "") for k in failed_steps)
    with connect(database_url) as conn:
        assert _pending(conn) == BARS

    rerun = _run(build_definitions(settings_for(database_url, kafka_bootstrap)), select="group:published")
    assert rerun.success
    again = _run(build_definitions(settings_for(database_url, kafka_bootstrap)), select="group:published")
    assert again.success  # nothing left to send: the second drain sends nothing

    events = events_of_run(kafka_bootstrap, BARS_1D.name, crashed.run_id)  # lineage: the run that stored
    ids = [v["event_id"] for v in event_values(events)]
    assert len(ids) == BARS  # not even a duplicate to deduplicate
    assert set(ids) == _expected_ids(database_url)
    assert all(e.headers["mdp-event-id"] == v["event_id"] for e, v in zip(events, event_values(events),
                                                                           strict=True))
    with connect(database_url) as conn:
        assert _pending(conn) == 0


def test_mark_refused_after_confirmation_resends_only_duplicates(database_url: str, kafka_bootstrap: str) -> None:
    defs = build_definitions(settings_for(database_url, kafka_bootstrap))
    assert _run(defs, select="not group:published").success
    with connect(database_url) as conn:  # the database refuses to record the publication
        conn.execute("""
            create function refuse_mark() returns trigger language plpgsql as $$
            begin raise exception 'connection lost (simulated)'; end $$;
            create trigger refuse_mark before delete on ops.outbox for each row execute function refuse_mark();
        """)
    crashed = _run(defs, select="group:published")
    assert not crashed.success
    with connect(database_url) as conn:
        assert _pending(conn) == BARS  # the broker has the messages, the outbox still has them pending
        conn.execute("drop trigger refuse_mark on ops.outbox")
        stored_run = conn.execute("select distinct run_id from md.bars_1d").fetchone()
    assert stored_run is not None
    assert _run(defs, select="group:published").success

    values = event_values(events_of_run(kafka_bootstrap, BARS_1D.name, stored_run[0]))
    ids = [v["event_id"] for v in values]
    assert len(ids) == 2 * BARS  # every message twice: once per attempt
    assert set(ids) == _expected_ids(database_url)  # after dedup by event_id: 0 lost, 0 duplicated
    with connect(database_url) as conn:
        assert _pending(conn) == 0


def test_unserializable_and_refused_messages_go_to_the_dead_letter_topic(
    conn: psycopg.Connection, kafka_bootstrap: str
) -> None:
    run_id = uuid.uuid4().hex
    frame = canonical_bars(5, START).with_columns(
        pl.when(pl.col("instrument_id") == 2).then(float("nan")).otherwise(pl.col("vwap")).alias("vwap"))
    rows = outbox_rows(frame, BARS_1D.name, BARS_1D_EVENT_FIELDS, {"mdp-run-id": run_id})
    assert rows.group_by("topic").len().sort("topic").rows() == [(BARS_1D.name, 4), (DEAD_LETTER.name, 1)]
    huge = rows.filter(pl.col("key") == "3").with_columns(
        pl.lit("x" * 20_000).alias("value"), pl.lit("too-big").alias("event_id"), pl.lit("big").alias("provider"))
    with conn.transaction():
        replace_pending(conn, rows, provider="synthetic", start=START, end=START,
                        topics=(BARS_1D.name, DEAD_LETTER.name))
        replace_pending(conn, huge, provider="big", start=START, end=START, topics=(BARS_1D.name,))
    ensure_topics(kafka_bootstrap, (BARS_1D, DEAD_LETTER))
    report = drain(conn, kafka_bootstrap, producer_config={"message.max.bytes": 10_000})
    assert report.confirmed == {BARS_1D.name: 4, DEAD_LETTER.name: 2}
    assert report.dead_lettered == 1

    letters = event_values(events_of_run(kafka_bootstrap, DEAD_LETTER.name, run_id))
    by_reason = {v["data"]["original_event_id"]: v["data"] for v in letters}
    nan_letter = next(d for d in by_reason.values() if "NaN" in d["reason"])
    assert nan_letter["reason"].startswith("vwap is NaN")
    assert json.loads(nan_letter["payload"])["vwap"] == "NaN"
    assert nan_letter["original_topic"] == BARS_1D.name
    assert nan_letter["key"] == "2"
    assert "MSG_SIZE_TOO_LARGE" in by_reason["too-big"]["reason"]
    sent = conn.execute("select event_id, dead_letter_reason, length(value) from ops.outbox_sent"
                        " order by dead_letter_reason nulls first, event_id").fetchall()
    assert [(r[1] is None, r[2]) for r in sent[:4]] == [(True, None)] * 4  # sent events: the value is on the topic
    letters_kept = {r[0]: (r[1], r[2]) for r in sent[4:]}
    assert len(letters_kept) == 2
    assert letters_kept["too-big"][0].startswith("MSG_SIZE_TOO_LARGE")
    assert letters_kept["too-big"][1] == 20_000  # the refused value is kept whole
    assert all(length for _, length in letters_kept.values())
    assert _pending(conn) == 0


def test_concurrent_relays_of_a_topic_never_send_the_same_rows(database_url: str, kafka_bootstrap: str) -> None:
    topic = TopicSpec(f"test.relay.{uuid.uuid4().hex[:8]}", partitions=3)
    ensure_topics(kafka_bootstrap, (topic,))
    frame = canonical_bars(3000, START)
    rows = outbox_rows(frame, BARS_1D.name, BARS_1D_EVENT_FIELDS, {"mdp-run-id": "concurrent"}).with_columns(
        pl.lit(topic.name).alias("topic"))  # md.bars.1d.v1 messages, on a topic of this test's own
    with connect(database_url) as conn, conn.transaction():
        replace_pending(conn, rows, provider="synthetic", start=START, end=START, topics=(topic.name,))

    def relay() -> int:
        with connect(database_url) as conn:
            return drain(conn, kafka_bootstrap, topics=(topic.name,), batch_size=200).total

    with ThreadPoolExecutor(max_workers=3) as pool:
        sent = [f.result() for f in [pool.submit(relay) for _ in range(3)]]
    assert sum(sent) == rows.height  # the relays took turns: every row sent by exactly one of them
    ends = end_offsets(kafka_bootstrap, topic.name)
    assert sum(high - low for low, high in ends.values()) == rows.height  # on the topic exactly once
    with connect(database_url) as conn:
        assert conn.execute("select count(*) from ops.outbox where topic = %s", (topic.name,)).fetchone() == (0,)
        assert conn.execute("select count(*) from ops.outbox_sent where topic = %s",
                            (topic.name,)).fetchone() == (rows.height,)


def test_a_large_value_is_stored_lz4_compressed_and_read_back_whole(database_url: str) -> None:
    # A minute-bar session's event is tens of kB of JSON: migration 13 stores outbox values with lz4
    # (pglz took about 4x as long to write them) when the server has it, else pglz.
    closes = [round(100 + i / 7, 4) for i in range(3000)]
    value = json.dumps({"event_id": "e" * 32, "data": {"close": closes}}, separators=(",", ":"))
    topic = f"test.lz4.{uuid.uuid4().hex[:8]}"
    rows = pl.DataFrame({"topic": [topic], "key": ["1"], "event_id": ["e" * 32], "value": [value],
                         "headers": ['{"mdp-run-id":"r"}'], "provider": ["synthetic"],
                         "session_date": [date(2024, 6, 3)], "dead_letter_reason": [None]},
                        schema=OUTBOX_COLUMNS)
    with connect(database_url) as conn:
        lz4 = conn.execute("select 'lz4' = any(enumvals) from pg_settings"
                           " where name = 'default_toast_compression'").fetchone()
        with conn.transaction(force_rollback=True):  # nothing is left for other tests' relays
            assert write_outbox(conn, rows) == 1
            method = conn.execute("select pg_column_compression(value) from ops.outbox where topic = %s",
                                  (topic,)).fetchone()
            assert method == ("lz4" if lz4 and lz4[0] else "pglz",)
            read = pending(conn, topics=(topic,))
            assert read["value"].to_list() == [value]
            assert json.loads(read["headers"][0]) == {"mdp-run-id": "r"}


@contextlib.contextmanager
def _database_at(pg_server_url: str, version: int, monkeypatch: pytest.MonkeyPatch) -> Iterator[psycopg.Connection]:
    """A new database migrated to `version` only (the later migrations are back for the test to apply)."""
    name = f"outbox_upgrade_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        with connect(make_conninfo(pg_server_url, dbname=name)) as conn:
            with monkeypatch.context() as patched:
                patched.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:version])
                assert migrations.migrate(conn)[-1] == version
            yield conn
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def test_migration_15_moves_sent_events_to_the_history_and_keeps_pending_ones(
    pg_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A database at version 14 (sent rows marked in place), then the upgrade.
    with _database_at(pg_server_url, 14, monkeypatch) as conn:
        for key, published, reason in (("sent", True, None), ("letter", True, "MSG_SIZE_TOO_LARGE"),
                                       ("pending", False, None)):
            conn.execute("insert into ops.outbox (topic, key, event_id, value, headers, provider, session_date,"
                         " published_at, dead_letter_reason) values ('t', %s, %s, %s, '{\"mdp-run-id\": \"r\"}',"
                         " 'p', '2024-06-03', case when %s then now() end, %s)",
                         (key, f"e-{key}", f"value of {key}", published, reason))
        conn.commit()
        assert migrations.migrate(conn) == [15, 16]
        assert conn.execute("select key, value from ops.outbox").fetchall() == [("pending", "value of pending")]
        sent = conn.execute("select key, value, dead_letter_reason, headers ->> 'mdp-run-id', published_at"
                            " is not null from ops.outbox_sent order by key").fetchall()
        assert sent == [("letter", "value of letter", "MSG_SIZE_TOO_LARGE", "r", True),
                        ("sent", None, None, "r", True)]
        events = conn.execute("select key, published_at is null from ops.outbox_events order by key").fetchall()
        assert events == [("letter", False), ("pending", True), ("sent", False)]
        assert migrations.migrate(conn) == []


def test_migration_16_stores_each_writes_headers_once_and_keeps_older_rows_headers(
    pg_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A database at version 15, with headers on every row, then the upgrade and writes after it.
    with _database_at(pg_server_url, 15, monkeypatch) as conn:
        conn.execute("insert into ops.outbox (topic, key, event_id, value, headers, provider, session_date)"
                     " values ('t', 'old', 'e-old', 'v', '{\"mdp-run-id\": \"before\"}', 'p', '2024-06-03')")
        conn.commit()
        assert migrations.migrate(conn) == [16]
        new = pl.DataFrame({"topic": ["t"] * 3, "key": ["a", "b", "c"], "event_id": ["e-a", "e-b", "e-c"],
                            "value": ["va", "vb", "vc"],
                            "headers": ['{"mdp-run-id":"after"}'] * 2 + ['{"mdp-run-id":"other"}'],
                            "provider": ["p"] * 3, "session_date": [date(2024, 6, 4)] * 3,
                            "dead_letter_reason": [None] * 3}, schema=OUTBOX_COLUMNS)
        with conn.transaction():
            assert write_outbox(conn, new) == 3
        # One header set per distinct headers of the write; the rows refer to it and carry none themselves.
        sets = conn.execute("select headers ->> 'mdp-run-id' from ops.outbox_headers order by 1").fetchall()
        assert sets == [("after",), ("other",)]
        assert conn.execute("select count(*) from ops.outbox where headers is null and headers_id is not null"
                            ).fetchone() == (3,)
        read = pending(conn, topics=("t",))
        assert list(zip(read["key"], [json.loads(h)["mdp-run-id"] for h in read["headers"]], strict=True)) == [
            ("old", "before"), ("a", "after"), ("b", "after"), ("c", "other")]
        conn.commit()
        assert _mark(conn, read, np.ones(read.height, dtype=bool)) == 4
        events = conn.execute("select key, headers ->> 'mdp-run-id', published_at is not null"
                              " from ops.outbox_events order by key").fetchall()
        assert events == [("a", "after", True), ("b", "after", True), ("c", "other", True),
                          ("old", "before", True)]
        with pytest.raises(psycopg.errors.CheckViolation):  # an event without any headers is refused
            conn.execute("insert into ops.outbox (topic, key, event_id, value, provider, session_date)"
                         " values ('t', 'x', 'e-x', 'v', 'p', '2024-06-05')")


def test_a_row_committed_after_the_read_inside_a_batchs_id_range_stays_pending(database_url: str) -> None:
    # Ids are taken at insert, rows become visible at commit: a transaction open while the relay reads
    # can commit a row whose id lies between two ids of the batch. That row was not sent: it stays pending.
    rows = outbox_rows(canonical_bars(3, START), BARS_1D.name, BARS_1D_EVENT_FIELDS, {"mdp-run-id": "gap"})
    with connect(database_url) as conn, connect(database_url, autocommit=False) as late:
        write_outbox(conn, rows[0:1])
        write_outbox(late, rows[1:2])  # its id is taken; not committed yet
        write_outbox(conn, rows[2:3])
        batch = pending(conn)
        assert batch["event_id"].to_list() == [rows["event_id"][0], rows["event_id"][2]]
        late.commit()
        assert _mark(conn, batch, np.ones(batch.height, dtype=bool)) == 2
        assert conn.execute("select event_id from ops.outbox").fetchall() == [(rows["event_id"][1],)]
        assert conn.execute("select count(*) from ops.outbox_sent").fetchone() == (2,)


def test_a_bulk_produce_pauses_the_collector_and_restores_it_whatever_happens() -> None:
    import gc

    from mdpipeline.distribute.publisher import paused_gc

    seen: list[bool] = []

    def fail_inside() -> None:
        with paused_gc():
            seen.append(gc.isenabled())
            raise RuntimeError("inside")

    assert gc.isenabled()
    with pytest.raises(RuntimeError, match="inside"):
        fail_inside()
    assert seen == [False]
    assert gc.isenabled()
    gc.disable()  # a caller that runs without the collector keeps it off
    try:
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
