"""Benchmark publishing: the project's path against a raw producer, and real-time end-to-end latency.

    python bench/publish.py [--messages 200000] [--sessions 5000] [--ticks 200]

Uses MDP_KAFKA_BOOTSTRAP_SERVERS / MDP_DATABASE_URL when set, otherwise starts a throwaway Apache
Kafka broker and PostgreSQL cluster here (stopped at the end). In the same run it measures:

- raw producer:   produce() + poll(0) of messages encoded before the timer starts (keys, values and
                  headers), same producer settings (idempotent, acks=all, lz4), one flush: the
                  client's and broker's limit;
- project path:   bar_events (columnar JSON + event ids) + publish (per-message delivery reports,
                  raises unless every message is confirmed);
- outbox path:    for daily-bar events and for minute-bar session events (md.bars.1m.v1, ~20 kB),
                  the relay (read pending rows, send, wait for every confirmation, mark published)
                  against a raw producer of exactly the messages it sends; the outbox write (COPY
                  into ops.outbox, part of the store step's transaction) is timed on its own;
- latency:        per tick, from the raw frame's Kafka timestamp (when the collector produced it) to
                  the md.ticks.v1 message's timestamp, processing each landed frame at once with the
                  real-time job's core (`process_range`); the sensor's interval and Dagster's run
                  launch come on top in a deployment.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import uuid
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_services import services

from mdpipeline.contracts.events import BARS_1D_EVENT_FIELDS
from mdpipeline.distribute.events import bar_events
from mdpipeline.distribute.outbox import outbox_rows, session_outbox_rows, write_outbox
from mdpipeline.distribute.publisher import Headers, make_producer, publish
from mdpipeline.distribute.relay import drain, message_headers
from mdpipeline.distribute.subscriber import read_topic
from mdpipeline.distribute.topics import BARS_1D, BARS_1M, TICKS, TopicSpec, ensure_topics
from mdpipeline.settings import DEFAULT_UNIVERSE
from mdpipeline.storage.database import connect
from mdpipeline.storage.migrations import migrate
from mdpipeline.stream.landing import RawLanding
from mdpipeline.stream.offsets import read_messages
from mdpipeline.stream.process import process_range
from mdpipeline.stream.synthetic import synthetic_frames
from mdpipeline.universe import load_universe


def bars(n: int) -> pl.DataFrame:
    """n daily bars over 500 instruments (realistic widths and values)."""
    rng = np.random.default_rng(1)
    instrument = rng.integers(1, 501, n)
    close = rng.uniform(5, 900, n).round(4)
    return pl.DataFrame({
        "instrument_id": instrument, "symbol": [f"SYM{i}" for i in instrument],
        "session_date": pl.date_range(date(2000, 1, 3), date(2000, 1, 3), eager=True).extend_constant(
            date(2000, 1, 3), n - 1),
        "provider": ["bench"] * n, "open": close, "high": close * 1.01, "low": close * 0.99, "close": close,
        "volume": rng.uniform(1e4, 1e7, n).round(), "vwap": close, "trades": rng.integers(1, 10_000, n),
    })


def minute_bars(sessions: int) -> pl.DataFrame:
    """390 one-minute bars per instrument session: 100 instruments (fewer when `sessions` < 100) over
    sessions // 100 days."""
    rng = np.random.default_rng(2)
    instruments = min(sessions, 100)
    days = max(1, sessions // instruments)
    n = days * instruments * 390
    day = np.repeat(np.arange(days), instruments * 390).astype("timedelta64[D]")
    instrument = np.tile(np.repeat(np.arange(1, instruments + 1), 390), days)
    minute = np.tile(np.arange(390), days * instruments).astype("timedelta64[m]")
    close = rng.uniform(5, 900, n).round(4)
    return pl.DataFrame({
        "instrument_id": instrument, "symbol": [f"SYM{i}" for i in instrument], "provider": ["bench"] * n,
        "session_date": np.datetime64("2000-01-03") + day,
        "ts": np.datetime64("2000-01-03T14:30", "us") + day + minute,
        "open": close, "high": close * 1.01, "low": close * 0.99, "close": close,
        "volume": rng.uniform(1e2, 1e5, n).round(), "vwap": close, "trades": rng.integers(1, 500, n),
    }).with_columns(pl.col("ts").dt.replace_time_zone("UTC"))


def raw_producer(bootstrap: str, topic: str, keys: list[bytes], values: list[bytes],
                 headers: list[Headers]) -> float:
    """Seconds to produce pre-serialized messages (headers included) and flush: the same producer
    settings, one produce() and poll(0) per message, no per-message callback."""
    producer = make_producer(bootstrap)
    started = time.perf_counter()
    for key, value, header in zip(keys, values, headers, strict=True):
        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=header)
                break
            except BufferError:
                producer.poll(0.5)
        producer.poll(0)
    if producer.flush(120) != 0:
        raise RuntimeError("raw producer: messages left unconfirmed")
    return time.perf_counter() - started


