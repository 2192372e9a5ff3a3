"""The IEX Cloud adapter against a loopback IEX-compatible server (the hosted service is retired)."""

from __future__ import annotations

import re
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
from mdpipeline.providers import build_provider
from mdpipeline.providers.base import STANDARD_COLUMNS, ProviderError, Query
from mdpipeline.providers.errors import (
    BadRequestError,
    EntitlementError,
    MalformedPayloadError,
    ProviderUnavailableError,
    RateLimitError,
)
from mdpipeline.providers.iexcloud import IexCloudProvider
from mdpipeline.settings import DEFAULT_FILES_DIR, DEFAULT_UNIVERSE, Settings
from mdpipeline.storage.bars import read_bars_1d
from mdpipeline.storage.database import connect
from mdpipeline.universe import load_universe
from mdpipeline_tests import provider_servers as servers
from mdpipeline_tests.pipeline_helpers import settings_for
from mdpipeline_tests.provider_servers import (
    SleepRecorder,
    bars_1d_chain,
    json_response,
    provider_settings,
    provider_setup,
    raw_response,
    script,
    slow,
    truncated_response,
)

TOKEN = "sk_iex_0123456789abcdef"
PREFIX = "/stable"


def daily_row(day: str, o: float, h: float, lo: float, c: float, v: int, split: float = 1.0) -> dict:
    """A chartByDay row: plain fields split-adjusted (divided by `split`), u* unadjusted, f* fully adjusted."""
    return {"close": c / split, "high": h / split, "low": lo / split, "open": o / split, "symbol": "NVDA",
            "volume": v * split, "id": "HISTORICAL_PRICES", "key": "NVDA", "subkey": "", "date": day,
            "updated": 1718064000000, "changeOverTime": 0, "marketChangeOverTime": 0, "uOpen": o, "uClose": c,
            "uHigh": h, "uLow": lo, "uVolume": v, "fOpen": o / split, "fClose": c / split, "fHigh": h / split,
            "fLow": lo / split, "fVolume": v * split, "label": "Jun 7, 24", "change": 0, "changePercent": 0}


def minute(hhmm: str, label: str, iex: tuple | None, market: tuple | None) -> dict:
    """A chart row as IEX Cloud documented it: the IEX-exchange-only fields (`open` .. `numberOfTrades`)
    beside the consolidated ones (`marketOpen` .. `marketNumberOfTrades`); (open, high, low, close,
    average, volume, notional, trades) each, None for a minute without trades there."""
    def fields(prefix: str, values: tuple | None) -> dict:
        names = ("open", "high", "low", "close", "average", "volume", "notional", "numberOfTrades")
        if values is None:
            values = (None, None, None, None, None, 0, 0, 0)
        key = (lambda n: prefix + n[0].upper() + n[1:]) if prefix else (lambda n: n)
        return {key(n): v for n, v in zip(names, values, strict=True)}

    return {"date": "2024-06-03", "minute": hhmm, "label": label, **fields("", iex), **fields("market", market),
            "changeOverTime": 0, "marketChangeOverTime": 0}


MINUTES = [
    # 09:30: IEX traded 11,532 shares, about 1% of the consolidated 1,154,102.
    minute("09:30", "09:30 AM", (192.9, 193.4, 192.52, 193.3, 192.961, 11532, 2225227.1, 112),
           (192.9, 193.62, 192.52, 193.32, 193.01, 1154102, 222753227.0, 10542)),
    # 09:31: no trade on IEX, trades elsewhere: the consolidated fields carry the minute.
    minute("09:31", "09:31 AM", None, (193.33, 193.5, 193.1, 193.2, 193.28, 402311, 77758669.1, 4120)),
    # 15:59: consolidated fields null (not available): the IEX fields are used.
    {**minute("15:59", "3:59 PM", (194.0, 194.1, 193.98, 194.03, 194.046, 40122, 7785525.7, 388), None),
     **dict.fromkeys(("marketOpen", "marketHigh", "marketLow", "marketClose", "marketAverage", "marketVolume",
                      "marketNotional", "marketNumberOfTrades"))},
    # 12:00: no trade anywhere: kept with null prices, for validation to quarantine.
    minute("12:00", "12 PM", None, None),
]


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield from servers.isolated(monkeypatch, {"IEX_CLOUD_TOKEN": TOKEN})


