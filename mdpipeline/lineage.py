"""Row-level lineage of daily bars: from a stored row back to its raw payload and forward to its events.

For (symbol, session date[, provider]) this finds the `md.bars_1d` row, the `raw.payloads` entry it was
parsed from, the run that stored it, the quarantine entries of that symbol and session (rows held back
by validation or normalization), the event that carries the row on `md.bars.1d.v1` (key and the
deterministic `event_id`, recomputed from the stored row exactly as the publisher computes it), and
the outbox entries (`ops.outbox_events`: pending and sent) that announced that event, and the
publications (`ops.publications`) whose range covers the session. Pure core: no Dagster.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from datetime import date, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from mdpipeline.distribute.events import bar_events
from mdpipeline.distribute.subscriber import read_topic
from mdpipeline.distribute.topics import BARS_1D
from mdpipeline.storage.bars import read_bars_1d

DATASET = "bars_1d"

@dataclass(frozen=True)
class Payload:
    """The `raw.payloads` entry a row was parsed from (the body itself is left out; `bytes` is its size as sent)."""

    payload_id: int
    provider: str
    dataset: str
    session_date: date
    session_end: date
    request_key: str
    endpoint: str
    params: dict[str, Any]
    status: int
    content_type: str
    sha256: str
    bytes: int
    fetched_at: datetime
    first_run_id: str
    last_run_id: str
    last_seen_at: datetime


@dataclass(frozen=True)
class QuarantineEntry:
    """A row of that symbol and session held back by a check, with the reason."""

    quarantine_id: int
    provider: str
    stage: str
    check_name: str
    reason: str
    row_data: dict[str, Any]
    raw_payload_id: int | None
    run_id: str
    quarantined_at: datetime


@dataclass(frozen=True)
class Publication:
    """One confirmed publication (`ops.publications`) whose session range covers the row."""

    publication_id: int
    topic: str
    provider: str
    partition_start: date
    partition_end: date
    messages: int
    run_id: str
    published_at: datetime


@dataclass(frozen=True)
class OutboxEntry:
    """The event as written to the transactional outbox next to the row, and when it was sent."""

    outbox_id: int
    topic: str
    headers: dict[str, Any]
    created_at: datetime
    published_at: datetime | None
    dead_letter_reason: str | None


@dataclass(frozen=True)
class Event:
    """The message that carries the stored row: topic, key and deterministic event id."""

    topic: str
    key: str
    event_id: str
    value: str


@dataclass(frozen=True)
class BarLineage:
    """Everything known about one provider's bar of (symbol, session_date)."""

    symbol: str
    session_date: date
    provider: str
    row: dict[str, Any] | None  # the md.bars_1d row; None when it was quarantined (or never stored)
    payload: Payload | None
    quarantine: list[QuarantineEntry] = field(default_factory=list)
    event: Event | None = None
    outbox: list[OutboxEntry] = field(default_factory=list)
    publications: list[Publication] = field(default_factory=list)

    @property
    def run_id(self) -> str | None:
        """The Dagster run that stored the row."""
        return None if self.row is None else self.row["run_id"]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (dates and times as ISO strings)."""
        return json.loads(json.dumps(asdict(self) | {"run_id": self.run_id}, default=_iso))


def _iso(value: object) -> str:
    if isinstance(value, date | datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def bar_lineage(
    conn: psycopg.Connection, symbol: str, session_date: date, provider: str | None = None
) -> list[BarLineage]:
    """Lineage of the bar of `symbol` on `session_date`, one entry per provider that stored or quarantined it.

    The symbol matches the stored ticker or, through `ref.symbology`, any instrument that held the
    ticker on that date.
    """
    symbol = symbol.upper()
    instrument_ids = [r[0] for r in conn.execute(
        "select instrument_id from ref.symbology where symbol = %s and %s between valid_from and valid_to",
        (symbol, session_date))]
    stored = read_bars_1d(conn, start=session_date, end=session_date, provider=provider)
    stored = stored.filter((stored["symbol"] == symbol) | stored["instrument_id"].is_in(instrument_ids))
    quarantine = _quarantine(conn, symbol, session_date, provider)
    providers = sorted(set(stored["provider"]) | {q.provider for q in quarantine})
    lineages = []
    for name in providers:
        rows = stored.filter(stored["provider"] == name)
        row = rows.row(0, named=True) if rows.height else None
        held = [q for q in quarantine if q.provider == name]
        payload_id = row["raw_payload_id"] if row else next((q.raw_payload_id for q in held if q.raw_payload_id), None)
        event = None
        if rows.height:
            encoded = bar_events(rows.head(1), BARS_1D.name).row(0, named=True)
            event = Event(topic=BARS_1D.name, key=encoded["key"], event_id=encoded["event_id"], value=encoded["value"])
        lineages.append(BarLineage(
            symbol=row["symbol"] if row else symbol, session_date=session_date, provider=name, row=row,
            payload=_payload(conn, payload_id) if payload_id is not None else None, quarantine=held, event=event,
            outbox=_outbox(conn, event) if event else [],
            publications=_publications(conn, name, session_date) if row else [],
        ))
    return lineages


def _columns(row_type: type, **sources: str) -> str:
    """The select list of a row dataclass: its fields, each read from the column of that name or `sources`."""
    return ", ".join(f"{sources[f.name]} as {f.name}" if f.name in sources else f.name for f in fields(row_type))


def _payload(conn: psycopg.Connection, payload_id: int) -> Payload | None:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            f"select {_columns(Payload, bytes='body_size')} from raw.payloads where payload_id = %s",
            (payload_id,)).fetchone()
    return Payload(**row) if row else None


def _quarantine(
    conn: psycopg.Connection, symbol: str, session_date: date, provider: str | None
) -> list[QuarantineEntry]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"select {_columns(QuarantineEntry)} from quality.quarantine where dataset = %s and session_date = %s"
            " and upper(symbol) = %s and (%s::text is null or provider = %s) order by quarantine_id",
            (DATASET, session_date, symbol, provider, provider)).fetchall()
    return [QuarantineEntry(**r) for r in rows]


def _outbox(conn: psycopg.Connection, event: Event) -> list[OutboxEntry]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"select {_columns(OutboxEntry)} from ops.outbox_events where topic = %s and event_id = %s"
            " order by outbox_id",
            (event.topic, event.event_id)).fetchall()
    return [OutboxEntry(**r) for r in rows]


def _publications(conn: psycopg.Connection, provider: str, session_date: date) -> list[Publication]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"select {_columns(Publication)} from ops.publications where topic = %s and provider = %s"
            " and %s between partition_start and partition_end order by published_at, publication_id",
            (BARS_1D.name, provider, session_date)).fetchall()
    return [Publication(**r) for r in rows]


@dataclass(frozen=True)
class Delivery:
    """A message on the topic that carries the event: where it is and the lineage headers it came with."""

    partition: int
    offset: int
    key: str | None
    event_id: str
    headers: dict[str, str]


def deliveries(bootstrap_servers: str, events: Iterable[Event]) -> list[Delivery]:
    """Scan the events' topic (to its current end) for messages with their keys and event ids.

    Reads the whole topic: a diagnostic for the local broker or short retention, not a hot path.
    """
    wanted = {(e.key, e.event_id) for e in events}
    topics = {e.topic for e in events}
    found: list[Delivery] = []
    for topic in sorted(topics):
        for msg in read_topic(bootstrap_servers, topic):
            event_id = json.loads(msg.value).get("event_id", "")
            if (msg.key, event_id) in wanted:
                found.append(Delivery(partition=msg.partition, offset=msg.offset, key=msg.key, event_id=event_id,
                                      headers=msg.headers))
    return found


def describe(lineage: BarLineage, delivered: Iterable[Delivery] = ()) -> list[str]:
    """Human-readable lines, row -> run -> payload -> quarantine -> event -> publications -> messages."""
    x = lineage
    lines = []
    if x.row:
        prices = " ".join(f"{k} {x.row[k]}" for k in ("open", "high", "low", "close", "volume"))
        lines.append(f"row         md.bars_1d instrument {x.row['instrument_id']} · {prices}")
        lines.append(f"stored by   run {x.run_id} at {x.row['ingested_at']} (Dagster UI: /runs/{x.run_id})")
    else:
        lines.append("row         not in md.bars_1d")
    if x.payload:
        p = x.payload
        lines.append(f"raw         raw.payloads {p.payload_id} · {p.endpoint} {json.dumps(p.params)} · "
                     f"status {p.status} · {p.bytes} bytes · sha256 {p.sha256}")
        lines.append(f"            fetched {p.fetched_at} · first run {p.first_run_id} · last run {p.last_run_id}")
    lines += [f"quarantine  {q.stage}/{q.check_name}: {q.reason} (run {q.run_id})" for q in x.quarantine]
    if x.event:
        lines.append(f"event       {x.event.topic} key {x.event.key} event_id {x.event.event_id}")
    lines += [f"outbox      {o.outbox_id} · written {o.created_at} by run {o.headers.get('mdp-run-id')} · "
              + (f"sent {o.published_at}" if o.published_at else "pending")
              + (f" · dead-lettered: {o.dead_letter_reason}" if o.dead_letter_reason else "") for o in x.outbox]
    lines += [f"published   run {pub.run_id} · {pub.partition_start}..{pub.partition_end} · "
              f"{pub.messages} messages confirmed at {pub.published_at}" for pub in x.publications]
    lines += [f"on topic    partition {d.partition} offset {d.offset} · run {d.headers.get('mdp-run-id')} · "
              f"{d.headers.get('mdp-partition-start')}..{d.headers.get('mdp-partition-end')}" for d in delivered]
    return lines
