"""The Alpaca provider against a real HTTP server on loopback, serving Alpaca's documented formats."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from mdpipeline.orchestration.assembly import build_definitions
from mdpipeline.orchestration.runner import materialize_range
from mdpipeline.providers import build_provider
from mdpipeline.providers.alpaca import AlpacaProvider
from mdpipeline.providers.base import STANDARD_COLUMNS, ProviderError, Query, RawPayload
from mdpipeline.providers.errors import (
    BadRequestError,
    CircuitOpenError,
    EntitlementError,
    MalformedPayloadError,
    ProviderUnavailableError,
)
from mdpipeline.providers.reconcile import prefer_latest_payload
from mdpipeline.quality.quarantine import split_valid
from mdpipeline.quality.schemas import StandardBars1d
from mdpipeline.storage.bars import read_bars_1d
from mdpipeline.storage.database import connect
from mdpipeline.universe import load_universe
from mdpipeline_tests import provider_servers as servers
from mdpipeline_tests.pipeline_helpers import settings_for
from mdpipeline_tests.provider_servers import (
    SleepRecorder,
    json_response,
    raw_response,
    script,
    slow,
    truncated_response,
)

KEY_ID, SECRET = "AKTESTKEYID0001", "s3cr3t+/alpaca=="
BARS = "/v2/stocks/bars"
ACTIONS = "/v1/corporate-actions"
FAST = {"backoff_initial": 0.01, "backoff_max": 0.05, "timeout": 2.0, "max_attempts": 4, "breaker_fail_max": 50}


def bar(t: str, o: float, h: float, low: float, c: float, v: int, n: int, vw: float) -> dict:
    """One bar as Alpaca documents it."""
    return {"t": t, "o": o, "h": h, "l": low, "c": c, "v": v, "n": n, "vw": vw}


AAPL_0603 = bar("2024-06-03T04:00:00Z", 192.9, 194.99, 192.52, 194.03, 50080539, 689000, 193.9)
AAPL_0604 = bar("2024-06-04T04:00:00Z", 194.635, 195.32, 193.0342, 194.35, 47471445, 610000, 194.2)
AAPL_0605 = bar("2024-06-05T04:00:00Z", 195.4, 196.9, 194.87, 195.87, 54156785, 700000, 195.9)
TSLA_0603 = bar("2024-06-03T04:00:00Z", 178.13, 182.64, 174.49, 176.29, 68568927, 900000, 178.1)
TSLA_0604 = bar("2024-06-04T04:00:00Z", 174.775, 177.76, 174.0, 174.77, 60056330, 850000, 175.6)
TSLA_0605 = bar("2024-06-05T04:00:00Z", 175.35, 176.15, 172.13, 175.0, 57953769, 800000, 174.2)
# Bars are sorted by symbol, then time; `limit` counts over all symbols, so TSLA continues on page 2,
# which repeats the TSLA bar of 06-03 (a cursor that overlaps by one bar).
PAGE_1 = {"bars": {"AAPL": [AAPL_0603, AAPL_0604, AAPL_0605], "TSLA": [TSLA_0603]}, "next_page_token": "QUFQTHwy"}
PAGE_2 = {"bars": {"TSLA": [TSLA_0603, TSLA_0604, TSLA_0605]}, "next_page_token": None}
QUERY = Query("bars_1d", date(2024, 6, 3), date(2024, 6, 5), ("AAPL", "TSLA"))


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield from servers.isolated(monkeypatch, {"ALPACA_API_KEY_ID": KEY_ID, "ALPACA_API_SECRET_KEY": SECRET}, "alpaca")


def make(server: HTTPServer, symbols: tuple[str, ...] = ("AAPL", "TSLA"), http: dict | None = None,
         **options: object) -> tuple[AlpacaProvider, SleepRecorder]:
    return servers.make_provider(AlpacaProvider, server, symbols, fast=FAST, http=http, **options)


def with_ids(payloads: list[RawPayload], first_id: int = 1) -> list[RawPayload]:
    """Payloads as `raw.payloads` gives them back (ids in fetch order)."""
    return [dataclasses.replace(p, payload_id=first_id + i) for i, p in enumerate(payloads)]


# -- bars ---------------------------------------------------------------------------------------------


def test_daily_bars_follow_every_page_and_give_exact_rows(httpserver: HTTPServer) -> None:
    s = script(httpserver, BARS, json_response(PAGE_1), json_response(PAGE_2))
    provider, _ = make(httpserver)

    payloads = provider.extract(QUERY)

    assert s.count == 2
    first = s.args(0)
    assert first == {"symbols": "AAPL,TSLA", "timeframe": "1Day", "start": "2024-06-03T04:00:00Z",
                     "end": "2024-06-06T03:59:59Z", "adjustment": "raw", "feed": "iex", "limit": "10000",
                     "sort": "asc"}
    assert s.args(1) == {**first, "page_token": "QUFQTHwy"}
    assert s.requests[0].headers["APCA-API-KEY-ID"] == KEY_ID
    assert s.requests[0].headers["APCA-API-SECRET-KEY"] == SECRET
    assert [p.request_key for p in payloads] == ["AAPL,TSLA:2024-06-03:2024-06-05:p0",
                                                 "AAPL,TSLA:2024-06-03:2024-06-05:p1"]
    assert {(p.session_date, p.last_session) for p in payloads} == {(date(2024, 6, 3), date(2024, 6, 5))}
    assert payloads[0].body == json.dumps(PAGE_1).encode()  # untouched
    assert payloads[1].params["page_token"] == "QUFQTHwy"
    assert all(p.endpoint == BARS and p.status == 200 for p in payloads)

    frame = provider.transform("bars_1d", with_ids(payloads))
    assert frame.schema == pl.Schema(STANDARD_COLUMNS["bars_1d"])
    rows = frame.sort("symbol", "session_date", "raw_payload_id").rows()
    assert rows == [
        ("AAPL", date(2024, 6, 3), 192.9, 194.99, 192.52, 194.03, 50080539.0, 193.9, 689000, 1),
        ("AAPL", date(2024, 6, 4), 194.635, 195.32, 193.0342, 194.35, 47471445.0, 194.2, 610000, 1),
        ("AAPL", date(2024, 6, 5), 195.4, 196.9, 194.87, 195.87, 54156785.0, 195.9, 700000, 1),
        ("TSLA", date(2024, 6, 3), 178.13, 182.64, 174.49, 176.29, 68568927.0, 178.1, 900000, 1),
        ("TSLA", date(2024, 6, 3), 178.13, 182.64, 174.49, 176.29, 68568927.0, 178.1, 900000, 2),
        ("TSLA", date(2024, 6, 4), 174.775, 177.76, 174.0, 174.77, 60056330.0, 175.6, 850000, 2),
        ("TSLA", date(2024, 6, 5), 175.35, 176.15, 172.13, 175.0, 57953769.0, 174.2, 800000, 2),
    ]


def recent_sip_refused(page: dict) -> Callable[[Request], Response]:
    """Alpaca's rule for Free/Basic plans: SIP data of the last 15 minutes -> 403; otherwise `page`."""

    def handler(request: Request) -> Response:
        end = datetime.fromisoformat(request.args["end"].replace("Z", "+00:00"))
        if request.args.get("feed") == "sip" and end > datetime.now(UTC) - timedelta(minutes=15):
            return json_response({"message": "subscription does not permit querying recent SIP data"}, 403)
        return json_response(page)

    return handler


