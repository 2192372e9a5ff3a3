"""Cross-provider divergence in basis points of the mid price."""

from __future__ import annotations

from datetime import date

import polars as pl
import pytest

from mdpipeline.quality.divergence import divergence

D1, D2 = date(2024, 6, 3), date(2024, 6, 4)


def bars(provider: str, rows: list[tuple[int, date, float]]) -> pl.DataFrame:
    """Bars with open = high = low = close."""
    frame = pl.DataFrame(rows, schema={"instrument_id": pl.Int64, "session_date": pl.Date, "close": pl.Float64},
                         orient="row")
    return frame.with_columns(provider=pl.lit(provider), open=pl.col("close"), high=pl.col("close"),
                              low=pl.col("close"))


def bps(a: float, b: float) -> float:
    return 1e4 * abs(a - b) / ((a + b) / 2)


def test_pairs_beyond_the_threshold_are_flagged_with_stats() -> None:
    frame = pl.concat([
        bars("alpaca", [(1, D1, 100.0), (1, D2, 101.0), (2, D1, 50.0), (2, D2, 50.0)]),
        bars("polygon", [(1, D1, 100.0), (1, D2, 102.0), (2, D1, 50.1), (3, D1, 9.0)]),
    ])
    result = divergence(frame, key="instrument_id", bps=50)
    assert result.pairs == 3  # (2, D2) and (3, D1) have one provider only
    found = result.findings.select("instrument", "session_date", "kind", "severity", "value").rows()
    assert found == [("1", D2, "divergence", "warn", pytest.approx(bps(101, 102)))]
    assert result.findings["detail"][0] == (
        f"alpaca vs polygon: open {round(bps(101, 102), 1)} bps, high {round(bps(101, 102), 1)} bps, "
        f"low {round(bps(101, 102), 1)} bps, close {round(bps(101, 102), 1)} bps")
    close = result.stats["close"]
    assert close["max"] == round(bps(101, 102), 2)
    assert close["mean"] == round((bps(101, 102) + bps(50, 50.1)) / 3, 2)
    assert close["over_threshold"] == 1
    assert result.as_dict()["pairs_flagged"] == 1


def test_one_provider_s_view_and_the_providers_it_is_compared_with() -> None:
    frame = pl.concat([bars("a", [(1, D1, 100.0)]), bars("b", [(1, D1, 102.0)]), bars("c", [(1, D1, 100.1)])])
    seen_by_a = divergence(frame, key="instrument_id", bps=50, provider="a")
    assert seen_by_a.pairs == 2
    assert seen_by_a.findings["detail"].to_list() == [
        f"a vs b: open {round(bps(100, 102), 1)} bps, high {round(bps(100, 102), 1)} bps, "
        f"low {round(bps(100, 102), 1)} bps, close {round(bps(100, 102), 1)} bps"]
    only_c = divergence(frame, key="instrument_id", bps=50, provider="a", compare_with=["c"])
    assert (only_c.pairs, only_c.findings.height) == (1, 0)
    nobody = divergence(frame, key="instrument_id", bps=50, provider="a", compare_with=[])
    assert (nobody.pairs, nobody.stats["close"]["max"]) == (0, 0.0)
    all_pairs = divergence(frame, key="instrument_id", bps=50)
    assert all_pairs.pairs == 3
    assert all_pairs.findings.height == 2  # b disagrees with both a and c


def test_only_flag_columns_decide_but_all_columns_have_stats() -> None:
    a = bars("a", [(1, D1, 100.0)])
    b = bars("b", [(1, D1, 100.0)]).with_columns(high=pl.lit(103.0))
    assert divergence(pl.concat([a, b]), key="instrument_id", bps=50, flag_columns=["close"]).findings.is_empty()
    result = divergence(pl.concat([a, b]), key="instrument_id", bps=50)
    assert result.findings["detail"].to_list() == [f"a vs b: high {round(bps(100, 103), 1)} bps"]
    assert result.stats["high"]["max"] == round(bps(100, 103), 2)
