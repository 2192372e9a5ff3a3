"""Helpers shared by the pipeline tests: settings for the test services, reading back events."""

from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path

import numpy as np
import polars as pl
import yaml

from mdpipeline.contracts.frames import STORED_BARS_1M
from mdpipeline.distribute.subscriber import Event, read_topic
from mdpipeline.sessions import session_bounds
from mdpipeline.settings import DEFAULT_FILES_DIR, DEFAULT_UNIVERSE, Settings


def settings_for(database_url: str, kafka_bootstrap: str, universe: Path = DEFAULT_UNIVERSE,
                  files_dir: Path = DEFAULT_FILES_DIR) -> Settings:
    """Settings pointing at the test services."""
    return Settings(database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap,
                    universe_path=universe, files_dir=files_dir)


def universe_with(tmp_path: Path, **synthetic_options: object) -> Path:
    """A copy of the checked-in universe with extra synthetic-provider options (e.g. anomalies)."""
    doc = yaml.safe_load(DEFAULT_UNIVERSE.read_text())
    doc["providers"]["synthetic"].update(synthetic_options)
    path = tmp_path / "universe.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def events_of_run(bootstrap: str, topic: str, run_id: str) -> list[Event]:
    """Every message on `topic` (read to its high watermarks) whose lineage header names `run_id`."""
    return [e for e in read_topic(bootstrap, topic) if e.headers.get("mdp-run-id") == run_id]


def stored_minute_bars(start: date, end: date, instruments: int, learnt: datetime, *, provider: str = "file",
                       shift: float = 0.0) -> pl.DataFrame:
    """Every regular-session minute of the XNYS sessions [start, end] for instruments 1..n, in stored
    columns (`md.bars_1m`'s); `shift` moves every price (a correction changes every bar)."""
    minutes = session_bounds(start, end, "XNYS").select(
        "session_date", pl.datetime_ranges("open", "close", "1m", closed="left").alias("ts")).explode("ts")
    frame = pl.concat([minutes.with_columns(pl.lit(i).alias("instrument_id"), pl.lit(f"S{i}").alias("symbol"))
                       for i in range(1, instruments + 1)])
    price = 100.0 + shift + pl.int_range(pl.len()).over("instrument_id", "session_date") * 0.01
    return frame.with_columns(
        pl.lit(provider).alias("provider"), price.alias("open"), (price + 0.05).alias("high"),
        (price - 0.05).alias("low"), (price + 0.01).alias("close"), (pl.int_range(pl.len()) % 97 + 1.0).alias("volume"),
        price.alias("vwap"), pl.lit(10).alias("trades"), pl.lit(None).alias("raw_payload_id"),
        pl.lit("r").alias("run_id"), pl.lit(learnt).alias("ingested_at"),
    ).select([pl.col(c).cast(t) for c, t in STORED_BARS_1M.items()])


def canonical_bars(n: int, session: date, *, provider: str = "synthetic") -> pl.DataFrame:
    """n canonical daily bars of one session over instruments 1..n (random, reproducible prices)."""
    rng = np.random.default_rng(n)
    close = rng.uniform(10, 500, n)
    return pl.DataFrame({
        "instrument_id": np.arange(1, n + 1, dtype=np.int64), "symbol": [f"S{i}" for i in range(n)],
        "session_date": [session] * n, "provider": [provider] * n,
        "open": close, "high": close * 1.01, "low": close * 0.99, "close": close,
        "volume": rng.uniform(1e5, 1e6, n), "vwap": close, "trades": np.full(n, 100, dtype=np.int64),
    })


def event_values(events: list[Event]) -> list[dict]:
    """Parsed JSON values."""
    return [json.loads(e.value) for e in events]