Make = Callable[..., tuple[IexCloudProvider, SleepRecorder]]


@pytest.fixture
def make(httpserver: HTTPServer) -> Make:
    return partial(servers.make_provider, IexCloudProvider, httpserver, prefix=PREFIX)


def q(dataset: str, start: date, end: date) -> Query:
    return Query(dataset, start, end, ())


def test_daily_bars_use_unadjusted_fields(httpserver: HTTPServer, make: Make) -> None:
    d7 = script(httpserver, "/stable/stock/NVDA/chart/date/20240607", json_response([
        daily_row("2024-06-07", 1197.7, 1216.9171, 1180.22, 1208.88, 41238580, split=10)]),
        query={"chartByDay": "true"})
    d10 = script(httpserver, "/stable/stock/NVDA/chart/date/20240610", json_response([
        daily_row("2024-06-10", 120.37, 123.1, 117.01, 121.79, 314162700)]))
    provider, _ = make(("NVDA",))
    payloads = provider.extract(q("bars_1d", date(2024, 6, 7), date(2024, 6, 10)))  # a weekend in between

    assert [(p.request_key, p.session_date, p.last_session) for p in payloads] == [
        ("chart:NVDA:20240607:byday", date(2024, 6, 7), date(2024, 6, 7)),
        ("chart:NVDA:20240610:byday", date(2024, 6, 10), date(2024, 6, 10))]
    assert payloads[0].endpoint == "/stable/stock/NVDA/chart/date/20240607"
    assert payloads[0].params == {"token": "***", "chartByDay": "true"}
    assert d7.args()["token"] == TOKEN
    assert (d7.count, d10.count) == (1, 1)
    assert TOKEN not in repr(payloads)

    frame = provider.transform("bars_1d", payloads)
    assert frame.schema == pl.Schema(STANDARD_COLUMNS["bars_1d"])
    assert frame.select("symbol", "session_date", "open", "high", "low", "close", "volume").rows() == [
        ("NVDA", date(2024, 6, 7), 1197.7, 1216.9171, 1180.22, 1208.88, 41238580.0),
        ("NVDA", date(2024, 6, 10), 120.37, 123.1, 117.01, 121.79, 314162700.0),
    ]


def test_daily_bars_without_u_fields(httpserver: HTTPServer, make: Make) -> None:
    script(httpserver, "/stable/stock/AAPL/chart/date/20240603", json_response([
        {"date": "2024-06-03", "open": 192.9, "high": 194.99, "low": 192.52, "close": 194.03, "volume": 50080539}]))
    provider, _ = make()
    frame = provider.transform("bars_1d", provider.extract(q("bars_1d", date(2024, 6, 3), date(2024, 6, 3))))
    assert frame.select("symbol", "session_date", "close", "volume").rows() == [
        ("AAPL", date(2024, 6, 3), 194.03, 50080539.0)]


def test_minute_bars_use_the_consolidated_market_fields(httpserver: HTTPServer, make: Make) -> None:
    s = script(httpserver, "/stable/stock/AAPL/chart/date/20240603", json_response(MINUTES))
    provider, _ = make()
    payloads = provider.extract(q("bars_1m", date(2024, 6, 3), date(2024, 6, 3)))
    assert payloads[0].request_key == "chart:AAPL:20240603"
    assert "chartByDay" not in s.args()

    frame = provider.transform("bars_1m", payloads).sort("ts")
    assert frame.schema == pl.Schema(STANDARD_COLUMNS["bars_1m"])
    assert frame.drop("raw_payload_id").rows() == [
        ("AAPL", datetime(2024, 6, 3, 13, 30, tzinfo=UTC), 192.9, 193.62, 192.52, 193.32, 1154102.0, 193.01, 10542),
        ("AAPL", datetime(2024, 6, 3, 13, 31, tzinfo=UTC), 193.33, 193.5, 193.1, 193.2, 402311.0, 193.28, 4120),
        ("AAPL", datetime(2024, 6, 3, 16, 0, tzinfo=UTC), None, None, None, None, 0.0, None, 0),  # for quarantine
        ("AAPL", datetime(2024, 6, 3, 19, 59, tzinfo=UTC), 194.0, 194.1, 193.98, 194.03, 40122.0, 194.046, 388),
    ]


