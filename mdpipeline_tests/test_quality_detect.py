"""All detectors over one partition range: history for context, findings for the window only."""

from __future__ import annotations

from datetime import date

import polars as pl

from mdpipeline.providers.synthetic import SyntheticProvider
from mdpipeline.quality.detectors import detect
from mdpipeline.quality.thresholds import Thresholds
from mdpipeline.universe import ProviderSetup

SYMBOLS = ("AAPL", "MSFT", "NVDA")
START, END = date(2024, 6, 3), date(2024, 6, 14)


def synthetic(anomalies: list[dict]) -> pl.DataFrame:
    setup = ProviderSetup("synthetic", True, SYMBOLS, {"seed": 7, "anomalies": anomalies})
    provider = SyntheticProvider(setup)
    return provider._apply_anomalies(provider.daily_bars(SYMBOLS, date(2024, 3, 1), END), "bars_1d")


def test_history_feeds_the_bands_but_only_the_window_is_reported() -> None:
    bars = synthetic([{"kind": "spike", "symbol": "AAPL", "date": "2024-05-15"},
                      {"kind": "spike", "symbol": "MSFT", "date": "2024-06-05"}])
    history, frame = bars.filter(pl.col("session_date") < START), bars.filter(pl.col("session_date") >= START)
    report = detect(frame, START, END, thresholds=Thresholds(), history=history, instruments=SYMBOLS)
    assert report.findings.select("instrument", "session_date", "kind").rows() == [
        ("MSFT", date(2024, 6, 5), "return_outlier")]
    assert report.completeness.pct == 100.0
    assert report.rows == frame.height
    # One session alone has no return to judge; with its history it has.
    day = frame.filter(pl.col("session_date") == date(2024, 6, 5))
    assert detect(day, date(2024, 6, 5), date(2024, 6, 5), thresholds=Thresholds()).of_kind(
        "return_outlier").is_empty()
    with_history = detect(day, date(2024, 6, 5), date(2024, 6, 5), thresholds=Thresholds(),
                          history=bars.filter(pl.col("session_date") < date(2024, 6, 5)))
    assert with_history.of_kind("return_outlier")["instrument"].to_list() == ["MSFT"]


def test_rows_outside_the_window_are_errors_and_not_context() -> None:
    bars = synthetic([])
    stray = bars.filter(pl.col("session_date") == date(2024, 6, 17) - date.resolution * 3).with_columns(
        session_date=pl.lit(date(2024, 6, 17)), close=pl.col("close") * 5)
    frame = pl.concat([bars.filter(pl.col("session_date") >= START), stray])
    report = detect(frame, START, END, thresholds=Thresholds(), history=bars.filter(pl.col("session_date") < START))
    assert report.findings.select("instrument", "session_date", "kind", "severity").rows() == [
        ("AAPL", date(2024, 6, 17), "outside_window", "error"),
        ("MSFT", date(2024, 6, 17), "outside_window", "error"),
        ("NVDA", date(2024, 6, 17), "outside_window", "error"),
    ]
    metrics = report.metrics({})
    assert metrics["flags_by_kind"] == {"outside_window": 3}
    assert (metrics["expected"], metrics["present"], metrics["rows_quarantined"]) == (30, 30, 0)