def outbox_path(bootstrap: str, url: str, label: str, rows: pl.DataFrame) -> None:
    """The relay against a raw producer of exactly the messages it sends (same keys, values, headers)."""
    topic = TopicSpec(f"bench.publish.{uuid.uuid4().hex[:6]}", partitions=6)
    ensure_topics(bootstrap, (topic,))
    rows = rows.with_columns(pl.lit(topic.name).alias("topic"))
    keys, values = rows["key"].cast(pl.Binary).to_list(), rows["value"].cast(pl.Binary).to_list()
    headers = message_headers(rows)
    raw_producer(bootstrap, topic.name, keys[:1000], values[:1000], headers[:1000])  # warm-up
    raw_s = raw_producer(bootstrap, topic.name, keys, values, headers)
    # The baseline's 200,000 pre-built header lists would otherwise stay alive through the relay's
    # run, and every full garbage collection during it would walk them.
    del keys, values, headers
    gc.collect()
    with connect(url) as conn:
        started = time.perf_counter()
        with conn.transaction():
            write_outbox(conn, rows)
        queued_s = time.perf_counter() - started
        started = time.perf_counter()
        report = drain(conn, bootstrap, topics=(topic.name,))
        relay_s = time.perf_counter() - started
        assert report.total == rows.height
        left = conn.execute("select count(*) from ops.outbox where topic = %s",
                            (topic.name,)).fetchone()
        assert left == (0,)
    n = rows.height
    size = rows["value"].str.len_bytes().mean()
    print(f"{label}: {n} messages ({size:,.0f} B values), topic with {topic.partitions} partitions")
    print(f"  raw producer, the same messages     {n / raw_s:12,.0f} msgs/s  ({raw_s:.2f} s)")
    print(f"  relay: read, send, confirm, mark    {n / relay_s:12,.0f} msgs/s  ({relay_s:.2f} s)  "
          f"ratio {raw_s / relay_s:.2f} of raw")
    print(f"  outbox write (COPY, store step)     {n / queued_s:12,.0f} rows/s  ({queued_s:.2f} s); with the "
          f"relay ratio {raw_s / (queued_s + relay_s):.2f} of raw")


