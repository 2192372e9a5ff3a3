"""The synthetic provider's anomaly kinds for the quality detectors: gap, stale, divergence, volume_spike."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime

import polars as pl
import pytest

from mdpipeline.providers.base import Query
from mdpipeline.providers.synthetic import SyntheticProvider
from mdpipeline.universe import ProviderSetup

SYMBOLS = ("AAPL", "MSFT")


def make(anomalies: list[dict]) -> SyntheticProvider:
    return SyntheticProvider(ProviderSetup("synthetic", True, SYMBOLS, {"seed": 7, "anomalies": anomalies}))


def bars(provider: SyntheticProvider, dataset: str, start: date, end: date) -> pl.DataFrame:
    payloads = provider.extract(Query(dataset, start, end, SYMBOLS))
    frame = provider.transform(dataset, [dataclasses.replace(p, payload_id=i) for i, p in enumerate(payloads)])
    return frame.drop("raw_payload_id")


def of(frame: pl.DataFrame, symbol: str, *days: date) -> pl.DataFrame:
    return frame.filter(pl.col("symbol") == symbol, pl.col("session_date").is_in(list(days)))


CLEAN = bars(make([]), "bars_1d", date(2024, 6, 3), date(2024, 6, 14))


def test_gap_drops_consecutive_sessions() -> None:
    dirty = bars(make([{"kind": "gap", "symbol": "AAPL", "date": "2024-06-06", "length": 2}]),
                 "bars_1d", date(2024, 6, 3), date(2024, 6, 14))
    assert of(dirty, "AAPL", date(2024, 6, 6), date(2024, 6, 7)).is_empty()
    assert dirty.height == CLEAN.height - 2
    minutes = bars(make([{"kind": "gap", "symbol": "MSFT", "date": "2024-06-11"}]), "bars_1m",
                   date(2024, 6, 11), date(2024, 6, 11))
    assert minutes["symbol"].unique().to_list() == ["AAPL"]  # the whole session of MSFT is gone


def test_stale_freezes_bars_at_the_first_close_with_zero_volume() -> None:
    anomaly = {"kind": "stale", "symbol": "MSFT", "date": "2024-06-10", "length": 3}
    dirty = bars(make([anomaly]), "bars_1d", date(2024, 6, 3), date(2024, 6, 14))
    frozen = of(CLEAN, "MSFT", date(2024, 6, 10))["close"].item()
    run = of(dirty, "MSFT", date(2024, 6, 10), date(2024, 6, 11), date(2024, 6, 12))
    assert run.select("open", "high", "low", "close", "vwap").unique().rows() == [(frozen,) * 5]
    assert run["volume"].to_list() == [0.0] * 3
    assert run["trades"].to_list() == [0] * 3
    assert of(dirty, "MSFT", date(2024, 6, 13)).equals(of(CLEAN, "MSFT", date(2024, 6, 13)))
    # The same bars whatever range is queried (a later start does not change the frozen close).
    later = bars(make([anomaly]), "bars_1d", date(2024, 6, 11), date(2024, 6, 11))
    assert of(later, "MSFT", date(2024, 6, 11))["close"].item() == frozen


def test_stale_minutes_run_from_ts() -> None:
    start = datetime(2024, 6, 11, 15, 0, tzinfo=UTC)
    anomaly = {"kind": "stale", "symbol": "AAPL", "date": "2024-06-11", "ts": "2024-06-11T15:00:00Z", "length": 10}
    minutes = bars(make([anomaly]), "bars_1m", date(2024, 6, 11), date(2024, 6, 11))
    aapl = minutes.filter(pl.col("symbol") == "AAPL")
    run = aapl.filter(pl.col("volume") == 0)
    assert run["ts"].min() == start
    assert run.height == 10
    assert run["close"].n_unique() == 1


def test_divergence_moves_prices_by_basis_points_and_volume_spike_multiplies_volume() -> None:
    dirty = bars(make([{"kind": "divergence", "symbol": "AAPL", "date": "2024-06-05", "magnitude": 150},
                       {"kind": "volume_spike", "symbol": "MSFT", "date": "2024-06-05"}]),
                 "bars_1d", date(2024, 6, 3), date(2024, 6, 14))
    moved, clean = of(dirty, "AAPL", date(2024, 6, 5)), of(CLEAN, "AAPL", date(2024, 6, 5))
    for col in ("open", "high", "low", "close", "vwap"):
        assert moved[col].item() == pytest.approx(clean[col].item() * 1.015)
    assert moved["volume"].item() == clean["volume"].item()
    spiked, base = of(dirty, "MSFT", date(2024, 6, 5)), of(CLEAN, "MSFT", date(2024, 6, 5))
    assert spiked["volume"].item() == base["volume"].item() * 50  # the default magnitude
    assert spiked["close"].item() == base["close"].item()
    untouched = dirty.filter(pl.col("session_date") != date(2024, 6, 5))
    assert untouched.equals(CLEAN.filter(pl.col("session_date") != date(2024, 6, 5)))


def test_defaults_per_kind() -> None:
    anomalies = make([{"kind": k, "symbol": "AAPL", "date": "2024-06-05"}
                      for k in ("gap", "stale", "divergence", "volume_spike", "spike")]).anomalies
    assert [(a.kind, a.length, a.magnitude) for a in anomalies] == [
        ("gap", 1, None), ("stale", 5, None), ("divergence", None, 100.0), ("volume_spike", None, 50.0),
        ("spike", None, None)]


def test_duplicate_of_a_flat_bar_still_conflicts() -> None:
    setup = {"seed": 11, "anomalies": [{"kind": "duplicate", "symbol": "M001", "date": "2024-11-05",
                                        "ts": "2024-11-05T20:05:00Z"}]}
    source = SyntheticProvider(ProviderSetup("synthetic", True, ("M001",), setup))
    minutes = source.minute_bars(["M001"], date(2024, 11, 5), date(2024, 11, 5))
    flat = minutes.filter(pl.col("ts") == datetime(2024, 11, 5, 20, 5, tzinfo=UTC))
    assert flat.select("open", "high", "low", "close").unique().height == 1
    assert flat["high"].item() == flat["low"].item()  # a flat minute: no other price inside the bar
    dup = source._apply_anomalies(minutes, "bars_1m").filter(pl.col("ts") == flat["ts"].item())
    assert dup["close"].to_list() == [flat["close"].item(), flat["close"].item() + 0.01]
    assert dup.select((pl.col("high") >= pl.max_horizontal("open", "close")).all()).item()