def test_minute_bars_of_a_server_without_market_fields(httpserver: HTTPServer, make: Make) -> None:
    iex_only = [{k: v for k, v in row.items() if not k.startswith("market")} for row in MINUTES]
    script(httpserver, "/stable/stock/AAPL/chart/date/20240603", json_response(iex_only))
    provider, _ = make()
    frame = provider.transform("bars_1m", provider.extract(q("bars_1m", date(2024, 6, 3), date(2024, 6, 3))))
    assert frame.sort("ts").drop("raw_payload_id").rows() == [
        ("AAPL", datetime(2024, 6, 3, 13, 30, tzinfo=UTC), 192.9, 193.4, 192.52, 193.3, 11532.0, 192.961, 112),
        ("AAPL", datetime(2024, 6, 3, 13, 31, tzinfo=UTC), None, None, None, None, 0.0, None, 0),
        ("AAPL", datetime(2024, 6, 3, 16, 0, tzinfo=UTC), None, None, None, None, 0.0, None, 0),
        ("AAPL", datetime(2024, 6, 3, 19, 59, tzinfo=UTC), 194.0, 194.1, 193.98, 194.03, 40122.0, 194.046, 388),
    ]


def test_minute_dates_in_compact_form(httpserver: HTTPServer, make: Make) -> None:
    rows = [{**MINUTES[0], "date": "20240102"}]  # older IEX answers; and January is EST (UTC-5)
    script(httpserver, "/stable/stock/AAPL/chart/date/20240102", json_response(rows))
    provider, _ = make()
    frame = provider.transform("bars_1m", provider.extract(q("bars_1m", date(2024, 1, 2), date(2024, 1, 2))))
    assert frame["ts"].to_list() == [datetime(2024, 1, 2, 14, 30, tzinfo=UTC)]


def test_splits_and_dividends(httpserver: HTTPServer, make: Make) -> None:
    splits = script(httpserver, re.compile(r"/stable/stock/NVDA/splits/\w+"), json_response([
        {"declaredDate": "2024-05-22", "description": "10-for-1 split", "exDate": "2024-06-10", "fromFactor": 1,
         "ratio": 0.1, "refid": 6876341, "symbol": "NVDA", "toFactor": 10, "id": "SPLITS", "key": "NVDA"},
        {"exDate": "2021-07-20", "ratio": 0.25, "symbol": "NVDA"}]))  # no factors: 1 / ratio
    script(httpserver, re.compile(r"/stable/stock/NVDA/dividends/\w+"), json_response([
        {"amount": 0.01, "currency": "USD", "declaredDate": "2024-05-22", "description": "Ordinary Shares",
         "exDate": "2024-06-11", "flag": "Cash", "frequency": "quarterly", "paymentDate": "2024-06-28",
         "recordDate": "2024-06-11", "refid": 2767113, "symbol": "NVDA"},
        {"amount": 0.05, "currency": "USD", "exDate": "2024-03-05", "flag": "Stock", "symbol": "NVDA"}]))
    provider, _ = make(("NVDA",))
    payloads = provider.extract(q("corporate_actions", date(2024, 6, 3), date(2024, 6, 14)))
    assert splits.requests[0].path == "/stable/stock/NVDA/splits/5y"  # the smallest range back to 2024-06
    assert [p.request_key for p in payloads] == ["splits:NVDA:5y@2024-06-14", "dividends:NVDA:5y@2024-06-14"]
    frame = provider.transform("corporate_actions", payloads)
    assert frame.schema == pl.Schema(STANDARD_COLUMNS["corporate_actions"])
    assert frame.drop("raw_payload_id").rows() == [
        ("NVDA", date(2024, 6, 10), "split", 10.0, None, None),
        ("NVDA", date(2021, 7, 20), "split", 4.0, None, None),
        ("NVDA", date(2024, 6, 11), "cash_dividend", None, 0.01, "USD"),
        ("NVDA", date(2024, 3, 5), "dividend:Stock", None, 0.05, "USD"),  # validation quarantines it
    ]


