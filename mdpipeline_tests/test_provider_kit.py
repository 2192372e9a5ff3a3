"""The adapter kit's pure pieces: split ratios, reset headers, epoch bar times, pagination guards, payloads.
(Each adapter's use of them is tested against its real local HTTP server in test_provider_<name>.py.)"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import polars as pl
import pytest

from mdpipeline.providers.base import ProviderError
from mdpipeline.providers.errors import MalformedPayloadError
from mdpipeline.providers.http import HttpResult
from mdpipeline.providers.kit.actions import split_ratio
from mdpipeline.providers.kit.bars import bar_time, epoch_utc
from mdpipeline.providers.kit.pagination import paginate
from mdpipeline.providers.kit.payloads import payload_from
from mdpipeline.providers.kit.rate_limits import seconds_until_reset

FETCHED = datetime(2024, 6, 4, 12, 0, tzinfo=UTC)


def result(doc: object, params: dict[str, str] | None = None) -> HttpResult:
    return HttpResult(url="https://x.test/v1/bars?apikey=***", endpoint="/v1/bars", params=params or {},
                      status=200, content_type="", body=json.dumps(doc).encode(), fetched_at=FETCHED)


def test_split_ratio_is_new_per_old_and_null_unless_both_sides_are_positive() -> None:
    frame = pl.DataFrame({"to": ["4", " 1", "0", "x", None, "3"], "frm": ["1", "10", "1", "1", "2", "2"]})
    assert frame.select(split_ratio(pl.col("to"), pl.col("frm"))).to_series().to_list() == [
        4.0, 0.1, None, None, None, 1.5]


def test_seconds_until_an_epoch_reset_header() -> None:
    assert seconds_until_reset("1717416030", now=1717416000.0) == 30.0
    assert seconds_until_reset("1717415000", now=1717416000.0) == 0.0
    assert seconds_until_reset(" ", now=0) is None
    assert seconds_until_reset("soon", now=0) is None
    assert seconds_until_reset(None) is None


def test_epoch_bar_times_key_daily_bars_on_the_exchange_date() -> None:
    # 2024-06-03 04:00 UTC is midnight in New York (a daily bar stamp), 13:30 UTC the regular open.
    rows = pl.DataFrame({"t": ["1717387200000", "1717421400000", "junk"]})
    ts = epoch_utc(pl.col("t"), "ms")
    daily = rows.select(bar_time(ts, "bars_1d", "America/New_York")).to_series()
    minute = rows.select(bar_time(ts, "bars_1m", "America/New_York")).to_series()
    assert daily.name == "session_date"
    assert daily.to_list() == [date(2024, 6, 3), date(2024, 6, 3), None]
    assert minute.name == "ts"
    assert minute.dtype == pl.Datetime("us", "UTC")
    assert minute.to_list()[1] == datetime(2024, 6, 3, 13, 30, tzinfo=UTC)
    seconds = pl.DataFrame({"t": [1717387200]}).select(bar_time(epoch_utc(pl.col("t"), "s"), "bars_1d", "UTC"))
    assert seconds.item() == date(2024, 6, 3)


def test_paginate_follows_cursors_and_stops_loops_and_runaways() -> None:
    pages = {None: result({"next": "b"}), "b": result({"next": "c"}), "c": result({})}
    got = list(paginate("prov", pages.__getitem__, lambda r: r.json().get("next"), max_pages=5, where="/bars (k)"))
    assert [r.json().get("next") for r in got] == ["b", "c", None]

    loop = {None: result({"next": "b"}), "b": result({"next": "b"})}
    with pytest.raises(MalformedPayloadError, match=r"prov: next 'b' returned again after page 1 of /bars \(k\): "
                                                    r"pagination loop"):
        list(paginate("prov", loop.__getitem__, lambda r: r.json().get("next"), max_pages=5, where="/bars (k)",
                      cursor_name="next"))
    endless = {None: result({"next": "1"}), "1": result({"next": "2"}), "2": result({"next": "3"})}
    with pytest.raises(ProviderError, match=r"/bars \(k\) has more than 2 pages \(option max_pages\)"):
        list(paginate("prov", endless.__getitem__, lambda r: r.json().get("next"), max_pages=2, where="/bars (k)"))


def test_payload_from_keeps_the_query_as_sent_with_credentials_shown_redacted() -> None:
    payload = payload_from("prov", "bars_1d", result({"ok": 1}, {"apikey": "***", "symbol": "AAPL"}), "k:p0",
                           date(2024, 6, 3), date(2024, 6, 7))
    assert payload.params == {"apikey": "***", "symbol": "AAPL"}
    assert (payload.session_date, payload.last_session) == (date(2024, 6, 3), date(2024, 6, 7))
    assert (payload.endpoint, payload.content_type, payload.fetched_at) == ("/v1/bars", "application/json", FETCHED)
    assert json.loads(payload.body) == {"ok": 1}
