"""The IBKR provider against a real HTTP server on loopback, serving the Client Portal Web API formats."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from mdpipeline.orchestration.assembly import build_definitions
from mdpipeline.orchestration.runner import materialize_range
from mdpipeline.providers import build_provider
from mdpipeline.providers.base import STANDARD_COLUMNS, ProviderError, Query, RawPayload
from mdpipeline.providers.errors import (
    BadRequestError,
    EntitlementError,
    MalformedPayloadError,
    ProviderUnavailableError,
)
from mdpipeline.providers.ibkr import IbkrProvider
from mdpipeline.storage.bars import read_bars_1d
from mdpipeline.storage.database import connect
from mdpipeline.universe import load_universe
from mdpipeline_tests import provider_servers as servers
from mdpipeline_tests.pipeline_helpers import settings_for
from mdpipeline_tests.provider_servers import SleepRecorder, json_response, raw_response, script, slow

SEARCH, HISTORY = "/v1/api/iserver/secdef/search", "/v1/api/iserver/marketdata/history"
FAST = {"rate_per_second": None, "backoff_initial": 0.01, "backoff_max": 0.05, "timeout": 2.0, "max_attempts": 4,
        "breaker_fail_max": 50}
# What /iserver/secdef/search answers for AAPL: the Mexican listing first, then the NASDAQ one.
AAPL_SEARCH = [
    {"conid": "38708077", "companyHeader": "APPLE INC - MEXI", "companyName": "APPLE INC", "symbol": "AAPL",
     "description": "MEXI", "restricted": None, "fop": None, "opt": None, "war": None,
     "sections": [{"secType": "STK"}]},
    {"conid": "265598", "companyHeader": "APPLE INC - NASDAQ", "companyName": "APPLE INC", "symbol": "AAPL",
     "description": "NASDAQ", "restricted": None, "fop": "20240621", "opt": "20240607;20240614",
     "war": "20240621", "sections": [{"secType": "STK"}, {"secType": "OPT", "months": "JUN24;JUL24",
                                                          "exchange": "SMART;AMEX;BATS"}]},
]


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


def history(data: list[dict], price_factor: int = 100, high: str | None = None, symbol: str = "AAPL") -> dict:
    """A /iserver/marketdata/history answer (summary `high` scaled by priceFactor, bars in plain prices)."""
    top = max((d["h"] for d in data), default=0)
    return {"serverId": "20477", "symbol": symbol, "text": "APPLE INC", "priceFactor": price_factor,
            "startTime": "20240603-13:30:00", "high": high or f"{round(top * price_factor)}/472117.45/0",
            "low": "17170/472117.45/0", "timePeriod": "3d", "barLength": 86400, "mdAvailability": "S",
            "mktDataDelay": 0, "outsideRth": False, "tradingDayDuration": 1440, "volumeFactor": 1,
            "priceDisplayRule": 1, "priceDisplayValue": "2", "chartPanStartTime": "20240603-13:30:00",
            "direction": -1, "negativeCapable": False, "messageVersion": 2, "data": data, "points": len(data),
            "travelTime": 48}


DAILY = [
    {"o": 192.9, "c": 194.03, "h": 194.99, "l": 192.52, "v": 500805.39, "t": ms("2024-06-03T13:30:00+00:00")},
    {"o": 194.635, "c": 194.35, "h": 195.32, "l": 193.0342, "v": 474714.45, "t": ms("2024-06-04T13:30:00+00:00")},
    {"o": 195.4, "c": 195.87, "h": 196.9, "l": 194.87, "v": 541567.85, "t": ms("2024-06-05T13:30:00+00:00")},
]
EXPECTED_DAILY = [
    ("AAPL", date(2024, 6, 3), 192.9, 194.99, 192.52, 194.03, 50080539.0, None, None, 7),
    ("AAPL", date(2024, 6, 4), 194.635, 195.32, 193.0342, 194.35, 47471445.0, None, None, 7),
    ("AAPL", date(2024, 6, 5), 195.4, 196.9, 194.87, 195.87, 54156785.0, None, None, 7),
]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield from servers.isolated(monkeypatch, provider="ibkr")


def make(server: HTTPServer, symbols: tuple[str, ...] = ("AAPL",), http: dict | None = None,
         **options: object) -> tuple[IbkrProvider, SleepRecorder]:
    return servers.make_provider(IbkrProvider, server, symbols, prefix="/v1/api", fast=FAST, http=http, **options)


def pinned(server: HTTPServer, **kw: object) -> tuple[IbkrProvider, SleepRecorder]:
    """A provider whose AAPL conid is pinned (no contract search)."""
    return make(server, conids={"AAPL": 265598}, **kw)  # type: ignore[arg-type]


def days(start: date, end: date, dataset: str = "bars_1d") -> Query:
    return Query(dataset, start, end, ("AAPL",))


def stored(payloads: list[RawPayload], payload_id: int = 7) -> list[RawPayload]:
    return [dataclasses.replace(p, payload_id=payload_id + i) for i, p in enumerate(payloads)]


# -- contract resolution and requests -----------------------------------------------------------------


def test_conid_is_the_us_listing_and_is_cached(httpserver: HTTPServer) -> None:
    search = script(httpserver, SEARCH, json_response(AAPL_SEARCH))
    hist = script(httpserver, HISTORY, json_response(history(DAILY)))
    provider, _ = make(httpserver)

    provider.extract(days(date(2024, 6, 3), date(2024, 6, 5)))
    provider.extract(days(date(2024, 6, 3), date(2024, 6, 5)))

    assert search.count == 1
    assert search.args(0) == {"symbol": "AAPL", "secType": "STK"}
    assert {r.args["conid"] for r in hist.requests} == {"265598"}


def test_pinned_conid_skips_the_search(httpserver: HTTPServer) -> None:
    search = script(httpserver, SEARCH, json_response(AAPL_SEARCH))
    script(httpserver, HISTORY, json_response(history(DAILY)))
    provider, _ = pinned(httpserver)
    provider.extract(days(date(2024, 6, 3), date(2024, 6, 5)))
    assert search.count == 0


def test_symbol_without_a_us_listing_is_a_clear_error(httpserver: HTTPServer) -> None:
    script(httpserver, SEARCH, json_response(AAPL_SEARCH[:1]))
    provider, _ = make(httpserver)
    with pytest.raises(ProviderError, match=r"no US-listed stock .* for AAPL .*38708077 APPLE INC - MEXI"):
        provider.extract(days(date(2024, 6, 3), date(2024, 6, 5)))


def test_daily_bars_exact_rows(httpserver: HTTPServer) -> None:
    hist = script(httpserver, HISTORY, json_response(history(DAILY)))
    provider, _ = pinned(httpserver)

    payloads = provider.extract(days(date(2024, 6, 3), date(2024, 6, 5)))

    assert hist.args(0) == {"conid": "265598", "period": "3d", "bar": "1d", "outsideRth": "false",
                            "startTime": "20240605-20:00:00"}  # the close of the last session, UTC
    assert len(payloads) == 1
    p = payloads[0]
    assert (p.session_date, p.last_session, p.endpoint) == (date(2024, 6, 3), date(2024, 6, 5), HISTORY)
    assert p.request_key == "AAPL:1d:2024-06-03:2024-06-05"
    assert p.params == {**hist.args(0), "symbol": "AAPL"}
    assert p.body == json.dumps(history(DAILY)).encode()

    frame = provider.transform("bars_1d", stored(payloads))
    assert frame.schema == pl.Schema(STANDARD_COLUMNS["bars_1d"])
    assert frame.rows() == EXPECTED_DAILY  # plain prices; volume in lots of 100 shares -> shares


def test_bars_scaled_like_the_summary_are_divided_by_price_factor(httpserver: HTTPServer) -> None:
    scaled = [{**d, **{k: round(d[k] * 100, 4) for k in "ochl"}} for d in DAILY]
    payload = RawPayload("ibkr", "bars_1d", date(2024, 6, 3), "k", HISTORY, {"symbol": "AAPL"},
                         json.dumps(history(scaled, high="19690/541567.85/0")).encode(), payload_id=7)
    provider, _ = pinned(httpserver)
    frame = provider.transform("bars_1d", [payload])
    assert frame.select("open", "high", "low", "close").rows() == [r[2:6] for r in EXPECTED_DAILY]


def test_volume_multiplier_option(httpserver: HTTPServer) -> None:
    payload = RawPayload("ibkr", "bars_1d", date(2024, 6, 3), "k", HISTORY, {"symbol": "AAPL"},
                         json.dumps(history(DAILY)).encode())
    provider, _ = pinned(httpserver, volume_multiplier=1)
    assert provider.transform("bars_1d", [payload])["volume"].to_list() == [500805.39, 474714.45, 541567.85]


def test_long_daily_ranges_are_split_under_1000_points(httpserver: HTTPServer) -> None:
    hist = script(httpserver, HISTORY, json_response(history([])))
    provider, _ = pinned(httpserver)

    payloads = provider.extract(days(date(2020, 1, 2), date(2023, 12, 29)))

    chunks = sorted((r.args["startTime"], r.args["period"]) for r in hist.requests)
    assert chunks == [("20220927-20:00:00", "1000d"), ("20231229-21:00:00", "458d")]  # EDT, then EST closes
    assert [(p.session_date, p.last_session) for p in payloads] == [
        (date(2020, 1, 2), date(2022, 9, 27)), (date(2022, 9, 28), date(2023, 12, 29))]


def test_minute_bars_one_session_per_request(httpserver: HTTPServer) -> None:
    minute = [
        {"o": 221.0, "c": 221.2, "h": 221.3, "l": 220.9, "v": 1510.0, "t": ms("2024-07-03T13:30:00+00:00")},
        {"o": 221.2, "c": 221.5, "h": 221.6, "l": 221.1, "v": 830.0, "t": ms("2024-07-03T16:59:00+00:00")},
    ]
    hist = script(httpserver, HISTORY, json_response(history(minute)))
    provider, _ = pinned(httpserver)

    payloads = provider.extract(days(date(2024, 7, 2), date(2024, 7, 5), "bars_1m"))

    assert sorted((r.args["startTime"], r.args["period"], r.args["bar"]) for r in hist.requests) == [
        ("20240702-20:00:00", "1d", "1min"),
        ("20240703-17:00:00", "1d", "1min"),  # half day: closes at 13:00 New York
        ("20240705-20:00:00", "1d", "1min"),
    ]
    assert [p.session_date for p in payloads] == [date(2024, 7, 2), date(2024, 7, 3), date(2024, 7, 5)]
    frame = provider.transform("bars_1m", stored(payloads[1:2]))
    assert frame.schema == pl.Schema(STANDARD_COLUMNS["bars_1m"])
    assert frame.rows() == [
        ("AAPL", datetime.fromisoformat("2024-07-03T13:30:00+00:00"), 221.0, 221.3, 220.9, 221.2, 151000.0,
         None, None, 7),
        ("AAPL", datetime.fromisoformat("2024-07-03T16:59:00+00:00"), 221.2, 221.6, 221.1, 221.5, 83000.0,
         None, None, 7),
    ]


def test_at_most_five_history_requests_at_once(httpserver: HTTPServer) -> None:
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}

    def handler(_request: Request) -> Response:
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.15)
        with lock:
            state["now"] -= 1
        return json_response(history([]))

    threaded = HTTPServer(threaded=True)
    threaded.start()
    try:
        threaded.expect_request(HISTORY).respond_with_handler(handler)
        provider, _ = pinned(threaded)
        payloads = provider.extract(days(date(2024, 6, 3), date(2024, 6, 18), "bars_1m"))  # 12 sessions
    finally:
        threaded.clear()
        threaded.stop()
    assert len(payloads) == 12
    assert 2 <= state["peak"] <= 5


# -- failures -----------------------------------------------------------------------------------------


def test_429_waits_for_retry_after(httpserver: HTTPServer) -> None:
    s = script(httpserver, HISTORY, raw_response("Too many requests", 429, "text/plain", {"Retry-After": "3"}),
               json_response(history(DAILY)))
    provider, sleep = pinned(httpserver)
    assert len(provider.extract(days(date(2024, 6, 3), date(2024, 6, 5)))) == 1
    assert s.count == 2
    assert 3.0 in sleep.waits


def test_5xx_storm_then_data(httpserver: HTTPServer) -> None:
    s = script(httpserver, HISTORY, raw_response("error", 500), raw_response("bad gateway", 502),
               raw_response("unavailable", 503), json_response(history(DAILY)))
    provider, _ = pinned(httpserver)
    assert len(provider.extract(days(date(2024, 6, 3), date(2024, 6, 5)))) == 1
    assert s.count == 4


def test_5xx_storm_fails_the_fetch(httpserver: HTTPServer) -> None:
    script(httpserver, HISTORY, json_response({"error": "Service Unavailable"}, 503))
    provider, _ = pinned(httpserver, http={"max_attempts": 2})
    with pytest.raises(ProviderUnavailableError, match=r"HTTP 503.*gave up after 2 attempts"):
        provider.extract(days(date(2024, 6, 3), date(2024, 6, 5)))


def test_timeout_is_retried(httpserver: HTTPServer) -> None:
    script(httpserver, HISTORY, slow(0.5, json_response(history(DAILY))), json_response(history(DAILY)))
    provider, _ = pinned(httpserver, http={"timeout": 0.2})
    assert len(provider.extract(days(date(2024, 6, 3), date(2024, 6, 5)))) == 1
    assert provider.fetch_stats()["retries"] >= 1


def test_malformed_json_fails_without_retry(httpserver: HTTPServer) -> None:
    s = script(httpserver, HISTORY, raw_response('{"symbol":"AAPL","data":[{"o":1'))
    provider, _ = pinned(httpserver)
    with pytest.raises(MalformedPayloadError, match="not valid JSON"):
        provider.extract(days(date(2024, 6, 3), date(2024, 6, 5)))
    assert s.count == 1


def test_gateway_not_logged_in_is_an_entitlement_error(httpserver: HTTPServer) -> None:
    script(httpserver, HISTORY, raw_response("", 401))
    provider, _ = pinned(httpserver)
    with pytest.raises(EntitlementError, match="not authenticated"):
        provider.extract(days(date(2024, 6, 3), date(2024, 6, 5)))


def test_error_body_with_200_is_a_bad_request(httpserver: HTTPServer) -> None:
    s = script(httpserver, HISTORY, json_response({"error": "Invalid conid"}))
    provider, _ = pinned(httpserver)
    with pytest.raises(BadRequestError, match="Invalid conid"):
        provider.extract(days(date(2024, 6, 3), date(2024, 6, 5)))
    assert s.count == 1


@pytest.mark.parametrize("error", [
    "No market data permissions for NASDAQ STK",
    "Historical Market Data Service error message:No market data permissions for NYSE STK",
])
def test_missing_market_data_permissions_are_an_entitlement_error(httpserver: HTTPServer, error: str) -> None:
    s = script(httpserver, HISTORY, json_response({"error": error}))
    provider, sleep = pinned(httpserver)
    with pytest.raises(EntitlementError, match="No market data permissions") as info:
        provider.extract(days(date(2024, 6, 3), date(2024, 6, 5)))
    assert s.count == 1  # final: not retried
    assert sleep.waits == []
    assert info.value.hint is not None
    assert "Market Data Subscriptions" in info.value.hint


def test_holiday_and_empty_answer(httpserver: HTTPServer) -> None:
    s = script(httpserver, HISTORY, json_response(history([])))
    provider, _ = pinned(httpserver)
    assert provider.extract(days(date(2024, 12, 25), date(2024, 12, 25))) == []
    assert s.count == 0
    payloads = provider.extract(days(date(2024, 12, 24), date(2024, 12, 26)))
    frame = provider.transform("bars_1d", payloads)
    assert frame.is_empty()
    assert frame.schema == pl.Schema(STANDARD_COLUMNS["bars_1d"])


def test_no_corporate_actions(httpserver: HTTPServer) -> None:
    provider, _ = pinned(httpserver)
    assert "corporate_actions" not in provider.datasets
    with pytest.raises(ProviderError, match="no dataset 'corporate_actions'"):
        provider.extract(days(date(2024, 6, 3), date(2024, 6, 5), "corporate_actions"))


# -- through Dagster ----------------------------------------------------------------------------------


def test_dagster_run_stores_ibkr_bars_and_a_rerun_stores_nothing_twice(
        httpserver: HTTPServer, database_url: str, kafka_bootstrap: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    msft_search = [{"conid": "272093", "companyHeader": "MICROSOFT CORP - NASDAQ", "companyName": "MICROSOFT CORP",
                    "symbol": "MSFT", "description": "NASDAQ", "sections": [{"secType": "STK"}]}]
    msft = [{"o": 415.0 + i, "c": 416.0 + i, "h": 420.0 + i, "l": 410.0 + i, "v": 10000.0 * (i + 1),
             "t": ms(f"2024-06-0{3 + i}T13:30:00+00:00")} for i in range(3)]
    search = script(httpserver, SEARCH, json_response(AAPL_SEARCH), query={"symbol": "AAPL"})
    script(httpserver, SEARCH, json_response(msft_search), query={"symbol": "MSFT"})
    aapl = script(httpserver, HISTORY, json_response(history(DAILY)), query={"conid": "265598", "bar": "1d"})
    script(httpserver, HISTORY, json_response(history(msft, symbol="MSFT")), query={"conid": "272093", "bar": "1d"})
    script(httpserver, HISTORY, json_response(history([])), query={"bar": "1min"})
    monkeypatch.setenv("MDP_IBKR_BASE_URL", httpserver.url_for("/v1/api"))
    monkeypatch.setenv("MDP_FRAMES_DIR", str(tmp_path / "frames"))
    universe = servers.universe_file(tmp_path, "ibkr", ["AAPL", "MSFT"], http=FAST)
    defs = build_definitions(settings_for(database_url, kafka_bootstrap, universe=universe))

    for _ in range(2):
        result = materialize_range(defs, date(2024, 6, 3), date(2024, 6, 5), providers=["ibkr"],
                                   instance=dg.DagsterInstance.ephemeral())
        assert result.success

    assert aapl.count == 2
    assert search.count >= 1
    with connect(database_url) as conn:
        stored = read_bars_1d(conn, start=date(2024, 6, 3), end=date(2024, 6, 5), provider="ibkr")
        raw = conn.execute("select count(*) from raw.payloads where provider = 'ibkr' and dataset = 'bars_1d'"
                           ).fetchone()
    assert raw == (2,)  # one payload per symbol, each stored once over two runs
    assert stored.select("symbol", "session_date", "close", "volume").sort("symbol", "session_date").rows() == [
        ("AAPL", date(2024, 6, 3), 194.03, 50080539.0), ("AAPL", date(2024, 6, 4), 194.35, 47471445.0),
        ("AAPL", date(2024, 6, 5), 195.87, 54156785.0), ("MSFT", date(2024, 6, 3), 416.0, 1e6),
        ("MSFT", date(2024, 6, 4), 417.0, 2e6), ("MSFT", date(2024, 6, 5), 418.0, 3e6),
    ]


def test_registry_builds_the_provider_from_the_universe_file(tmp_path: Path) -> None:
    on, off, settings = servers.registry_files(tmp_path, "ibkr")

    provider = build_provider("ibkr", load_universe(on), settings)
    assert provider.name == "ibkr"
    assert provider.base_url == "http://127.0.0.1:9/x"  # type: ignore[attr-defined]
    with pytest.raises(ProviderError, match="disabled in the universe file"):
        build_provider("ibkr", load_universe(off), settings)
