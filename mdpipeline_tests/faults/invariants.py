"""The invariants every fault case checks afterwards (those that apply to it).

- nothing duplicated: `md.ticks` holds one row per (provider, instrument, trade id); on a topic, an
  event id always stands for the same value (a message may arrive twice, never as two payloads);
- nothing stuck: after one more drain no outbox row is pending;
- no secret anywhere: not in any text or JSON column of the pipeline's schemas, not in the captured
  logs, not in a Dagster run's event log.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import dagster as dg
import psycopg

from mdpipeline.distribute.relay import drain
from mdpipeline.distribute.subscriber import Event

SCHEMAS = ("raw", "ref", "md", "quality", "ops")


def assert_ticks_unique(conn: psycopg.Connection) -> int:
    """No trade id twice in md.ticks (per provider and instrument); returns the number of ticks."""
    dupes = conn.execute("select provider, instrument_id, sequence, count(*) from md.ticks"
                         " group by 1, 2, 3 having count(*) > 1 limit 5").fetchall()
    assert dupes == [], f"duplicated ticks: {dupes}"
    row = conn.execute("select count(*) from md.ticks").fetchone()
    assert row is not None
    return int(row[0])


def assert_events_consistent(events: Iterable[Event]) -> dict[str, str]:
    """Each event id maps to one value, and the header id is the value's; returns id -> value."""
    by_id: dict[str, str] = {}
    for event in events:
        event_id = event.headers["mdp-event-id"]
        assert json.loads(event.value)["event_id"] == event_id
        assert by_id.setdefault(event_id, event.value) == event.value, f"event {event_id} has two payloads"
    return by_id


def assert_outbox_drained(conn: psycopg.Connection, bootstrap_servers: str) -> None:
    """One more drain leaves no pending outbox row."""
    drain(conn, bootstrap_servers)
    row = conn.execute("select count(*) from ops.outbox").fetchone()
    assert row == (0,), f"{row[0] if row else '?'} outbox rows still pending after a re-drain"


def assert_no_secret(secrets: Iterable[str], *, conn: psycopg.Connection | None = None, texts: Iterable[str] = (),
                     instance: dg.DagsterInstance | None = None) -> None:
    """None of `secrets` in the database's text/JSON columns, in `texts` (logs) or in the instance's event logs."""
    wanted = [s for s in secrets if s]
    for text in texts:
        for secret in wanted:
            assert secret not in text, f"a secret appears in captured output: ...{_around(text, secret)}..."
    if instance is not None:
        for run in instance.get_runs():
            for record in instance.all_logs(run.run_id):
                text = str(record)
                for secret in wanted:
                    assert secret not in text, f"a secret appears in the event log of run {run.run_id}"
    if conn is not None:
        columns = conn.execute(
            "select table_schema, table_name, column_name from information_schema.columns"
            " where table_schema = any(%s) and data_type in ('text', 'jsonb', 'json', 'character varying')",
            (list(SCHEMAS),)).fetchall()
        for schema, table, column in columns:
            for secret in wanted:
                found = conn.execute(f'select count(*) from "{schema}"."{table}" where "{column}"::text like %s',
                                     (f"%{secret}%",)).fetchone()
                assert found == (0,), f"a secret appears in {schema}.{table}.{column}"


def _around(text: str, secret: str) -> str:
    at = text.index(secret)
    return text[max(0, at - 40):at].replace(secret, "<secret>") + "<secret>"