def test_default_feed_is_iex_and_sip_ends_15_minutes_ago(httpserver: HTTPServer) -> None:
    s = script(httpserver, BARS, recent_sip_refused(PAGE_2))
    today = datetime.now(UTC).date()
    recent = Query("bars_1d", today - timedelta(days=5), today + timedelta(days=10), ("TSLA",))

    provider, _ = make(httpserver)
    assert len(provider.extract(recent)) == 1
    assert s.args()["feed"] == "iex"  # every plan may query IEX data, however recent

    sip, _ = make(httpserver, feed="sip")
    before = datetime.now(UTC)
    assert len(sip.extract(recent)) == 1  # not refused: the request stops 15 minutes ago
    end = datetime.fromisoformat(s.args()["end"].replace("Z", "+00:00"))
    assert s.args()["feed"] == "sip"
    assert before - timedelta(minutes=15, seconds=1) <= end <= datetime.now(UTC) - timedelta(minutes=15)
    assert s.count == 2

    future = Query("bars_1d", today + timedelta(days=3), today + timedelta(days=10), ("TSLA",))
    assert sip.extract(future) == []  # nothing it may ask for yet
    assert s.count == 2

    plus, _ = make(httpserver, feed="sip", sip_delay_minutes=0)  # Algo Trader Plus
    with pytest.raises(EntitlementError, match="recent SIP data"):
        plus.extract(recent)  # this key is Basic: the server refuses, typed and final
    assert s.count == 3


