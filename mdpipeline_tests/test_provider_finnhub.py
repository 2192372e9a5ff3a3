"""The Finnhub provider against a loopback server speaking its documented JSON."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from pytest_httpserver import HTTPServer

from mdpipeline.orchestration.assembly import build_definitions
from mdpipeline.orchestration.runner import materialize_range
from mdpipeline.providers.base import STANDARD_COLUMNS, ProviderError, Query
from mdpipeline.providers.errors import (
    BadRequestError,
    CircuitOpenError,
    EntitlementError,
    MalformedPayloadError,
    ProviderUnavailableError,
)
from mdpipeline.providers.finnhub import FinnhubProvider
from mdpipeline.storage.bars import read_bars_1d
from mdpipeline.storage.database import connect
from mdpipeline_tests import provider_servers as servers
from mdpipeline_tests.pipeline_helpers import settings_for
from mdpipeline_tests.provider_servers import (
    SleepRecorder,
    bars_1d_chain,
    json_response,
    raw_response,
    script,
    slow,
    truncated_response,
)

KEY = "fh-token-98765"
NO_ACCESS = {"error": "You don't have access to this resource."}


def utc(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp())


# Daily candles are stamped at 00:00 UTC of the session date.
AAPL_DAILY = {"s": "ok",
              "t": [utc(2024, 6, 3), utc(2024, 6, 4), utc(2024, 6, 5)],
              "o": [192.9, 194.635, 195.4], "h": [194.99, 195.32, 196.9], "l": [192.52, 193.0342, 194.87],
              "c": [194.03, 194.35, 195.87], "v": [50080539, 47471445, 54156785]}
# NVDA around its 10-for-1 split (ex-date 2024-06-10), split-adjusted as Finnhub serves daily data.
NVDA_DAILY = {"s": "ok", "t": [utc(2024, 6, 7), utc(2024, 6, 10)],
              "o": [119.77, 120.37], "h": [121.69171, 123.1], "l": [118.022, 117.01], "c": [120.888, 121.79],
              "v": [412385800, 314162700]}
NVDA_SPLITS = [{"symbol": "NVDA", "date": "2024-06-10", "fromFactor": 1, "toFactor": 10},
               {"symbol": "NVDA", "date": "2021-07-20", "fromFactor": 1, "toFactor": 4}]


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield from servers.isolated(monkeypatch, {"FINNHUB_API_KEY": KEY})


Make = Callable[..., tuple[FinnhubProvider, SleepRecorder]]


@pytest.fixture
def make(httpserver: HTTPServer) -> Make:
    return partial(servers.make_provider, FinnhubProvider, httpserver, prefix="/api/v1")


def q(dataset: str, start: date, end: date) -> Query:
    return Query(dataset, start, end, ())


def serve_splits(httpserver: HTTPServer, rows: list[dict] | None = None) -> None:
    script(httpserver, "/api/v1/stock/split", json_response(rows or []))


def test_daily_candles_exact_rows(httpserver: HTTPServer, make: Make) -> None:
    s = script(httpserver, "/api/v1/stock/candle", json_response(AAPL_DAILY), query={"resolution": "D"})
    serve_splits(httpserver)
    provider, _ = make()
    payloads = provider.extract(q("bars_1d", date(2024, 6, 3), date(2024, 6, 5)))

    candle, split = payloads
    assert candle.request_key == "candle:D:AAPL:2024@2024-06-05"
    assert (candle.session_date, candle.last_session) == (date(2024, 6, 3), date(2024, 6, 5))
    assert candle.endpoint == "/api/v1/stock/candle"
    assert candle.params == {"symbol": "AAPL", "resolution": "D", "from": str(utc(2024, 6, 3)),
                             "to": str(utc(2024, 6, 5, 23, 59, 59))}
    assert s.requests[0].headers["X-Finnhub-Token"] == KEY
    assert "token" not in s.args()
    assert split.request_key == "split:AAPL@2024-06-05"
    assert KEY not in repr(payloads)

    frame = provider.transform("bars_1d", payloads)
    assert frame.schema == pl.Schema(STANDARD_COLUMNS["bars_1d"])
    assert frame.select("symbol", "session_date", "open", "high", "low", "close", "volume").rows() == [
        ("AAPL", date(2024, 6, 3), 192.9, 194.99, 192.52, 194.03, 50080539.0),
        ("AAPL", date(2024, 6, 4), 194.635, 195.32, 193.0342, 194.35, 47471445.0),
        ("AAPL", date(2024, 6, 5), 195.4, 196.9, 194.87, 195.87, 54156785.0),
    ]


def test_daily_candles_are_unadjusted_for_later_splits(httpserver: HTTPServer, make: Make) -> None:
    script(httpserver, "/api/v1/stock/candle", json_response(NVDA_DAILY))
    serve_splits(httpserver, NVDA_SPLITS)
    provider, _ = make(("NVDA",))
    payloads = provider.extract(q("bars_1d", date(2024, 6, 7), date(2024, 6, 10)))
    rows = provider.transform("bars_1d", payloads).select("session_date", "open", "high", "low", "close",
                                                           "volume").rows()
    assert rows[0][0] == date(2024, 6, 7)
    assert rows[0][1:] == pytest.approx((1197.7, 1216.9171, 1180.22, 1208.88, 41238580.0))  # as traded
    assert rows[1] == (date(2024, 6, 10), 120.37, 123.1, 117.01, 121.79, 314162700.0)  # on/after the ex-date

    # A candle fetched before the split was announced is already raw: nothing to undo.
    early = [p if not p.request_key.startswith("candle:") else
             type(p)(**{**p.__dict__, "fetched_at": datetime(2024, 6, 8, tzinfo=UTC)}) for p in payloads]
    assert provider.transform("bars_1d", early)["close"].to_list()[0] == 120.888

    kept, _ = make(("NVDA",), unadjust_splits=False)
    assert kept.transform("bars_1d", payloads)["close"].to_list() == [120.888, 121.79]


def test_minute_candles_months_and_regular_hours(httpserver: HTTPServer, make: Make) -> None:
    may = script(httpserver, "/api/v1/stock/candle", json_response({
        "s": "ok", "t": [utc(2024, 5, 31, 13, 30), utc(2024, 5, 31, 19, 59)], "o": [191.44, 192.0],
        "h": [191.6, 192.3], "l": [191.2, 191.9], "c": [191.5, 192.25], "v": [1250331, 3012004]}),
        query={"resolution": "1", "from": str(utc(2024, 5, 31))})
    june = script(httpserver, "/api/v1/stock/candle", json_response({
        "s": "ok",
        "t": [utc(2024, 6, 3, 9, 0), utc(2024, 6, 3, 13, 30), utc(2024, 6, 3, 13, 31), utc(2024, 6, 3, 20, 0)],
        "o": [191.1, 192.9, 193.31, 194.05], "h": [191.2, 193.4, 193.5, 194.1],
        "l": [191.0, 192.52, 193.2, 194.0], "c": [191.15, 193.3, 193.45, 194.02],
        "v": [12000, 1734589, 402311, 55000]}), query={"resolution": "1", "from": str(utc(2024, 6, 3))})
    provider, _ = make()
    payloads = provider.extract(q("bars_1m", date(2024, 5, 31), date(2024, 6, 3)))
    assert [p.request_key for p in payloads] == ["candle:1:AAPL:2024-05@2024-05-31", "candle:1:AAPL:2024-06@2024-06-03"]
    assert (may.count, june.count) == (1, 1)

    frame = provider.transform("bars_1m", payloads)
    assert frame.schema == pl.Schema(STANDARD_COLUMNS["bars_1m"])
    assert frame.select("ts", "open", "close", "volume").rows() == [
        (datetime(2024, 5, 31, 13, 30, tzinfo=UTC), 191.44, 191.5, 1250331.0),
        (datetime(2024, 5, 31, 19, 59, tzinfo=UTC), 192.0, 192.25, 3012004.0),
        (datetime(2024, 6, 3, 13, 30, tzinfo=UTC), 192.9, 193.3, 1734589.0),  # 09:00Z pre-market dropped
        (datetime(2024, 6, 3, 13, 31, tzinfo=UTC), 193.31, 193.45, 402311.0),  # 20:00Z after-hours dropped
    ]
    extended, _ = make(extended_hours=True)
    assert extended.transform("bars_1m", payloads).height == 6


def test_splits_and_dividends(httpserver: HTTPServer, make: Make) -> None:
    split = script(httpserver, "/api/v1/stock/split", json_response(NVDA_SPLITS[:1]))
    script(httpserver, "/api/v1/stock/dividend", json_response([
        {"symbol": "NVDA", "date": "2024-06-11", "amount": 0.01, "adjustedAmount": 0.01, "payDate": "2024-06-28",
         "recordDate": "2024-06-11", "declarationDate": "2024-05-22", "currency": "USD"}]))
    provider, _ = make(("NVDA",))
    payloads = provider.extract(q("corporate_actions", date(2024, 6, 3), date(2024, 6, 14)))
    assert split.args() == {"symbol": "NVDA", "from": "2024-06-03", "to": "2024-06-14"}
    assert [p.request_key for p in payloads] == ["split:NVDA@2024-06-14", "dividend:NVDA@2024-06-14"]
    frame = provider.transform("corporate_actions", payloads)
    assert frame.schema == pl.Schema(STANDARD_COLUMNS["corporate_actions"])
    assert frame.drop("raw_payload_id").rows() == [
        ("NVDA", date(2024, 6, 10), "split", 10.0, None, None),
        ("NVDA", date(2024, 6, 11), "cash_dividend", None, 0.01, "USD"),
    ]


def test_no_data_is_an_empty_result(httpserver: HTTPServer, make: Make) -> None:
    s = script(httpserver, "/api/v1/stock/candle", json_response({"s": "no_data"}))
    serve_splits(httpserver)
    provider, _ = make()
    payloads = provider.extract(q("bars_1d", date(2024, 6, 3), date(2024, 6, 3)))
    assert payloads[0].body == b'{"s": "no_data"}'  # stored: the fetch happened
    assert provider.transform("bars_1d", payloads).is_empty()
    assert provider.extract(q("bars_1m", date(2024, 6, 19), date(2024, 6, 19))) == []  # holiday: no request
    assert s.count == 1


def test_token_as_parameter_is_redacted(httpserver: HTTPServer, make: Make) -> None:
    s = script(httpserver, "/api/v1/stock/split", json_response([]))
    script(httpserver, "/api/v1/stock/dividend", json_response([]))
    provider, _ = make(token_in="param")
    payloads = provider.extract(q("corporate_actions", date(2024, 6, 3), date(2024, 6, 3)))
    assert s.args()["token"] == KEY
    assert payloads[0].params["token"] == "***"
    assert KEY not in repr(payloads)


@pytest.mark.parametrize(("status", "body", "error", "match"), [
    (403, NO_ACCESS, EntitlementError, "You don't have access to this resource"),
    (401, {"error": "Invalid API key"}, EntitlementError, "Invalid API key"),
    (422, {"error": "Wrong resolution"}, BadRequestError, "Wrong resolution"),
    (200, {"error": "Symbol not supported"}, BadRequestError, "Symbol not supported"),
    (200, {"error": "You don't have access to this resource."}, EntitlementError, "access"),
])
def test_error_answers_fail_typed_without_retry(httpserver: HTTPServer, make: Make, status: int, body: dict,
                                                error: type[Exception], match: str) -> None:
    s = script(httpserver, "/api/v1/stock/candle", json_response(body, status))
    provider, sleep = make()
    with pytest.raises(error, match=match) as info:
        provider.extract(q("bars_1d", date(2024, 6, 3), date(2024, 6, 5)))
    assert s.count == 1
    assert sleep.waits == []
    assert KEY not in str(info.value)


def test_429_retry_after(httpserver: HTTPServer, make: Make) -> None:
    s = script(httpserver, "/api/v1/stock/candle", json_response({"error": "API limit reached"}, 429,
                                                                  {"Retry-After": "2"}), json_response(AAPL_DAILY))
    serve_splits(httpserver)
    provider, sleep = make()
    provider.extract(q("bars_1d", date(2024, 6, 3), date(2024, 6, 5)))
    assert sleep.waits == [2.0]
    assert s.count == 2


def test_429_waits_for_rate_limit_reset(httpserver: HTTPServer, make: Make) -> None:
    reset = str(int(time.time()) + 5)
    s = script(httpserver, "/api/v1/stock/candle",
               json_response({"error": "API limit reached. Please try again later."}, 429,
                             {"X-Ratelimit-Limit": "60", "X-Ratelimit-Remaining": "0", "X-Ratelimit-Reset": reset}),
               json_response(AAPL_DAILY))
    serve_splits(httpserver)
    provider, sleep = make()
    provider.extract(q("bars_1d", date(2024, 6, 3), date(2024, 6, 5)))
    assert len(sleep.waits) == 1
    assert 3 <= sleep.waits[0] <= 5
    assert s.count == 2
    assert provider.fetch_stats()["rate_limited"] == 1


def test_5xx_storm_is_retried(httpserver: HTTPServer, make: Make) -> None:
    s = script(httpserver, "/api/v1/stock/candle", raw_response("", 502), raw_response("", 503),
               raw_response("", 500), json_response(AAPL_DAILY))
    serve_splits(httpserver)
    provider, sleep = make()
    provider.extract(q("bars_1d", date(2024, 6, 3), date(2024, 6, 5)))
    assert s.count == 4
    assert provider.fetch_stats()["retries"] == 3
    assert len(sleep.waits) == 3


def test_dead_source_fails_the_partition_with_the_breaker(httpserver: HTTPServer, make: Make) -> None:
    s = script(httpserver, "/api/v1/stock/candle", raw_response("Service Unavailable", 503))
    provider, _ = make(("AAPL", "MSFT"), http={"breaker_fail_max": 4, "max_attempts": 3})
    with pytest.raises(ProviderUnavailableError, match="gave up after 3 attempts"):
        provider.extract(q("bars_1d", date(2024, 6, 3), date(2024, 6, 5)))
    with pytest.raises(CircuitOpenError, match="no request sent"):
        provider.extract(q("bars_1d", date(2024, 6, 3), date(2024, 6, 5)))
    assert s.count == 4
    time.sleep(0.55)  # breaker_reset_timeout of the test policy
    assert provider.fetch_stats()["breaker_state"] == "half-open"


def test_timeout_then_success(httpserver: HTTPServer, make: Make) -> None:
    s = script(httpserver, "/api/v1/stock/candle", slow(0.6, json_response(AAPL_DAILY)), json_response(AAPL_DAILY))
    serve_splits(httpserver)
    provider, _ = make(http={"timeout": 0.2})
    payloads = provider.extract(q("bars_1d", date(2024, 6, 3), date(2024, 6, 5)))
    assert provider.transform("bars_1d", payloads).height == 3
    assert s.count >= 2


def test_truncated_then_complete(httpserver: HTTPServer, make: Make) -> None:
    full = json_response(AAPL_DAILY).get_data()
    s = script(httpserver, "/api/v1/stock/candle", truncated_response(full[:40], len(full)), raw_response(full))
    serve_splits(httpserver)
    provider, _ = make()
    payloads = provider.extract(q("bars_1d", date(2024, 6, 3), date(2024, 6, 5)))
    assert payloads[0].body == full
    assert s.count == 2


@pytest.mark.parametrize(("body", "match"), [
    (b'{"s": "ok", "t": [1717372800], "o": [192.9', "not valid JSON"),
    (b'{"s": "ok", "t": [1717372800, 1717459200], "o": [1.0], "h": [1.0], "l": [1.0], "c": [1.0], "v": [1]}',
     "unequal length"),
    (b'{"s": "ok", "t": [1717372800]}', "missing"),
    (b'{"s": "error"}', "candle status 'error'"),
    (b'[]', "candle status 'list'"),
])
def test_malformed_candles(httpserver: HTTPServer, make: Make, body: bytes, match: str) -> None:
    s = script(httpserver, "/api/v1/stock/candle", raw_response(body))
    provider, _ = make()
    with pytest.raises(MalformedPayloadError, match=match):
        provider.extract(q("bars_1d", date(2024, 6, 3), date(2024, 6, 5)))
    assert s.count == 1


def test_missing_key_names_the_variable(make: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FINNHUB_API_KEY")
    provider, _ = make()
    with pytest.raises(ProviderError, match="FINNHUB_API_KEY"):
        provider.extract(q("bars_1d", date(2024, 6, 3), date(2024, 6, 5)))


def test_dagster_materializes_daily_bars(httpserver: HTTPServer, database_url: str, kafka_bootstrap: str,
                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MDP_FRAMES_DIR", str(tmp_path / "frames"))
    monkeypatch.setenv("MDP_FINNHUB_BASE_URL", httpserver.url_for("/api/v1"))
    script(httpserver, "/api/v1/stock/candle", json_response(AAPL_DAILY))
    script(httpserver, "/api/v1/stock/split", json_response([]))
    script(httpserver, "/api/v1/stock/dividend", json_response([]))
    universe = servers.universe_file(tmp_path, "finnhub", ["AAPL"], only=True, http={"rate_per_second": None})
    defs = build_definitions(settings_for(database_url, kafka_bootstrap, universe=universe))
    result = materialize_range(defs, date(2024, 6, 3), date(2024, 6, 5), providers=["finnhub"],
                               select=bars_1d_chain("finnhub"), instance=dg.DagsterInstance.ephemeral())
    assert result.success
    with connect(database_url) as conn:
        bars = read_bars_1d(conn, start=date(2024, 6, 3), end=date(2024, 6, 5))
        leaked = conn.execute("select count(*) from raw.payloads where params::text like %s",
                              (f"%{KEY}%",)).fetchone()
    assert bars.select("symbol", "session_date", "provider", "close").sort("session_date").rows() == [
        ("AAPL", date(2024, 6, 3), "finnhub", 194.03),
        ("AAPL", date(2024, 6, 4), "finnhub", 194.35),
        ("AAPL", date(2024, 6, 5), "finnhub", 195.87),
    ]
    assert leaked == (0,)