def test_holidays_are_not_requested_and_empty_days_are_empty(httpserver: HTTPServer, make: Make) -> None:
    s = script(httpserver, re.compile(r"/stable/stock/AAPL/chart/date/\d+"), json_response([]))
    provider, _ = make()
    payloads = provider.extract(q("bars_1m", date(2024, 6, 18), date(2024, 6, 20)))  # 19th: Juneteenth
    assert [p.session_date for p in payloads] == [date(2024, 6, 18), date(2024, 6, 20)]
    assert s.count == 2
    assert provider.transform("bars_1m", payloads).is_empty()


@pytest.mark.parametrize(("status", "body", "error", "match"), [
    (402, "Payment Required", EntitlementError, "HTTP 402: Payment Required"),
    (403, "The API key provided is not valid.", EntitlementError, "not valid"),
    (401, "Unauthorized", EntitlementError, "HTTP 401"),
    (404, "Unknown symbol", BadRequestError, "Unknown symbol"),
])
def test_error_answers_fail_typed_without_retry(httpserver: HTTPServer, make: Make, status: int, body: str,
                                                error: type[Exception], match: str) -> None:
    s = script(httpserver, "/stable/stock/AAPL/chart/date/20240603", raw_response(body, status, "text/plain"))
    provider, sleep = make()
    with pytest.raises(error, match=match) as info:
        provider.extract(q("bars_1d", date(2024, 6, 3), date(2024, 6, 3)))
    assert s.count == 1
    assert sleep.waits == []
    assert TOKEN not in str(info.value)


def test_429_retry_after_then_5xx_storm(httpserver: HTTPServer, make: Make) -> None:
    s = script(httpserver, "/stable/stock/AAPL/chart/date/20240603",
               raw_response("Too many requests", 429, "text/plain", {"Retry-After": "1"}),
               raw_response("", 500), raw_response("", 502), raw_response("", 503), json_response(MINUTES))
    provider, sleep = make(http={"max_attempts": 6})
    (p,) = provider.extract(q("bars_1m", date(2024, 6, 3), date(2024, 6, 3)))
    assert s.count == 5
    assert sleep.waits[0] == 1.0
    assert len(sleep.waits) == 4
    stats = provider.fetch_stats()
    assert (stats["attempts"], stats["retries"], stats["rate_limited"]) == (5, 4, 1)
    assert p.status == 200


def test_rate_limit_storm_gives_up(httpserver: HTTPServer, make: Make) -> None:
    script(httpserver, "/stable/stock/AAPL/chart/date/20240603",
           raw_response("Too many requests", 429, "text/plain", {"Retry-After": "1"}))
    provider, sleep = make(http={"max_attempts": 3})
    with pytest.raises(RateLimitError, match="gave up after 3 attempts"):
        provider.extract(q("bars_1m", date(2024, 6, 3), date(2024, 6, 3)))
    assert sleep.waits == [1.0, 1.0]


def test_timeout_is_an_outage(httpserver: HTTPServer, make: Make) -> None:
    script(httpserver, "/stable/stock/AAPL/chart/date/20240603", slow(0.5, json_response(MINUTES)))
    provider, _ = make(http={"timeout": 0.15, "max_attempts": 2})
    with pytest.raises(ProviderUnavailableError, match=r"timed out after 0\.15s"):
        provider.extract(q("bars_1m", date(2024, 6, 3), date(2024, 6, 3)))


def test_truncated_then_complete(httpserver: HTTPServer, make: Make) -> None:
    full = json_response(MINUTES).get_data()
    s = script(httpserver, "/stable/stock/AAPL/chart/date/20240603", truncated_response(full[:100], len(full)),
               raw_response(full))
    provider, _ = make()
    (p,) = provider.extract(q("bars_1m", date(2024, 6, 3), date(2024, 6, 3)))
    assert p.body == full
    assert s.count == 2