def test_bar_repeated_across_pages_collapses_in_the_pipeline(httpserver: HTTPServer) -> None:
    script(httpserver, BARS, json_response(PAGE_1), json_response(PAGE_2))
    provider, _ = make(httpserver)
    payloads = provider.extract(QUERY)

    # Straight from extract (not stored yet): the two copies are identical rows, validation drops one.
    frame = provider.transform("bars_1d", payloads)
    tsla_0603 = frame.filter((pl.col("symbol") == "TSLA") & (pl.col("session_date") == date(2024, 6, 3)))
    assert tsla_0603.height == 2
    assert tsla_0603.n_unique() == 1
    outcome = split_valid(frame, StandardBars1d, ["symbol", "session_date"])
    assert (outcome.valid.height, outcome.exact_duplicates, outcome.quarantined.height) == (6, 1, 0)

    # As stored (each page its own payload id): the pipeline keeps the copy of the later page first.
    stored = with_ids(payloads)
    parsed = provider.transform("bars_1d", stored)
    outcome = split_valid(prefer_latest_payload(parsed, stored, ["symbol", "session_date"]), StandardBars1d,
                          ["symbol", "session_date"])
    assert (outcome.valid.height, outcome.quarantined.height) == (6, 0)


def test_repeated_page_token_is_a_pagination_loop(httpserver: HTTPServer) -> None:
    looping = {"bars": {"AAPL": [AAPL_0603]}, "next_page_token": "same"}
    s = script(httpserver, BARS, json_response(looping))
    provider, _ = make(httpserver)
    with pytest.raises(MalformedPayloadError, match="pagination loop"):
        provider.extract(QUERY)
    assert s.count == 2


def test_max_pages_bounds_an_endless_cursor(httpserver: HTTPServer) -> None:
    counter = iter(range(1000))
    script(httpserver, BARS, lambda _req: json_response({"bars": {}, "next_page_token": f"t{next(counter)}"}))
    provider, _ = make(httpserver, max_pages=3)
    with pytest.raises(ProviderError, match="more than 3 pages"):
        provider.extract(QUERY)


def test_minute_bars_keep_the_regular_session(httpserver: HTTPServer) -> None:
    minutes = {"AAPL": [
        bar("2024-06-03T13:29:00Z", 192.0, 192.1, 191.9, 192.0, 1000, 10, 192.0),  # pre-market
        bar("2024-06-03T13:30:00Z", 192.9, 193.2, 192.5, 193.0, 900000, 5000, 192.9),  # 09:30 New York
        bar("2024-06-03T19:59:00Z", 194.0, 194.1, 193.9, 194.03, 800000, 4000, 194.0),  # 15:59
        bar("2024-06-03T20:00:00Z", 194.03, 194.1, 194.0, 194.05, 50000, 300, 194.0),  # post-market
        bar("2024-07-03T16:59:00Z", 221.0, 221.1, 220.9, 221.0, 1000, 10, 221.0),  # half day: last minute
        bar("2024-07-03T17:00:00Z", 221.0, 221.1, 220.9, 221.0, 1000, 10, 221.0),  # after the 13:00 close
    ]}
    s = script(httpserver, BARS, json_response({"bars": minutes, "next_page_token": None}))
    provider, _ = make(httpserver, symbols=("AAPL",))
    payloads = provider.extract(Query("bars_1m", date(2024, 6, 3), date(2024, 7, 3), ("AAPL",)))
    assert s.args(0)["timeframe"] == "1Min"

    frame = provider.transform("bars_1m", payloads)
    assert frame.schema == pl.Schema(STANDARD_COLUMNS["bars_1m"])
    assert frame["ts"].dt.strftime("%Y-%m-%dT%H:%M").to_list() == [
        "2024-06-03T13:30", "2024-06-03T19:59", "2024-07-03T16:59"]
    assert frame.row(0) == ("AAPL", datetime.fromisoformat("2024-06-03T13:30:00+00:00"), 192.9, 193.2, 192.5,
                            193.0, 900000.0, 192.9, 5000, None)

    everything, _ = make(httpserver, symbols=("AAPL",), extended_hours=True)
    assert everything.transform("bars_1m", payloads).height == 6


