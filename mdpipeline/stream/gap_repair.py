"""Gap repair: backfill a stream's missed interval from the provider's REST API and reconcile it with md.ticks.

Collectors land a gap marker after every reconnect; the real-time job records it in `ops.stream_gaps`.
`repair_gaps` takes each open gap (`repair_status` null), fetches the trades of
[disconnected_at - margin, reconnected_at + margin] from the provider's history, and in ONE transaction
(with the gap row locked, so concurrent repairers apply a gap once):

- new trades (trade id not in md.ticks) are inserted and announced on `md.ticks.v1` (action `new`);
- duplicates (same trade id with the same ts, price, size, exchange and conditions, i.e. what the
  stream delivered before it dropped or after it came back) are dropped;
- corrections (same trade id, different content; Alpaca `u` = `corrected`) replace the stored row
  and are announced as a `cancel` of the stored version and a `new` with `corrects` = the trade id;
- cancels (Alpaca `u` = `canceled` or `incorrect`) delete the stored row and are announced as `cancel`;
- the stored rows that go are kept in `md.ticks_revisions` (change `correct` or `cancel`), and their
  events name the stored row's event (`original_event_id`, `mdpipeline.stream.corrections`);
- invalid or unmapped trades go to `quality.quarantine` (stage `gap_repair`);
- the gap is closed: `repaired_at`, `repair_status` = `repaired`, `repair_counts` (jsonb).

Re-running changes nothing: a closed gap is skipped, and re-reconciling the same interval finds only
duplicates. A provider without tick history (Finnhub's free tier) gets `repair_status` = `unrepairable`
with the reason in `repair_note` (`repaired_at` stays null); a fetch that fails (network, 403 on a
recent SIP window, missing credentials) leaves the gap open with the error in `repair_note`.

Identity: `id` sources (Alpaca, synthetic) match trades by (instrument, session date, provider trade id);
`content` sources (providers without stable trade ids) match by (instrument, ts, price, size, exchange).

Providers' historical trades:
- Alpaca market data v2 `GET /v2/stocks/trades?symbols=A,B&start&end&limit&feed&sort=asc&page_token`
  answers `{"trades": {"A": [{"t","x","p","s","c","i","z","u"?}, ...]}, "next_page_token": ...}`
  (sorted by symbol then time; `limit` counts over all symbols). Same credentials and base URL as the
  Alpaca provider (`ALPACA_API_KEY_ID`/`ALPACA_API_SECRET_KEY`, `MDP_ALPACA_BASE_URL`); the feed is
  the one the stream used (last path segment of `MDP_ALPACA_STREAM_URL`, default `iex`).
- Synthetic: regenerated with `mdpipeline.stream.synthetic.synthetic_history` (deterministic in time).
- Finnhub: no tick history on the free tier (its `/stock/tick` endpoint is premium): unrepairable.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import polars as pl
import psycopg

from mdpipeline.contracts.events import TICKS_EVENT_FIELDS, TICKS_OPTIONAL_FIELDS
from mdpipeline.contracts.realtime import CANONICAL_TICKS
from mdpipeline.distribute.outbox import append_outbox, outbox_rows
from mdpipeline.distribute.relay import drain
from mdpipeline.distribute.topics import DEAD_LETTER, TICKS, ensure_topics
from mdpipeline.providers import alpaca
from mdpipeline.providers.base import ProviderError
from mdpipeline.providers.http import HttpClient, HttpPolicy
from mdpipeline.providers.registry import SPECS
from mdpipeline.storage.binary_copy import copy_frame
from mdpipeline.storage.partitions import ensure_partitions
from mdpipeline.stream.corrections import ORIGINAL, retire_ticks, tick_event_ids
from mdpipeline.stream.process import quarantine_actions
from mdpipeline.stream.synthetic import synthetic_history
from mdpipeline.stream.ticks import normalize_ticks, stored_ticks

DEFAULT_MARGIN = timedelta(seconds=2)  # fetched around the gap: clock skew between collector and exchange
UNREPAIRABLE: dict[str, str] = {name: spec.unrepairable for name, spec in SPECS.items() if spec.unrepairable}
ALPACA_BASE_URL = alpaca.DEFAULT_BASE_URL
ALPACA_TRADES_PATH = "/v2/stocks/trades"
FETCHED_TRADES: dict[str, pl.DataType] = {
    "symbol": pl.String(), "ts": pl.Datetime("ns", "UTC"), "price": pl.Float64(), "size": pl.Float64(),
    "exchange": pl.String(), "conditions": pl.String(), "sequence": pl.Int64(), "update": pl.String(),
}
CANCELLING_UPDATES = ("canceled", "incorrect")
COUNTS = ("fetched", "inserted", "duplicates", "corrected", "cancelled", "already_absent", "quarantined")


class GapRepairError(RuntimeError):
    """The missed interval could not be fetched now (the gap stays open and is retried)."""


class TradeSource(Protocol):
    """A provider's trade history."""

    provider: str
    identity: Literal["id", "content"]

    def trades(self, symbols: Sequence[str], start: datetime, end: datetime) -> pl.DataFrame:
        """Trades with timestamps in [start, end] (columns `FETCHED_TRADES`)."""
        ...


