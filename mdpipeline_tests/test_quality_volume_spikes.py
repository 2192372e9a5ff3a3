"""Volume spikes against the rolling median of previous (traded, split-adjusted) volumes."""

from __future__ import annotations

from datetime import date

import polars as pl

from mdpipeline.quality.volume_spikes import volume_spikes
from mdpipeline.sessions import session_dates

DAYS = session_dates(date(2024, 1, 2), date(2024, 3, 1))


def daily(volumes: list[float], symbol: str = "AAA") -> pl.DataFrame:
    return pl.DataFrame({"symbol": symbol, "session_date": DAYS[: len(volumes)], "volume": volumes},
                        schema_overrides={"volume": pl.Float64})


def test_a_bar_above_k_times_the_median_is_flagged() -> None:
    bars = daily([1000.0] * 10 + [20_000.0, 5_000.0, 1000.0])
    found = volume_spikes(bars, k=10, window=5, min_periods=3)
    assert found.select("session_date", "kind", "severity", "value").rows() == [
        (DAYS[10], "volume_spike", "warn", 20.0)]
    assert found["detail"][0] == "volume 20000.0 is 20.0x the median of the previous 5 bars"


def test_no_trades_bars_are_not_a_baseline() -> None:
    bars = daily([1000.0, 1000.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1200.0])
    assert volume_spikes(bars, k=10, window=5, min_periods=2).is_empty()  # median of traded bars: 1000
    assert volume_spikes(daily([0.0] * 6 + [500.0]), k=10, window=5, min_periods=2).is_empty()  # no baseline


def test_split_ex_date_volume_is_adjusted() -> None:
    bars = daily([1000.0] * 8 + [20_000.0] * 4)  # a 20-for-1 split multiplies traded shares by 20
    split = pl.DataFrame({"symbol": ["AAA"], "ex_date": [DAYS[8]], "action": ["split"], "ratio": [20.0],
                          "amount": [None]}, schema_overrides={"amount": pl.Float64})
    # unadjusted, the median of the previous 5 bars stays at the old level for three bars
    assert volume_spikes(bars, k=10, window=5, min_periods=3)["session_date"].to_list() == DAYS[8:11]
    assert volume_spikes(bars, k=10, window=5, min_periods=3, actions=split).is_empty()


def test_instruments_have_their_own_baselines() -> None:
    bars = pl.concat([daily([10.0] * 8), daily([5000.0] * 8, "BBB")])
    assert volume_spikes(bars, k=10, window=5, min_periods=3).is_empty()