def test_empty_answer_and_holiday_range(httpserver: HTTPServer) -> None:
    s = script(httpserver, BARS, json_response({"bars": {}, "next_page_token": None}))
    provider, _ = make(httpserver)

    assert provider.extract(Query("bars_1d", date(2024, 6, 19), date(2024, 6, 19), ("AAPL",))) == []  # Juneteenth
    assert s.count == 0

    payloads = provider.extract(Query("bars_1d", date(2024, 6, 18), date(2024, 6, 20), ("AAPL",)))
    assert len(payloads) == 1  # an empty answer is stored too: it proves the provider had nothing
    assert (payloads[0].session_date, payloads[0].last_session) == (date(2024, 6, 18), date(2024, 6, 20))
    frame = provider.transform("bars_1d", payloads)
    assert frame.is_empty()
    assert frame.schema == pl.Schema(STANDARD_COLUMNS["bars_1d"])


def test_symbols_are_batched(httpserver: HTTPServer) -> None:
    s = script(httpserver, BARS, json_response({"bars": {}, "next_page_token": None}))
    provider, _ = make(httpserver, symbols=("AAPL", "MSFT", "NVDA"), symbols_per_request=2)
    payloads = provider.extract(Query("bars_1d", date(2024, 6, 3), date(2024, 6, 3), ()))
    assert [r.args["symbols"] for r in s.requests] == ["AAPL,MSFT", "NVDA"]
    assert len(payloads) == 2


# -- corporate actions --------------------------------------------------------------------------------


def test_corporate_actions_splits_and_dividends(httpserver: HTTPServer) -> None:
    page_1 = {"corporate_actions": {
        "forward_splits": [{"symbol": "NVDA", "new_rate": 10, "old_rate": 1, "process_date": "2024-06-10",
                            "ex_date": "2024-06-10", "record_date": "2024-06-06", "payable_date": "2024-06-07"}],
        "cash_dividends": [{"symbol": "AAPL", "rate": 0.25, "special": False, "foreign": False,
                            "process_date": "2024-05-16", "ex_date": "2024-05-10", "record_date": "2024-05-13",
                            "payable_date": "2024-05-16"}],
    }, "next_page_token": "Y2Ex"}
    page_2 = {"corporate_actions": {
        "reverse_splits": [{"symbol": "SIRI", "new_rate": 1, "old_rate": 10, "process_date": "2024-09-10",
                            "ex_date": "2024-05-20", "record_date": "2024-09-09"}],
    }, "next_page_token": None}
    s = script(httpserver, ACTIONS, json_response(page_1), json_response(page_2))
    provider, _ = make(httpserver, symbols=("NVDA", "AAPL", "SIRI"))

    payloads = provider.extract(Query("corporate_actions", date(2024, 5, 1), date(2024, 6, 28), ()))

    assert s.args(0) == {"symbols": "NVDA,AAPL,SIRI", "types": "forward_split,reverse_split,cash_dividend",
                         "start": "2024-05-01", "end": "2024-09-26", "limit": "1000", "sort": "asc"}
    assert s.args(1)["page_token"] == "Y2Ex"
    assert len(payloads) == 2
    frame = provider.transform("corporate_actions", with_ids(payloads))
    assert frame.schema == pl.Schema(STANDARD_COLUMNS["corporate_actions"])
    assert frame.sort("ex_date").rows() == [
        ("AAPL", date(2024, 5, 10), "cash_dividend", None, 0.25, "USD", 1),
        ("SIRI", date(2024, 5, 20), "split", 0.1, None, None, 2),
        ("NVDA", date(2024, 6, 10), "split", 10.0, None, None, 1),
    ]