def alpaca_trades_frame(records: Iterable[tuple[str, Mapping[str, Any]]]) -> pl.DataFrame:
    """(symbol, Alpaca trade object) pairs -> `FETCHED_TRADES` (timestamps kept to the nanosecond)."""
    rows = [{"symbol": s, "t": t.get("t"), "price": t.get("p"), "size": t.get("s"), "exchange": t.get("x"),
             "conditions": ",".join(t["c"]) if isinstance(t.get("c"), list) else None,
             "sequence": t.get("i"), "update": t.get("u")} for s, t in records]
    if not rows:
        return pl.DataFrame(schema=FETCHED_TRADES)
    frame = pl.DataFrame(rows, schema={**FETCHED_TRADES, "ts": pl.String(), "t": pl.String()}, orient="row")
    return frame.with_columns(
        pl.col("t").str.to_datetime("%Y-%m-%dT%H:%M:%S%.fZ", time_unit="ns", time_zone="UTC", strict=False)
        .alias("ts")).select(list(FETCHED_TRADES))


def _rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class AlpacaTrades:
    """Alpaca market data v2 historical trades (paginated by `next_page_token`)."""

    key_id: str
    secret_key: str
    base_url: str = ALPACA_BASE_URL
    feed: str = "iex"
    page_limit: int = 10_000  # the documented maximum
    symbols_per_request: int = 100
    max_pages: int = 10_000
    policy: HttpPolicy = field(default_factory=lambda: HttpPolicy(**alpaca.DEFAULT_POLICY))
    provider: str = "alpaca"
    identity: Literal["id", "content"] = "id"
    pages: int = 0

    @classmethod
    def from_env(cls, base_url: str | None = None, options: Mapping[str, Any] | None = None) -> AlpacaTrades:
        """Credentials and base URL as for the Alpaca provider; the feed of the stream being repaired."""
        stream = os.environ.get("MDP_ALPACA_STREAM_URL", "wss://stream.data.alpaca.markets/v2/iex")
        feed = urlsplit(stream).path.rstrip("/").rsplit("/", 1)[-1] or "iex"
        key_id, secret = (os.environ.get(v, "") for v in SPECS["alpaca"].credentials)
        return cls(key_id, secret, base_url=base_url or os.environ.get(SPECS["alpaca"].base_url_env or "")
                   or ALPACA_BASE_URL, feed=feed)

    def trades(self, symbols: Sequence[str], start: datetime, end: datetime) -> pl.DataFrame:
        if not self.key_id or not self.secret_key:
            raise GapRepairError("alpaca: ALPACA_API_KEY_ID and ALPACA_API_SECRET_KEY are needed for gap repair")
        client = HttpClient(self.provider, self.base_url, self.policy, secrets=(self.key_id, self.secret_key),
                            default_headers={"APCA-API-KEY-ID": self.key_id, "APCA-API-SECRET-KEY": self.secret_key})
        records: list[tuple[str, Mapping[str, Any]]] = []
        try:
            for i in range(0, len(symbols), self.symbols_per_request):
                params = {"symbols": ",".join(symbols[i:i + self.symbols_per_request]), "start": _rfc3339(start),
                          "end": _rfc3339(end), "limit": self.page_limit, "feed": self.feed, "sort": "asc"}
                records += self._pages(client, params)
        finally:
            client.close()
        return alpaca_trades_frame(records)

    def _pages(self, client: HttpClient, params: dict[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
        records: list[tuple[str, Mapping[str, Any]]] = []
        seen: set[str] = set()
        token: str | None = None
        for _ in range(self.max_pages):
            doc = client.get_json(ALPACA_TRADES_PATH, {**params, "page_token": token}).json()
            self.pages += 1
            if not isinstance(doc, dict) or not isinstance(doc.get("trades") or {}, dict):
                raise GapRepairError(f"alpaca: {ALPACA_TRADES_PATH} answered an unexpected document")
            for symbol, trades in (doc.get("trades") or {}).items():
                records += [(symbol, t) for t in trades or []]
            token = doc.get("next_page_token")
            if not token:
                return records
            if token in seen:
                raise GapRepairError(f"alpaca: next_page_token {token!r} returned twice: pagination loop")
            seen.add(token)
        raise GapRepairError(f"alpaca: {ALPACA_TRADES_PATH} has more than {self.max_pages} pages")


@dataclass
class SyntheticTrades:
    """The synthetic provider's history, regenerated deterministically."""

    seed: int = 7
    provider: str = "synthetic"
    identity: Literal["id", "content"] = "id"

    @classmethod
    def from_env(cls, base_url: str | None = None, options: Mapping[str, Any] | None = None) -> SyntheticTrades:
        """The history of the synthetic provider with its universe `seed` option."""
        return cls(seed=int((options or {}).get("seed", 7)))

    def trades(self, symbols: Sequence[str], start: datetime, end: datetime) -> pl.DataFrame:
        return alpaca_trades_frame((t["S"], t) for t in synthetic_history(symbols, start, end, seed=self.seed))


@dataclass(frozen=True)
class Gap:
    """One row of ops.stream_gaps."""

    gap_id: int
    provider: str
    topic: str
    raw_offset: int
    disconnected_at: datetime
    reconnected_at: datetime
    reason: str


@dataclass(frozen=True)
class GapRepair:
    """What happened to one gap: repaired | unrepairable | failed (stays open) | skipped (closed meanwhile)."""

    gap_id: int
    provider: str
    status: str
    counts: dict[str, int] = field(default_factory=dict)
    note: str | None = None


@dataclass
class RepairReport:
    """What a repair pass did."""

    repairs: list[GapRepair] = field(default_factory=list)
    published: int = 0

    @property
    def failed(self) -> list[GapRepair]:
        return [r for r in self.repairs if r.status == "failed"]

    def total(self, count: str) -> int:
        return sum(r.counts.get(count, 0) for r in self.repairs)


def open_gaps(conn: psycopg.Connection, provider: str | None = None) -> list[Gap]:
    """Gaps not repaired and not marked unrepairable, oldest first."""
    rows = conn.execute(
        "select gap_id, provider, topic, raw_offset, disconnected_at, reconnected_at, reason from ops.stream_gaps"
        " where repair_status is null and (%s::text is null or provider = %s) order by gap_id",
        (provider, provider)).fetchall()
    return [Gap(*r) for r in rows]


def default_symbols(symbology: pl.DataFrame, start: date, end: date) -> list[str]:
    """Every symbol some instrument holds during [start, end] (what a stream could have stored)."""
    valid = symbology.filter((pl.col("valid_from") <= end) & (pl.col("valid_to").fill_null(date.max) >= start))
    return sorted(set(valid["symbol"].to_list()))


def repair_gaps(
    conn: psycopg.Connection,
    bootstrap_servers: str | None,
    *,
    sources: Mapping[str, TradeSource],
    symbology: pl.DataFrame,
    run_id: str,
    calendar_name: str = "XNYS",
    symbols: Mapping[str, Sequence[str]] | None = None,
    margin: timedelta = DEFAULT_MARGIN,
    provider: str | None = None,
) -> RepairReport:
    """Repair every open gap (of `provider`, or all); then relay the outbox when a broker is given."""
    report = RepairReport()
    for gap in open_gaps(conn, provider):
        report.repairs.append(repair_gap(conn, gap, sources.get(gap.provider), symbology=symbology, run_id=run_id,
                                         calendar_name=calendar_name, margin=margin,
                                         symbols=(symbols or {}).get(gap.provider)))
    if bootstrap_servers and any(r.counts.get("events") for r in report.repairs):
        ensure_topics(bootstrap_servers, (TICKS, DEAD_LETTER))
        report.published = drain(conn, bootstrap_servers, topics=(TICKS.name, DEAD_LETTER.name)).total
    return report


def repair_gap(
    conn: psycopg.Connection,
    gap: Gap,
    source: TradeSource | None,
    *,
    symbology: pl.DataFrame,
    run_id: str,
    calendar_name: str = "XNYS",
    margin: timedelta = DEFAULT_MARGIN,
    symbols: Sequence[str] | None = None,
) -> GapRepair:
    """Fetch, reconcile and close one gap (see the module docstring); the database work is one transaction."""
    if source is None:
        note = UNREPAIRABLE.get(gap.provider, f"{gap.provider}: no REST trade history source for gap repair")
        with conn.transaction():
            closed = conn.execute(
                "update ops.stream_gaps set repair_status = 'unrepairable', repair_note = %s, repair_run_id = %s"
                " where gap_id = %s and repair_status is null", (note, run_id, gap.gap_id)).rowcount
        return GapRepair(gap.gap_id, gap.provider, "unrepairable" if closed else "skipped", note=note)
    start, end = gap.disconnected_at - margin, gap.reconnected_at + margin
    wanted = list(symbols or default_symbols(symbology, start.date(), end.date()))
    try:
        fetched = source.trades(wanted, start, end) if wanted else pl.DataFrame(schema=FETCHED_TRADES)
    except (GapRepairError, ProviderError, OSError) as exc:
        note = f"fetch failed: {type(exc).__name__}: {exc}"[:1000]
        conn.execute("update ops.stream_gaps set repair_note = %s where gap_id = %s and repair_status is null",
                     (note, gap.gap_id))
        return GapRepair(gap.gap_id, gap.provider, "failed", note=note)
    headers = {"mdp-run-id": run_id, "mdp-provider": gap.provider, "mdp-gap-id": str(gap.gap_id),
               "mdp-raw-topic": gap.topic, "mdp-repair-window": f"{_rfc3339(start)}/{_rfc3339(end)}"}
    with conn.transaction():
        row = conn.execute("select repair_status from ops.stream_gaps where gap_id = %s for update",
                           (gap.gap_id,)).fetchone()
        if row is None or row[0] is not None:
            return GapRepair(gap.gap_id, gap.provider, "skipped")
        counts = reconcile(conn, gap.provider, fetched, symbology=symbology, run_id=run_id,
                           calendar_name=calendar_name, identity=source.identity, headers=headers)
        conn.execute(
            "update ops.stream_gaps set repaired_at = now(), repair_status = 'repaired', repair_note = null,"
            " repair_counts = %s::jsonb, repair_run_id = %s where gap_id = %s",
            (json.dumps({k: counts[k] for k in COUNTS}), run_id, gap.gap_id))
    return GapRepair(gap.gap_id, gap.provider, "repaired", counts)


_STORED: dict[str, pl.DataType] = {
    "instrument_id": pl.Int64(), "session_date": pl.Date(), "sequence": pl.Int64(), "s_ts": pl.Datetime("us", "UTC"),
    "s_price": pl.Float64(), "s_size": pl.Float64(), "s_exchange": pl.String(), "s_conditions": pl.String(),
    "s_event_id": pl.String(),
}


def reconcile(
    conn: psycopg.Connection,
    provider: str,
    fetched: pl.DataFrame,
    *,
    symbology: pl.DataFrame,
    run_id: str,
    calendar_name: str = "XNYS",
    identity: Literal["id", "content"] = "id",
    headers: Mapping[str, str] | None = None,
) -> dict[str, int]:
    """Apply fetched trades to md.ticks (call inside a transaction); returns the counts (`COUNTS`, `events`)."""
    actions = fetched.with_columns(
        pl.lit(provider).alias("provider"),
        pl.when(pl.col("update").is_in(CANCELLING_UPDATES)).then(pl.lit("cancel")).otherwise(pl.lit("new"))
        .alias("action"),
        pl.lit(None, pl.Int64).alias("corrects"),
        pl.int_range(pl.len(), dtype=pl.Int64).alias("position"),
    )
    normalized = normalize_ticks(actions, symbology, calendar_name)
    quarantine_actions(conn, normalized.rejected, run_id, stage="gap_repair")
    key = ["instrument_id", "session_date", "sequence"] if identity == "id" else \
        ["instrument_id", "session_date", "_ts_us", "price", "size", "_exchange"]
    ticks = normalized.ticks.with_columns(
        pl.col("ts").dt.cast_time_unit("us").alias("_ts_us"), pl.col("exchange").fill_null("").alias("_exchange"),
    ).unique(subset=key, keep="last", maintain_order=True)
    stored = _stored_matches(conn, provider, ticks, identity)
    if identity == "content":
        stored = stored.with_columns(
            pl.col("s_ts").alias("_ts_us"), pl.col("s_price").alias("price"), pl.col("s_size").alias("size"),
            pl.col("s_exchange").fill_null("").alias("_exchange"))
        stored = stored.drop("sequence").unique(subset=key, keep="first")
    joined = ticks.join(stored, on=key, how="left")
    found = pl.col("s_ts").is_not_null()
    same = ((pl.col("_ts_us") == pl.col("s_ts")) & (pl.col("price") == pl.col("s_price"))
            & (pl.col("size") == pl.col("s_size")) & pl.col("exchange").eq_missing(pl.col("s_exchange"))
            & pl.col("conditions").eq_missing(pl.col("s_conditions")))
    is_new = pl.col("action") == "new"
    inserts = joined.filter(is_new & ~found)
    duplicates = joined.filter(is_new & found & same)
    corrections = joined.filter(is_new & found & ~same)
    cancels = joined.filter(~is_new & found)
    absent = joined.filter(~is_new & ~found)

    removed = pl.concat([cancels, corrections])  # stored rows that go: cancelled, or replaced by a correction
    now = datetime.now(UTC)
    retire_ticks(conn, removed.select(
        "instrument_id", "provider", "session_date",
        pl.col("s_sequence").alias("sequence") if identity == "content" else "sequence",
        pl.when(pl.col("action") == "cancel").then(pl.lit("cancel")).otherwise(pl.lit("correct")).alias("change"),
        pl.when(pl.col("action") == "cancel").then(None).otherwise(pl.col("sequence")).alias("superseded_by"),
    ), run_id, now)
    # Events: the stored versions that went (cancel), then the trades that came (new; corrections name the id);
    # both name the event that announced the stored version.
    cancelled = removed.select(
        "instrument_id", "symbol", "session_date", pl.col("s_ts").dt.cast_time_unit("ns").alias("ts"), "provider",
        pl.lit("cancel").alias("action"), pl.col("s_price").alias("price"), pl.col("s_size").alias("size"),
        pl.col("s_exchange").alias("exchange"), pl.col("s_conditions").alias("conditions"),
        pl.col("s_sequence").alias("sequence") if identity == "content" else "sequence",
        pl.lit(None, pl.Int64).alias("corrects"), pl.col("s_event_id").alias(ORIGINAL))
    arrived = pl.concat([
        inserts.with_columns(pl.lit(None, pl.Int64).alias("corrects"), pl.lit(None, pl.String).alias(ORIGINAL)),
        corrections.with_columns(pl.col("sequence").alias("corrects"), pl.col("s_event_id").alias(ORIGINAL)),
    ]).select(*CANONICAL_TICKS, ORIGINAL)
    events = pl.concat([cancelled.cast(CANONICAL_TICKS), arrived.cast(CANONICAL_TICKS)])  # type: ignore[arg-type]
    events = events.with_columns(tick_event_ids(events).alias("event_id"))
    written = events.filter(pl.col("action") == "new")
    if written.height:
        ensure_partitions(conn, "md.ticks", written["session_date"].min(), written["session_date"].max())  # type: ignore[arg-type]
        rows = stored_ticks(written, run_id, pl.lit(now))
        conn.execute("create temporary table _gap_ticks (like md.ticks) on commit drop")
        with conn.cursor() as cur:
            copy_frame(cur, "_gap_ticks", rows)
        columns = ", ".join(rows.columns)
        conn.execute(f"insert into md.ticks ({columns}) select {columns} from _gap_ticks on conflict do nothing")
    if events.height:
        append_outbox(conn, outbox_rows(events, TICKS.name, TICKS_EVENT_FIELDS, dict(headers or {}),
                                        TICKS_OPTIONAL_FIELDS))
    return {"fetched": fetched.height, "inserted": inserts.height, "duplicates": duplicates.height,
            "corrected": corrections.height, "cancelled": cancels.height, "already_absent": absent.height,
            "quarantined": normalized.rejected.height, "events": events.height}


def _stored_matches(conn: psycopg.Connection, provider: str, ticks: pl.DataFrame, identity: str) -> pl.DataFrame:
    """md.ticks rows of `provider` that fetched trades match (by trade id, or by content)."""
    schema = {**_STORED, "s_sequence": pl.Int64()}
    if not ticks.height:
        return pl.DataFrame(schema=schema)
    conn.execute("create temporary table _gap_keys (instrument_id bigint, session_date date, sequence bigint,"
                 " ts timestamptz, price double precision, size double precision, exchange text) on commit drop")
    with conn.cursor() as cur:
        copy_frame(cur, "_gap_keys", ticks.select("instrument_id", "session_date", "sequence",
                                                  pl.col("_ts_us").alias("ts"), "price", "size", "exchange"))
    match = ("t.sequence = k.sequence" if identity == "id" else
             "t.ts = k.ts and t.price = k.price and t.size = k.size and t.exchange is not distinct from k.exchange")
    rows = conn.execute(
        "select distinct t.instrument_id, t.session_date, k.sequence, t.ts, t.price, t.size, t.exchange,"
        " t.conditions, t.event_id, t.sequence from md.ticks t join _gap_keys k on t.instrument_id = k.instrument_id"
        f" and t.session_date = k.session_date and {match} where t.provider = %s", (provider,)).fetchall()
    conn.execute("drop table _gap_keys")
    return pl.DataFrame(rows, schema=schema, orient="row")