@pytest.mark.parametrize(("body", "match"), [
    (b'[{"date": "2024-06-03", "minute": "09:30", "open": 19', "not valid JSON"),
    (b'{"error": "unexpected"}', "expected a JSON list, got dict"),
])
def test_malformed_bodies(httpserver: HTTPServer, make: Make, body: bytes, match: str) -> None:
    s = script(httpserver, "/stable/stock/AAPL/chart/date/20240603", raw_response(body))
    provider, _ = make()
    with pytest.raises(MalformedPayloadError, match=match):
        provider.extract(q("bars_1m", date(2024, 6, 3), date(2024, 6, 3)))
    assert s.count == 1


def test_without_base_url_it_says_the_service_is_retired(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(database_url="", kafka_bootstrap_servers="", universe_path=DEFAULT_UNIVERSE,
                        files_dir=DEFAULT_FILES_DIR, base_urls={})
    provider = IexCloudProvider(provider_setup("iexcloud", ("AAPL",)), settings)
    with pytest.raises(ProviderError, match=r"retired on 2024-08-31.*MDP_IEXCLOUD_BASE_URL"):
        provider.extract(q("bars_1d", date(2024, 6, 3), date(2024, 6, 3)))
    assert provider.transform("bars_1d", []).is_empty()  # replay needs neither URL nor token


def test_missing_token_names_the_variable(make: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IEX_CLOUD_TOKEN")
    provider, _ = make()
    with pytest.raises(ProviderError, match="IEX_CLOUD_TOKEN"):
        provider.extract(q("bars_1d", date(2024, 6, 3), date(2024, 6, 3)))


def _universe(tmp_path: Path, enabled: bool) -> Path:
    fast = {"rate_per_second": None}
    return servers.universe_file(tmp_path, "iexcloud", ["AAPL"], only=True, enabled=enabled, http=fast)


def test_switched_off_in_the_universe_file(tmp_path: Path, httpserver: HTTPServer) -> None:
    settings = provider_settings(httpserver, "iexcloud", PREFIX)
    with pytest.raises(ProviderError, match="disabled in the universe file"):
        build_provider("iexcloud", load_universe(_universe(tmp_path, enabled=False)), settings)
    assert isinstance(build_provider("iexcloud", load_universe(_universe(tmp_path, enabled=True)), settings),
                      IexCloudProvider)


def test_dagster_materializes_daily_bars(httpserver: HTTPServer, database_url: str, kafka_bootstrap: str,
                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MDP_FRAMES_DIR", str(tmp_path / "frames"))
    monkeypatch.setenv("MDP_IEXCLOUD_BASE_URL", httpserver.url_for(PREFIX))
    for day, close in (("20240603", 194.03), ("20240604", 194.35), ("20240605", 195.87)):
        script(httpserver, f"/stable/stock/AAPL/chart/date/{day}", json_response([
            {"date": f"{day[:4]}-{day[4:6]}-{day[6:]}", "uOpen": 193.0, "uHigh": 196.9, "uLow": 192.52,
             "uClose": close, "uVolume": 50000000, "symbol": "AAPL"}]))
    script(httpserver, re.compile(r"/stable/stock/AAPL/(splits|dividends)/\w+"), json_response([]))
    defs = build_definitions(settings_for(database_url, kafka_bootstrap, universe=_universe(tmp_path, True)))
    result = materialize_range(defs, date(2024, 6, 3), date(2024, 6, 5), providers=["iexcloud"],
                               select=bars_1d_chain("iexcloud"), instance=dg.DagsterInstance.ephemeral())
    assert result.success
    with connect(database_url) as conn:
        bars = read_bars_1d(conn, start=date(2024, 6, 3), end=date(2024, 6, 5))
        payloads = conn.execute("select count(*) from raw.payloads where provider = 'iexcloud' "
                                "and params->>'token' = '***'").fetchone()
    assert bars.select("symbol", "session_date", "provider", "close").sort("session_date").rows() == [
        ("AAPL", date(2024, 6, 3), "iexcloud", 194.03),
        ("AAPL", date(2024, 6, 4), "iexcloud", 194.35),
        ("AAPL", date(2024, 6, 5), "iexcloud", 195.87),
    ]
    assert payloads == (3,)