# -- failures -----------------------------------------------------------------------------------------


def test_429_waits_for_retry_after(httpserver: HTTPServer) -> None:
    s = script(httpserver, BARS, json_response({"message": "too many requests."}, 429, {"Retry-After": "7"}),
               json_response(PAGE_2))
    provider, sleep = make(httpserver)
    payloads = provider.extract(QUERY)
    assert s.count == 2
    assert 7.0 in sleep.waits
    assert len(payloads) == 1
    assert provider.fetch_stats()["retries"] == 1


def test_429_waits_until_x_ratelimit_reset(httpserver: HTTPServer) -> None:
    reset = str(int(time.time()) + 30)
    s = script(httpserver, BARS, json_response({"message": "too many requests."}, 429, {"X-RateLimit-Reset": reset}),
               json_response(PAGE_2))
    provider, sleep = make(httpserver)
    provider.extract(QUERY)
    assert s.count == 2
    assert any(25 <= w <= 31 for w in sleep.waits)


def test_5xx_storm_then_data(httpserver: HTTPServer) -> None:
    s = script(httpserver, BARS, raw_response("oops", 500), raw_response("bad gateway", 502),
               raw_response("unavailable", 503), json_response(PAGE_2))
    provider, sleep = make(httpserver)
    payloads = provider.extract(QUERY)
    assert s.count == 4
    assert len(payloads) == 1  # failed attempts are not payloads
    assert len(sleep.waits) == 3


def test_5xx_storm_opens_the_breaker_then_it_closes(httpserver: HTTPServer) -> None:
    s = script(httpserver, BARS, raw_response("unavailable", 503), raw_response("unavailable", 503),
               raw_response("unavailable", 503), json_response(PAGE_2))
    provider, _ = make(httpserver, http={"max_attempts": 3, "breaker_fail_max": 3, "breaker_reset_timeout": 0.5})

    with pytest.raises(ProviderUnavailableError, match="HTTP 503"):
        provider.extract(QUERY)
    assert provider.fetch_stats()["breaker_state"] == "open"
    with pytest.raises(CircuitOpenError, match="circuit breaker open"):
        provider.extract(QUERY)
    assert s.count == 3  # no request while open

    time.sleep(0.6)
    assert len(provider.extract(QUERY)) == 1  # the trial call succeeds and closes the breaker
    assert provider.fetch_stats()["breaker_state"] == "closed"


def test_timeouts_are_retried_then_fail(httpserver: HTTPServer) -> None:
    script(httpserver, BARS, slow(0.6, json_response(PAGE_2)))
    provider, _ = make(httpserver, http={"timeout": 0.2, "max_attempts": 2})
    with pytest.raises(ProviderUnavailableError, match=r"timed out after 0\.2s"):
        provider.extract(QUERY)
    assert provider.fetch_stats()["attempts"] == 2  # the server may still be sleeping on the second one


def test_timeout_then_data(httpserver: HTTPServer) -> None:
    script(httpserver, BARS, slow(0.5, json_response(PAGE_2)), json_response(PAGE_2))
    provider, _ = make(httpserver, http={"timeout": 0.2})
    assert len(provider.extract(QUERY)) == 1
    assert provider.fetch_stats()["retries"] >= 1


def test_malformed_json_fails_without_retry(httpserver: HTTPServer) -> None:
    s = script(httpserver, BARS, raw_response('{"bars": {"AAPL": [{"t": "2024-06-03T04:00:00Z", "o": 1'))
    provider, _ = make(httpserver)
    with pytest.raises(MalformedPayloadError, match="not valid JSON"):
        provider.extract(QUERY)
    assert s.count == 1


