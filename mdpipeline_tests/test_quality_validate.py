"""Validation as a pure function: the rules quarantine what no market could print, with a reason."""

from __future__ import annotations

import json
import math
from datetime import date

import polars as pl
import pytest

from mdpipeline.providers.base import STANDARD_COLUMNS
from mdpipeline.quality.schemas import StandardBars1d
from mdpipeline.quality.validate import validate


def _bars(rows: list[tuple[str, float, float, float, float, float]]) -> pl.DataFrame:
    return pl.DataFrame(
        [(symbol, date(2024, 6, 3), o, h, low, c, v, None, None, 1) for symbol, o, h, low, c, v in rows],
        schema=STANDARD_COLUMNS["bars_1d"], orient="row")


@pytest.mark.parametrize("field", ["high", "volume"])
def test_an_infinite_value_is_quarantined_not_stored(field: str) -> None:
    # OHLC otherwise consistent: an infinite high is still >= open, close and low.
    values = {"open": 10.0, "high": 11.0, "low": 9.0, "close": 10.5, "volume": 1000.0, field: math.inf}
    bad = ("BAD", values["open"], values["high"], values["low"], values["close"], values["volume"])
    done = validate(_bars([("GOOD", 10.0, 11.0, 9.0, 10.5, 1000.0), bad]), StandardBars1d,
                    ["symbol", "session_date"])
    assert done.outcome.valid["symbol"].to_list() == ["GOOD"]
    quarantined = done.outcome.quarantined
    assert quarantined["check_name"].to_list() == ["value_range"]
    assert field in quarantined["reason"][0]
    assert json.loads(quarantined["row_data"][0])["symbol"] == "BAD"
