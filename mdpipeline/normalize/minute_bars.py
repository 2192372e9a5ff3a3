"""Canonical one-minute bars: UTC bar-start timestamps, the exchange session date, instrument ids.

Providers deliver minute bars in all sorts of clocks (Alpha Vantage in US/Eastern, others in UTC
epoch); the transform steps convert them to UTC, so here `ts` is already an absolute instant and
the session date is its date on the exchange's local calendar, which is right across DST changes.
"""

from __future__ import annotations

import polars as pl

from mdpipeline.contracts.frames import CANONICAL_BARS_1M
from mdpipeline.normalize.bars import Normalized, map_instruments
from mdpipeline.sessions import with_session_date


def normalize_bars_1m(frame: pl.DataFrame, provider: str, symbology: pl.DataFrame,
                      calendar_name: str = "XNYS") -> Normalized:
    """Validated standard minute bars -> canonical minute bars of `provider`.

    The session date is the bar's date on the exchange's clock (kept when the frame already has it).
    """
    mapped = map_instruments(with_session_date(frame, calendar_name), symbology, "session_date")
    bars = mapped.bars.with_columns(pl.lit(provider).alias("provider")).select(
        pl.col(name).cast(dtype) for name, dtype in CANONICAL_BARS_1M.items()
    )
    return Normalized(bars=bars.sort("ts", "instrument_id"), unmapped=mapped.unmapped)