def test_body_cut_in_transit_is_retried(httpserver: HTTPServer) -> None:
    s = script(httpserver, BARS, truncated_response(json.dumps(PAGE_2).encode()[:40]), json_response(PAGE_2))
    provider, _ = make(httpserver)
    payloads = provider.extract(QUERY)
    assert s.count == 2
    assert payloads[0].body == json.dumps(PAGE_2).encode()


def test_unexpected_shape_is_malformed(httpserver: HTTPServer) -> None:
    script(httpserver, BARS, json_response(["not", "an", "object"]))
    provider, _ = make(httpserver)
    with pytest.raises(MalformedPayloadError, match="expected an object with 'bars'"):
        provider.extract(QUERY)


def test_stored_garbage_is_a_clear_transform_error(httpserver: HTTPServer) -> None:
    provider, _ = make(httpserver)
    bad = RawPayload("alpaca", "bars_1d", date(2024, 6, 3), "k", BARS, {"symbols": "AAPL"}, b"{not json")
    with pytest.raises(MalformedPayloadError, match="payload k"):
        provider.transform("bars_1d", [bad])


@pytest.mark.parametrize(("status", "body", "error"), [
    (403, {"message": "forbidden."}, EntitlementError),
    (403, {"message": "subscription does not permit querying recent SIP data"}, EntitlementError),
    (422, {"code": 42210000, "message": "invalid timeframe"}, BadRequestError),
])
def test_error_bodies_are_typed_and_not_retried(httpserver: HTTPServer, status: int, body: dict,
                                                error: type[Exception]) -> None:
    s = script(httpserver, BARS, json_response(body, status))
    provider, _ = make(httpserver)
    with pytest.raises(error, match=body["message"]):
        provider.extract(QUERY)
    assert s.count == 1


# -- credentials and secrets --------------------------------------------------------------------------


