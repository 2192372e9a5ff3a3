"""Return outliers (robust median/MAD band, spikes vs jumps, corporate actions) and price gaps."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest

from mdpipeline.quality.outliers import price_gaps, return_outliers
from mdpipeline.sessions import session_dates

# Twenty ordinary daily log returns: median ~0, MAD 0.0075 (robust sigma ~1.1%).
RETURNS = [0.010, -0.008, 0.006, -0.012, 0.009, -0.004, 0.011, -0.007, 0.003, -0.010,
           0.008, -0.006, 0.012, -0.009, 0.004, -0.011, 0.007, -0.003, 0.010, -0.005]
DAYS = session_dates(date(2024, 1, 2), date(2024, 12, 31))
ACTION_SCHEMA = {"symbol": pl.String, "ex_date": pl.Date, "action": pl.String, "ratio": pl.Float64,
                 "amount": pl.Float64}


def daily(returns: list[float] = RETURNS, symbol: str = "AAA") -> pl.DataFrame:
    """Bars whose open is the previous close (no gaps) and whose close follows `returns`."""
    closes = [100.0]
    for r in returns:
        closes.append(closes[-1] * math.exp(r))
    frame = pl.DataFrame({"symbol": symbol, "session_date": DAYS[: len(closes)], "close": closes})
    return frame.with_columns(open=pl.col("close").shift(1).fill_null(100.0), volume=1000.0).with_columns(
        high=pl.max_horizontal("open", "close"), low=pl.min_horizontal("open", "close"))


def scale_from(frame: pl.DataFrame, i: int, factor: float, columns: tuple[str, ...] = ("open", "high", "low",
                                                                                       "close")) -> pl.DataFrame:
    """Multiply `columns` from bar i on (a level shift, or a split's raw prices with factor 1/r)."""
    later = pl.col("session_date") >= DAYS[i]
    return frame.with_columns(**{c: pl.when(later).then(pl.col(c) * factor).otherwise(pl.col(c)) for c in columns})


def actions(*rows: tuple[str, date, str, float | None, float | None]) -> pl.DataFrame:
    return pl.DataFrame(list(rows), schema=ACTION_SCHEMA, orient="row")


def test_ordinary_returns_raise_nothing() -> None:
    assert return_outliers(daily()).is_empty()
    assert price_gaps(daily()).is_empty()


def test_a_spike_flags_only_the_spiked_bar_and_not_the_gap_after_it() -> None:
    bars = daily().with_columns(
        close=pl.when(pl.col("session_date") == DAYS[10]).then(pl.col("close") * 3).otherwise(pl.col("close")))
    found = return_outliers(bars)
    assert found.select("instrument", "session_date", "kind", "severity").rows() == [
        ("AAA", DAYS[10], "return_outlier", "warn")]
    assert found["detail"][0].endswith("(spike: reverts next bar)")
    assert found["value"][0] > 50
    # Bar 11 opens at the true price: a -ln(3) gap from the spiked close, explained by the spike.
    assert price_gaps(bars)["session_date"].to_list() == [DAYS[11]]
    assert price_gaps(bars, suspects=found).is_empty()


def test_a_jump_is_one_return_outlier_and_one_gap() -> None:
    bars = scale_from(daily(), 10, 1.5)
    found = return_outliers(bars)
    assert found.select("session_date", "kind").rows() == [(DAYS[10], "return_outlier")]
    assert found["detail"][0] == (f"log return {round(math.log(1.5) + RETURNS[9], 4)} is "
                                  f"{round(found['value'][0], 1)} robust sigmas from the median (jump)")
    gaps = price_gaps(bars)
    assert gaps.select("session_date", "kind").rows() == [(DAYS[10], "price_gap")]
    assert gaps["value"][0] == math.log(1.5)


def test_a_split_is_explained_by_the_corporate_action() -> None:
    bars = scale_from(daily(), 10, 0.25)  # 4-for-1: raw prices from the ex-date on are a quarter
    split = actions(("AAA", DAYS[10], "split", 4.0, None))
    found = return_outliers(bars, actions=split)
    assert found.select("session_date", "kind", "severity").rows() == [(DAYS[10], "corporate_action", "info")]
    assert found["detail"][0] == f"log return {round(RETURNS[9] - math.log(4), 4)} explained by split 4.0"
    assert price_gaps(bars, actions=split).is_empty()
    # Unknown to the pipeline, the same move is a jump.
    assert return_outliers(bars)["kind"].to_list() == ["return_outlier"]
    assert price_gaps(bars)["session_date"].to_list() == [DAYS[10]]
    # The same action reported by two providers counts once.
    twice = pl.concat([split, split])
    assert return_outliers(bars, actions=twice)["kind"].to_list() == ["corporate_action"]


def test_a_large_cash_dividend_is_explained() -> None:
    plain = daily()
    amount = 0.2 * plain["close"][9]  # a special dividend of 20% of the previous close
    bars = scale_from(plain, 10, 0.8)
    dividend = actions(("AAA", DAYS[10], "cash_dividend", None, amount))
    assert return_outliers(bars, actions=dividend)["kind"].to_list() == ["corporate_action"]
    assert price_gaps(bars, actions=dividend).is_empty()
    assert price_gaps(bars)["session_date"].to_list() == [DAYS[10]]


def test_absolute_floor_and_rolling_window() -> None:
    calm = [0.001, 0.0, -0.001] * 10 + [0.02]  # median 0, MAD 0.001
    bars = daily(calm)
    found = return_outliers(bars)
    assert found["session_date"].to_list() == [DAYS[31]]
    assert found["value"][0] == pytest.approx(0.02 / (1.4826 * 0.001), rel=1e-9)
    assert return_outliers(bars, min_abs=0.03).is_empty()
    # Volatile first, calm later: over the whole frame the late 1.5% move looks ordinary (MAD 0.03);
    # against the last 20 returns (MAD 0.001) it stands out.
    mixed = daily([0.03, -0.03] * 20 + [0.001, 0.0, -0.001] * 10 + [0.015])
    assert return_outliers(mixed).is_empty()
    rolled = return_outliers(mixed, window=20)
    assert rolled.height == 1
    assert rolled["value"][0] > 8


def test_intraday_overnight_moves_belong_to_the_gap_check() -> None:
    opens = [datetime(2024, 6, 3, 13, 30, tzinfo=UTC), datetime(2024, 6, 4, 13, 30, tzinfo=UTC)]
    rows = []
    price = 50.0
    for day, open_ts in enumerate(opens):
        if day == 1:
            price *= 1.5  # the second session opens 50% above the first one's last close
        for i in range(40):
            step = 0.0005 if i % 2 else -0.0004
            close = price * math.exp(step)
            rows.append(("AAA", open_ts.date(), open_ts + timedelta(minutes=i), price, close))
            price = close
    bars = pl.DataFrame(rows, schema=["symbol", "session_date", "ts", "open", "close"], orient="row")
    bars = bars.with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")), volume=100.0)
    assert return_outliers(bars, min_periods=10).is_empty()  # the first minute is measured open to close
    gaps = price_gaps(bars, min_abs=0.03)
    # one gap only: too few to learn a band from, so min_abs decides
    assert gaps.select("ts", "kind").rows() == [(opens[1], "price_gap")]
    # A spike on the first minute of a session is still caught.
    spiked = bars.with_columns(close=pl.when(pl.col("ts") == opens[0]).then(pl.col("close") * 3)
                               .otherwise(pl.col("close")))
    found = return_outliers(spiked, min_periods=10)
    assert found.select("ts", "kind").rows() == [(opens[0], "return_outlier")]
    assert "spike" in found["detail"][0]
