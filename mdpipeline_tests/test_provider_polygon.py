"""The Polygon provider against a real HTTP server on loopback, serving Polygon's documented formats."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from pytest_httpserver import HTTPServer

from mdpipeline.orchestration.assembly import build_definitions
from mdpipeline.orchestration.runner import materialize_range
from mdpipeline.providers import build_provider
from mdpipeline.providers.base import STANDARD_COLUMNS, ProviderError, Query, RawPayload
from mdpipeline.providers.errors import (
    BadRequestError,
    EntitlementError,
    MalformedPayloadError,
    ProviderUnavailableError,
    RateLimitError,
)
from mdpipeline.providers.polygon import PolygonProvider
from mdpipeline.providers.reconcile import prefer_latest_payload
from mdpipeline.quality.quarantine import split_valid
from mdpipeline.quality.schemas import StandardBars1d
from mdpipeline.storage.bars import read_bars_1d
from mdpipeline.storage.database import connect
from mdpipeline.universe import load_universe
from mdpipeline_tests import provider_servers as servers
from mdpipeline_tests.pipeline_helpers import settings_for
from mdpipeline_tests.provider_servers import SleepRecorder, json_response, raw_response, script, slow

API_KEY = "pk_TEST+secret/key=="
FAST = {"rate_per_second": None, "backoff_initial": 0.01, "backoff_max": 0.05, "timeout": 2.0, "max_attempts": 4,
        "breaker_fail_max": 50}
DAY_PATH = "/v2/aggs/ticker/AAPL/range/1/day/2024-06-03/2024-06-05"
NY_MIDNIGHT = {date(2024, 6, 3): 1717387200000, date(2024, 6, 4): 1717473600000, date(2024, 6, 5): 1717560000000}


def agg(day: date, o: float, h: float, low: float, c: float, v: float, vw: float, n: int) -> dict:
    """One daily aggregate as Polygon documents it (`t` = start of the day in New York, epoch ms)."""
    return {"v": v, "vw": vw, "o": o, "c": c, "h": h, "l": low, "t": NY_MIDNIGHT[day], "n": n}


A_0603 = agg(date(2024, 6, 3), 192.9, 194.99, 192.52, 194.03, 5.0080539e7, 193.9, 689000)
A_0604 = agg(date(2024, 6, 4), 194.635, 195.32, 193.0342, 194.35, 4.7471445e7, 194.2, 610000)
A_0605 = agg(date(2024, 6, 5), 195.4, 196.9, 194.87, 195.87, 5.4156785e7, 195.9, 700000)


def aggs(results: list[dict], next_url: str | None = None, ticker: str = "AAPL") -> dict:
    body = {"ticker": ticker, "queryCount": len(results), "resultsCount": len(results), "adjusted": False,
            "results": results, "status": "OK", "request_id": "6a7e466379af0a71039d60cc78e72282",
            "count": len(results)}
    if next_url:
        body["next_url"] = next_url
    return body


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield from servers.isolated(monkeypatch, {"POLYGON_API_KEY": API_KEY}, "polygon")


def make(server: HTTPServer, symbols: tuple[str, ...] = ("AAPL",), http: dict | None = None,
         **options: object) -> tuple[PolygonProvider, SleepRecorder]:
    return servers.make_provider(PolygonProvider, server, symbols, fast=FAST, http=http, **options)


def query(dataset: str = "bars_1d", start: date = date(2024, 6, 3), end: date = date(2024, 6, 5)) -> Query:
    return Query(dataset, start, end, ("AAPL",))


def with_ids(payloads: list[RawPayload]) -> list[RawPayload]:
    return [dataclasses.replace(p, payload_id=i + 1) for i, p in enumerate(payloads)]


# -- bars ---------------------------------------------------------------------------------------------


def test_daily_aggregates_follow_next_url_and_give_exact_rows(httpserver: HTTPServer) -> None:
    next_url = httpserver.url_for(DAY_PATH) + "?cursor=bGltaXQ9MiZzb3J0PWFzYw"
    s = script(httpserver, DAY_PATH, json_response(aggs([A_0603, A_0604], next_url)),
               json_response(aggs([A_0604, A_0605])))
    provider, _ = make(httpserver)

    payloads = provider.extract(query())

    assert s.count == 2
    assert s.args(0) == {"adjusted": "false", "sort": "asc", "limit": "50000"}
    assert s.args(1) == {"cursor": "bGltaXQ9MiZzb3J0PWFzYw"}
    assert all(r.headers["Authorization"] == f"Bearer {API_KEY}" for r in s.requests)
    assert [p.request_key for p in payloads] == ["day:AAPL:2024-06-03:2024-06-05:p0",
                                                 "day:AAPL:2024-06-03:2024-06-05:p1"]
    assert [p.params for p in payloads] == [{"adjusted": "false", "sort": "asc", "limit": "50000"},
                                            {"cursor": "bGltaXQ9MiZzb3J0PWFzYw"}]
    assert all(p.endpoint == DAY_PATH for p in payloads)
    assert {(p.session_date, p.last_session) for p in payloads} == {(date(2024, 6, 3), date(2024, 6, 5))}

    frame = provider.transform("bars_1d", with_ids(payloads))
    assert frame.schema == pl.Schema(STANDARD_COLUMNS["bars_1d"])
    assert frame.rows() == [
        ("AAPL", date(2024, 6, 3), 192.9, 194.99, 192.52, 194.03, 50080539.0, 193.9, 689000, 1),
        ("AAPL", date(2024, 6, 4), 194.635, 195.32, 193.0342, 194.35, 47471445.0, 194.2, 610000, 1),
        ("AAPL", date(2024, 6, 4), 194.635, 195.32, 193.0342, 194.35, 47471445.0, 194.2, 610000, 2),
        ("AAPL", date(2024, 6, 5), 195.4, 196.9, 194.87, 195.87, 54156785.0, 195.9, 700000, 2),
    ]


def test_bar_repeated_across_pages_collapses_in_the_pipeline(httpserver: HTTPServer) -> None:
    next_url = httpserver.url_for(DAY_PATH) + "?cursor=abc"
    script(httpserver, DAY_PATH, json_response(aggs([A_0603, A_0604], next_url)),
           json_response(aggs([A_0604, A_0605])))
    provider, _ = make(httpserver)
    payloads = provider.extract(query())

    frame = provider.transform("bars_1d", payloads)
    assert frame.filter(pl.col("session_date") == date(2024, 6, 4)).n_unique() == 1
    outcome = split_valid(frame, StandardBars1d, ["symbol", "session_date"])
    assert (outcome.valid.height, outcome.exact_duplicates, outcome.quarantined.height) == (3, 1, 0)

    stored = with_ids(payloads)
    latest = prefer_latest_payload(provider.transform("bars_1d", stored), stored, ["symbol", "session_date"])
    outcome = split_valid(latest, StandardBars1d, ["symbol", "session_date"])
    assert (outcome.valid.height, outcome.quarantined.height) == (3, 0)


def test_next_url_of_another_host_is_followed_on_the_configured_base_url(httpserver: HTTPServer) -> None:
    next_url = f"https://api.polygon.io{DAY_PATH}?cursor=c2Vjb25k"
    s = script(httpserver, DAY_PATH, json_response(aggs([A_0603], next_url)), json_response(aggs([A_0604])))
    provider, _ = make(httpserver)
    assert len(provider.extract(query())) == 2
    assert s.args(1) == {"cursor": "c2Vjb25k"}


def test_repeated_next_url_is_a_pagination_loop(httpserver: HTTPServer) -> None:
    s = script(httpserver, DAY_PATH, json_response(aggs([A_0603], httpserver.url_for(DAY_PATH) + "?cursor=x")))
    provider, _ = make(httpserver)
    with pytest.raises(MalformedPayloadError, match="pagination loop"):
        provider.extract(query())
    assert s.count == 2


def test_holiday_has_no_results_and_is_an_empty_answer(httpserver: HTTPServer) -> None:
    path = "/v2/aggs/ticker/AAPL/range/1/day/2024-07-03/2024-07-05"
    empty = {"ticker": "AAPL", "queryCount": 0, "resultsCount": 0, "adjusted": False, "status": "OK",
             "request_id": "x", "count": 0}
    s = script(httpserver, path, json_response(empty))
    provider, _ = make(httpserver)

    assert provider.extract(query(start=date(2024, 7, 4), end=date(2024, 7, 4))) == []  # Independence Day
    assert s.count == 0
    payloads = provider.extract(query(start=date(2024, 7, 3), end=date(2024, 7, 5)))
    assert len(payloads) == 1
    frame = provider.transform("bars_1d", payloads)
    assert frame.is_empty()
    assert frame.schema == pl.Schema(STANDARD_COLUMNS["bars_1d"])


def test_minute_aggregates_keep_the_regular_session(httpserver: HTTPServer) -> None:
    path = "/v2/aggs/ticker/AAPL/range/1/minute/2024-06-03/2024-06-03"

    def minute(iso: str, c: float) -> dict:
        ms = int(datetime.fromisoformat(iso).timestamp() * 1000)
        return {"v": 1200.0, "vw": c, "o": c, "c": c, "h": c + 0.1, "l": c - 0.1, "t": ms, "n": 12}

    results = [minute("2024-06-03T08:00:00-04:00", 191.5), minute("2024-06-03T09:30:00-04:00", 192.9),
               minute("2024-06-03T15:59:00-04:00", 194.0), minute("2024-06-03T16:00:00-04:00", 194.05)]
    s = script(httpserver, path, json_response(aggs(results)))
    provider, _ = make(httpserver)
    payloads = provider.extract(query("bars_1m", date(2024, 6, 3), date(2024, 6, 3)))
    assert s.count == 1

    frame = provider.transform("bars_1m", payloads)
    assert frame.schema == pl.Schema(STANDARD_COLUMNS["bars_1m"])
    assert frame.rows() == [
        ("AAPL", datetime.fromisoformat("2024-06-03T13:30:00+00:00"), 192.9, 193.0, 192.8, 192.9, 1200.0, 192.9,
         12, None),
        ("AAPL", datetime.fromisoformat("2024-06-03T19:59:00+00:00"), 194.0, 194.1, 193.9, 194.0, 1200.0, 194.0,
         12, None),
    ]
    everything, _ = make(httpserver, extended_hours=True)
    assert everything.transform("bars_1m", payloads).height == 4


# -- corporate actions --------------------------------------------------------------------------------


def test_splits_and_dividends(httpserver: HTTPServer) -> None:
    splits_next = httpserver.url_for("/v3/reference/splits") + "?cursor=YXA9c3BsaXRz"
    splits = script(httpserver, "/v3/reference/splits",
                    json_response({"results": [{"execution_date": "2024-06-10", "id": "E1", "split_from": 1,
                                                "split_to": 10, "ticker": "AAPL"}],
                                   "status": "OK", "request_id": "r1", "next_url": splits_next}),
                    json_response({"results": [{"execution_date": "2024-06-20", "id": "E2", "split_from": 20,
                                                "split_to": 1, "ticker": "AAPL"}], "status": "OK", "request_id": "r2"}))
    dividends = script(httpserver, "/v3/reference/dividends", json_response({"results": [
        {"cash_amount": 0.25, "currency": "USD", "declaration_date": "2024-05-02", "dividend_type": "CD",
         "ex_dividend_date": "2024-05-10", "frequency": 4, "id": "E3", "pay_date": "2024-05-16",
         "record_date": "2024-05-13", "ticker": "AAPL"},
        {"cash_amount": 1.5, "currency": "usd", "dividend_type": "SC", "ex_dividend_date": "2024-06-14",
         "id": "E4", "ticker": "AAPL"},
    ], "status": "OK", "request_id": "r3"}))
    provider, _ = make(httpserver)

    payloads = provider.extract(query("corporate_actions", date(2024, 5, 1), date(2024, 6, 28)))

    assert splits.args(0) == {"ticker": "AAPL", "limit": "1000", "order": "asc", "sort": "execution_date",
                              "execution_date.gte": "2024-05-01", "execution_date.lte": "2024-06-28"}
    assert splits.args(1) == {"cursor": "YXA9c3BsaXRz"}
    assert dividends.args(0) == {"ticker": "AAPL", "limit": "1000", "order": "asc", "sort": "ex_dividend_date",
                                 "ex_dividend_date.gte": "2024-05-01", "ex_dividend_date.lte": "2024-06-28"}
    assert [p.request_key for p in payloads] == ["splits:AAPL:2024-05-01:2024-06-28:p0",
                                                 "splits:AAPL:2024-05-01:2024-06-28:p1",
                                                 "dividends:AAPL:2024-05-01:2024-06-28:p0"]
    frame = provider.transform("corporate_actions", with_ids(payloads))
    assert frame.schema == pl.Schema(STANDARD_COLUMNS["corporate_actions"])
    assert frame.sort("ex_date").rows() == [
        ("AAPL", date(2024, 5, 10), "cash_dividend", None, 0.25, "USD", 3),
        ("AAPL", date(2024, 6, 10), "split", 10.0, None, None, 1),
        ("AAPL", date(2024, 6, 14), "cash_dividend", None, 1.5, "USD", 3),
        ("AAPL", date(2024, 6, 20), "split", 0.05, None, None, 2),
    ]


# -- failures -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "body", "error", "text"), [
    (401, {"status": "ERROR", "request_id": "a", "error": "Unknown API Key"}, EntitlementError, "Unknown API Key"),
    (403, {"status": "NOT_AUTHORIZED", "request_id": "b",
           "message": "You are not entitled to this data. Please upgrade your plan at https://polygon.io/pricing"},
     EntitlementError, "not entitled"),
    (400, {"status": "ERROR", "request_id": "c", "error": "Could not parse the date"}, BadRequestError, "parse"),
    (200, {"status": "ERROR", "request_id": "d", "error": "internal mapping failure"}, BadRequestError, "mapping"),
])
def test_error_bodies_are_typed_and_not_retried(httpserver: HTTPServer, status: int, body: dict,
                                                error: type[Exception], text: str) -> None:
    s = script(httpserver, DAY_PATH, json_response(body, status))
    provider, _ = make(httpserver)
    with pytest.raises(error, match=text):
        provider.extract(query())
    assert s.count == 1


def test_rate_limit_body_waits_for_retry_after(httpserver: HTTPServer) -> None:
    limited = {"status": "ERROR", "request_id": "e", "error": "You've exceeded the maximum requests per minute, "
               "please wait or upgrade your subscription to continue. https://polygon.io/pricing"}
    s = script(httpserver, DAY_PATH, json_response(limited, 429, {"Retry-After": "12"}),
               json_response(aggs([A_0603])))
    provider, sleep = make(httpserver)
    assert len(provider.extract(query())) == 1
    assert s.count == 2
    assert 12.0 in sleep.waits


def test_rate_limit_that_never_ends_gives_up(httpserver: HTTPServer) -> None:
    limited = {"status": "ERROR", "request_id": "e", "error": "You've exceeded the maximum requests per minute"}
    s = script(httpserver, DAY_PATH, json_response(limited, 429))
    provider, _ = make(httpserver, http={"max_attempts": 3})
    with pytest.raises(RateLimitError, match=r"maximum requests.*gave up after 3 attempts"):
        provider.extract(query())
    assert s.count == 3


def test_5xx_storm_then_data(httpserver: HTTPServer) -> None:
    s = script(httpserver, DAY_PATH, raw_response("boom", 500), raw_response("<html>bad gateway</html>", 502,
               "text/html"), raw_response("", 503), json_response(aggs([A_0603])))
    provider, _ = make(httpserver)
    assert len(provider.extract(query())) == 1
    assert s.count == 4


def test_5xx_storm_fails_the_fetch(httpserver: HTTPServer) -> None:
    script(httpserver, DAY_PATH, raw_response("unavailable", 503))
    provider, _ = make(httpserver, http={"max_attempts": 3})
    with pytest.raises(ProviderUnavailableError, match=r"HTTP 503.*gave up after 3 attempts"):
        provider.extract(query())


def test_timeout_is_retried(httpserver: HTTPServer) -> None:
    script(httpserver, DAY_PATH, slow(0.5, json_response(aggs([A_0603]))), json_response(aggs([A_0603])))
    provider, _ = make(httpserver, http={"timeout": 0.2})
    assert len(provider.extract(query())) == 1
    assert provider.fetch_stats()["retries"] >= 1


def test_malformed_json_fails_without_retry(httpserver: HTTPServer) -> None:
    s = script(httpserver, DAY_PATH, raw_response('{"ticker":"AAPL","results":[{"v":1,'))
    provider, _ = make(httpserver)
    with pytest.raises(MalformedPayloadError, match="not valid JSON"):
        provider.extract(query())
    assert s.count == 1


def test_missing_key_names_the_variable(httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POLYGON_API_KEY")
    provider, _ = make(httpserver)
    with pytest.raises(ProviderError, match="POLYGON_API_KEY"):
        provider.extract(query())


def test_key_is_never_in_params_urls_errors_or_logs(httpserver: HTTPServer,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    next_url = httpserver.url_for(DAY_PATH) + "?cursor=abc"
    script(httpserver, DAY_PATH, raw_response("busy", 503), json_response(aggs([A_0603], next_url)),
           json_response({"status": "ERROR", "request_id": "z", "error": f"Unknown API Key {API_KEY}"}, 401))
    provider, _ = make(httpserver)
    with pytest.raises(EntitlementError) as err:
        provider.extract(query())
    assert API_KEY not in str(err.value)
    assert API_KEY not in caplog.text

    script(httpserver, "/v3/reference/splits", json_response({"results": [], "status": "OK"}))
    script(httpserver, "/v3/reference/dividends", json_response({"results": [], "status": "OK"}))
    payloads = provider.extract(query("corporate_actions"))
    stored = json.dumps([{**vars(p), "body": None} for p in payloads], default=str)
    assert API_KEY not in stored
    assert "apiKey" not in stored


# -- through Dagster ----------------------------------------------------------------------------------


def test_dagster_run_stores_polygon_bars_and_a_rerun_stores_nothing_twice(
        httpserver: HTTPServer, database_url: str, kafka_bootstrap: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    msft_path = "/v2/aggs/ticker/MSFT/range/1/day/2024-06-03/2024-06-05"
    msft = [agg(d, 415.0 + i, 420.0 + i, 410.0 + i, 416.0 + i, 1e6 * (i + 1), 416.5, 10_000)
            for i, d in enumerate(NY_MIDNIGHT)]
    pages = (aggs([A_0603, A_0604], httpserver.url_for(DAY_PATH) + "?cursor=p2"), aggs([A_0604, A_0605]))
    aapl = script(httpserver, DAY_PATH, *[json_response(p) for p in pages * 2])
    script(httpserver, msft_path, json_response(aggs(msft, ticker="MSFT")))
    for symbol in ("AAPL", "MSFT"):  # minute bars: none in this test
        script(httpserver, f"/v2/aggs/ticker/{symbol}/range/1/minute/2024-06-03/2024-06-05", json_response(aggs([])))
    for path in ("/v3/reference/splits", "/v3/reference/dividends"):
        script(httpserver, path, json_response({"results": [], "status": "OK", "request_id": "r"}))
    monkeypatch.setenv("MDP_POLYGON_BASE_URL", httpserver.url_for("/"))
    monkeypatch.setenv("MDP_FRAMES_DIR", str(tmp_path / "frames"))
    universe = servers.universe_file(tmp_path, "polygon", ["AAPL", "MSFT"], http=FAST)
    defs = build_definitions(settings_for(database_url, kafka_bootstrap, universe=universe))

    for _ in range(2):
        result = materialize_range(defs, date(2024, 6, 3), date(2024, 6, 5), providers=["polygon"],
                                   instance=dg.DagsterInstance.ephemeral())
        assert result.success

    assert aapl.count == 4
    with connect(database_url) as conn:
        stored = read_bars_1d(conn, start=date(2024, 6, 3), end=date(2024, 6, 5), provider="polygon")
        raw = conn.execute("select count(*) from raw.payloads where provider = 'polygon' and dataset = 'bars_1d'"
                           ).fetchone()
    assert raw == (3,)  # AAPL's two pages and MSFT's one, each stored once over two runs
    assert stored.select("symbol", "session_date", "close", "volume").sort("symbol", "session_date").rows() == [
        ("AAPL", date(2024, 6, 3), 194.03, 50080539.0), ("AAPL", date(2024, 6, 4), 194.35, 47471445.0),
        ("AAPL", date(2024, 6, 5), 195.87, 54156785.0), ("MSFT", date(2024, 6, 3), 416.0, 1e6),
        ("MSFT", date(2024, 6, 4), 417.0, 2e6), ("MSFT", date(2024, 6, 5), 418.0, 3e6),
    ]


def test_registry_builds_the_provider_from_the_universe_file(tmp_path: Path) -> None:
    on, off, settings = servers.registry_files(tmp_path, "polygon")

    provider = build_provider("polygon", load_universe(on), settings)
    assert provider.name == "polygon"
    assert provider.base_url == "http://127.0.0.1:9/x"  # type: ignore[attr-defined]
    with pytest.raises(ProviderError, match="disabled in the universe file"):
        build_provider("polygon", load_universe(off), settings)