def test_missing_credentials_name_the_variable(httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    script(httpserver, BARS, json_response(PAGE_2))
    stored, _ = make(httpserver)
    payloads = stored.extract(QUERY)

    monkeypatch.delenv("ALPACA_API_SECRET_KEY")
    provider, _ = make(httpserver)
    with pytest.raises(ProviderError, match="ALPACA_API_SECRET_KEY"):
        provider.extract(QUERY)
    assert provider.transform("bars_1d", payloads).height == 3  # replay needs no credentials


def test_secrets_never_reach_payloads_errors_or_logs(httpserver: HTTPServer,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    echo = {"message": f"forbidden for key {KEY_ID} / {SECRET}"}
    script(httpserver, BARS, raw_response("busy", 503), json_response(PAGE_1), json_response(echo, 403))
    provider, _ = make(httpserver)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(EntitlementError) as err:
        provider.extract(QUERY)
    for secret in (KEY_ID, SECRET):
        assert secret not in str(err.value)

    script(httpserver, ACTIONS, json_response({"corporate_actions": {}, "next_page_token": None}))
    payloads = provider.extract(Query("corporate_actions", date(2024, 6, 3), date(2024, 6, 5), ()))
    stored = json.dumps([{**vars(p), "body": None, "fetched_at": None} for p in payloads], default=str)
    for secret in (KEY_ID, SECRET):
        assert secret not in stored
        assert secret not in caplog.text


def test_unknown_option_and_dataset_are_errors(httpserver: HTTPServer) -> None:
    with pytest.raises(ProviderError, match="unknown option"):
        make(httpserver, fead="sip")
    provider, _ = make(httpserver)
    with pytest.raises(ProviderError, match="no dataset"):
        provider.extract(Query("ticks", date(2024, 6, 3), date(2024, 6, 3), ("AAPL",)))


# -- through Dagster ----------------------------------------------------------------------------------


def test_dagster_run_stores_alpaca_bars_and_a_rerun_stores_nothing_twice(
        httpserver: HTTPServer, database_url: str, kafka_bootstrap: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    msft = [bar(f"2024-06-0{d}T04:00:00Z", 415.0 + d, 420.0 + d, 410.0 + d, 416.0 + d, 1_000_000 * d, 10_000, 416.5)
            for d in (3, 4, 5)]
    page_1 = {"bars": {"AAPL": [AAPL_0603, AAPL_0604, AAPL_0605], "MSFT": msft[:1]}, "next_page_token": "TVNGVA"}
    page_2 = {"bars": {"MSFT": msft}, "next_page_token": None}
    bars = script(httpserver, BARS, *[json_response(p) for p in (page_1, page_2, page_1, page_2)],
                  query={"timeframe": "1Day"})
    script(httpserver, BARS, json_response({"bars": {}, "next_page_token": None}), query={"timeframe": "1Min"})
    script(httpserver, ACTIONS, json_response({"corporate_actions": {}, "next_page_token": None}))
    monkeypatch.setenv("MDP_ALPACA_BASE_URL", httpserver.url_for("/"))
    monkeypatch.setenv("MDP_FRAMES_DIR", str(tmp_path / "frames"))
    defs = build_definitions(settings_for(database_url, kafka_bootstrap,
                                          universe=universe_enabling(tmp_path, "alpaca", ["AAPL", "MSFT"])))

    for _ in range(2):
        result = materialize_range(defs, date(2024, 6, 3), date(2024, 6, 5), providers=["alpaca"],
                                   instance=dg.DagsterInstance.ephemeral())
        assert result.success

    assert bars.count == 4  # two pages per run
    with connect(database_url) as conn:
        stored = read_bars_1d(conn, start=date(2024, 6, 3), end=date(2024, 6, 5), provider="alpaca")
        raw = conn.execute("select count(*) from raw.payloads where provider = 'alpaca' and dataset = 'bars_1d'"
                           ).fetchone()
    assert raw == (2,)  # the re-run fetched byte-identical pages: nothing stored twice
    assert stored.select("symbol", "session_date", "close", "volume").sort("symbol", "session_date").rows() == [
        ("AAPL", date(2024, 6, 3), 194.03, 50080539.0), ("AAPL", date(2024, 6, 4), 194.35, 47471445.0),
        ("AAPL", date(2024, 6, 5), 195.87, 54156785.0), ("MSFT", date(2024, 6, 3), 419.0, 3_000_000.0),
        ("MSFT", date(2024, 6, 4), 420.0, 4_000_000.0), ("MSFT", date(2024, 6, 5), 421.0, 5_000_000.0),
    ]
    assert set(stored["instrument_id"]) == {1, 2}

    # Replay: everything downstream of raw again, with the provider gone and no credentials.
    httpserver.clear()
    monkeypatch.delenv("ALPACA_API_KEY_ID")
    monkeypatch.delenv("MDP_ALPACA_BASE_URL")
    replay = materialize_range(defs, date(2024, 6, 3), date(2024, 6, 5), providers=["alpaca"], select="not group:raw",
                               instance=dg.DagsterInstance.ephemeral())
    assert replay.success
    with connect(database_url) as conn:
        replayed = read_bars_1d(conn, start=date(2024, 6, 3), end=date(2024, 6, 5), provider="alpaca")
    columns = [c for c in stored.columns if c not in ("run_id", "ingested_at")]
    assert replayed.select(columns).equals(stored.select(columns))
    assert len(httpserver.log) == 0


def universe_enabling(tmp_path: Path, provider: str, symbols: list[str], **options: object) -> Path:
    """The checked-in universe with `provider` switched on for `symbols` (fast retries for tests)."""
    return servers.universe_file(tmp_path, provider, symbols, http=FAST, **options)


def test_registry_builds_the_provider_from_the_universe_file(tmp_path: Path) -> None:
    on, off, settings = servers.registry_files(tmp_path, "alpaca")

    provider = build_provider("alpaca", load_universe(on), settings)
    assert provider.name == "alpaca"
    assert provider.base_url == "http://127.0.0.1:9/x"  # type: ignore[attr-defined]
    with pytest.raises(ProviderError, match="disabled in the universe file"):
        build_provider("alpaca", load_universe(off), settings)