def throughput(bootstrap: str, url: str, n: int, sessions: int) -> None:
    frame = bars(n)
    topic = TopicSpec(f"bench.publish.{uuid.uuid4().hex[:6]}", partitions=6)
    ensure_topics(bootstrap, (topic,))
    lineage = {"mdp-run-id": "bench", "mdp-provider": "bench", "mdp-partition-start": "2000-01-03",
               "mdp-partition-end": "2000-01-03"}
    pre = bar_events(frame, BARS_1D.name)  # encoded as md.bars.1d.v1 events, sent to a throwaway topic
    keys, values = [k.encode() for k in pre["key"]], [v.encode() for v in pre["value"]]
    common = [(k, v.encode()) for k, v in lineage.items()]
    raw_producer(bootstrap, topic.name, keys[:1000], values[:1000], [common] * 1000)  # warm-up
    raw_s = raw_producer(bootstrap, topic.name, keys, values, [common] * n)
    started = time.perf_counter()
    events = bar_events(frame, BARS_1D.name)
    encoded_s = time.perf_counter() - started
    publish(bootstrap, topic.name, events, lineage)
    project_s = time.perf_counter() - started
    print(f"direct publish, {n} daily-bar messages ({np.mean([len(v) for v in values]):.0f} B values)")
    print(f"  raw producer, pre-serialized bytes  {n / raw_s:12,.0f} msgs/s  ({raw_s:.2f} s)")
    print(f"  project: bar_events + publish       {n / project_s:12,.0f} msgs/s  ({project_s:.2f} s; "
          f"encoding {encoded_s:.2f} s)  ratio {raw_s / project_s:.2f} of raw")
    with connect(url) as conn:
        migrate(conn)
    outbox_path(bootstrap, url, "outbox, daily bars (md.bars.1d.v1 events)",
                outbox_rows(frame, BARS_1D.name, BARS_1D_EVENT_FIELDS, lineage))
    outbox_path(bootstrap, url, "outbox, minute-bar sessions (md.bars.1m.v1 events)",
                session_outbox_rows(minute_bars(sessions), BARS_1M.name, lineage))


def latency(bootstrap: str, url: str, ticks: int) -> None:
    raw_topic = TopicSpec(f"raw.stream.bench-{uuid.uuid4().hex[:6]}.v1", partitions=1)
    ensure_topics(bootstrap, (raw_topic, TICKS))
    landing = RawLanding(bootstrap, raw_topic.name, "synthetic")
    symbology = load_universe(DEFAULT_UNIVERSE).symbology
    frames = list(synthetic_frames(["AAPL", "MSFT", "NVDA"], start=datetime.now(UTC), frames=ticks, per_frame=1,
                                   correction_every=0))
    with connect(url) as conn:
        migrate(conn)
        for offset, frame in enumerate(frames):
            landing.land(frame)
            landing.flush()
            process_range(conn, bootstrap, topic=raw_topic.name, partition=0, first=offset, last=offset,
                          symbology=symbology, run_id="bench")
    raw = read_messages(bootstrap, raw_topic.name, 0, 0, idle=2.0)
    landed = dict(zip(raw["offset"].to_list(), raw["landed_at"].to_list(), strict=True))
    delays = []
    for event in read_topic(bootstrap, TICKS.name):
        if event.headers.get("mdp-raw-topic") != raw_topic.name:
            continue
        offset = int(event.headers["mdp-raw-offsets"].split(":")[1].split("-")[0])
        value = json.loads(event.value)
        delays.append((event_time(event) - landed[offset]).total_seconds() * 1000)
        assert value["data"]["provider"] == "synthetic"
    p50, p99 = np.percentile(delays, [50, 99])
    print(f"end-to-end latency, raw tick landed -> normalized md.ticks.v1 message, {len(delays)} ticks "
          f"(one range per tick, process_range called directly):")
    print(f"  p50 {p50:8.1f} ms   p99 {p99:8.1f} ms   max {max(delays):8.1f} ms")


def event_time(event: object) -> datetime:
    """The md.ticks.v1 message's Kafka timestamp (kept by consume() in `timestamp`)."""
    return datetime.fromtimestamp(event.timestamp / 1000, UTC)  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--sessions", type=int, default=5_000, help="minute-bar sessions (390 bars each)")
    parser.add_argument("--ticks", type=int, default=200)
    args = parser.parse_args()
    with services() as (bootstrap, url):
        throughput(bootstrap, url, args.messages, args.sessions)
        latency(bootstrap, url, args.ticks)


if __name__ == "__main__":
    main()
