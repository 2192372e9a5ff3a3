"""The Alpha Vantage provider against a loopback server speaking its documented JSON."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from pytest_httpserver import HTTPServer

from mdpipeline.orchestration.assembly import build_definitions
from mdpipeline.orchestration.runner import materialize_range
from mdpipeline.providers import build_provider
from mdpipeline.providers.alphavantage import AlphaVantageProvider
from mdpipeline.providers.base import STANDARD_COLUMNS, ProviderError, Query
from mdpipeline.providers.errors import (
    BadRequestError,
    CircuitOpenError,
    EntitlementError,
    MalformedPayloadError,
    ProviderUnavailableError,
    RateLimitError,
)
from mdpipeline.sessions import session_dates
from mdpipeline.storage.bars import read_bars_1d
from mdpipeline.storage.database import connect
from mdpipeline.universe import ProviderSetup, load_universe
from mdpipeline_tests import provider_servers as servers
from mdpipeline_tests.pipeline_helpers import settings_for
from mdpipeline_tests.provider_servers import (
    SleepRecorder,
    bars_1d_chain,
    json_response,
    provider_settings,
    raw_response,
    script,
    slow,
    truncated_response,
)

KEY = "AVKEY-123456"


def daily_body(adjusted: bool = False) -> dict:
    """TIME_SERIES_DAILY as documented: newest first, every value a string."""
    rows = {
        "2024-06-06": ("195.6850", "196.5000", "194.1700", "194.4800", "41181753"),
        "2024-06-05": ("195.4000", "196.9000", "194.8700", "195.8700", "54156785"),
        "2024-06-04": ("194.6350", "195.3200", "193.0342", "194.3500", "47471445"),
        "2024-06-03": ("192.9000", "194.9900", "192.5200", "194.0300", "50080539"),
    }

    def bar(o: str, h: str, lo: str, c: str, v: str) -> dict:
        if adjusted:
            return {"1. open": o, "2. high": h, "3. low": lo, "4. close": c, "5. adjusted close": "1.0",
                    "6. volume": v, "7. dividend amount": "0.0000", "8. split coefficient": "1.0"}
        return {"1. open": o, "2. high": h, "3. low": lo, "4. close": c, "5. volume": v}

    return {
        "Meta Data": {"1. Information": "Daily Prices (open, high, low, close) and Volumes", "2. Symbol": "AAPL",
                      "3. Last Refreshed": "2024-06-06", "4. Output Size": "Full size",
                      "5. Time Zone": "US/Eastern"},
        "Time Series (Daily)": {d: bar(*v) for d, v in rows.items()},
    }


def intraday_body(month_rows: dict[str, tuple[str, ...]]) -> dict:
    return {
        "Meta Data": {"1. Information": "Intraday (1min) open, high, low, close prices and volume",
                      "2. Symbol": "AAPL", "3. Last Refreshed": max(month_rows), "4. Interval": "1min",
                      "5. Output Size": "Full size", "6. Time Zone": "US/Eastern"},
        "Time Series (1min)": {ts: {"1. open": o, "2. high": h, "3. low": lo, "4. close": c, "5. volume": v}
                               for ts, (o, h, lo, c, v) in month_rows.items()},
    }


RATE_NOTE = {"Note": "Thank you for using Alpha Vantage! Our standard API call frequency is 5 calls per minute "
                     "and 500 calls per day. Please visit https://www.alphavantage.co/premium/ if you would like "
                     "to target a higher API call frequency."}
DAILY_QUOTA = {"Information": f"We have detected your API key as {KEY} and our standard API rate limit is 25 "
                              "requests per day. Please subscribe to any of the premium plans at "
                              "https://www.alphavantage.co/premium/ to instantly remove all daily rate limits."}
PREMIUM = {"Information": "Thank you for using Alpha Vantage! This is a premium endpoint. You may subscribe to any "
                          "of the premium plans at https://www.alphavantage.co/premium/ to instantly unlock all "
                          "premium endpoints"}
BURST = {"Information": "Thank you for using Alpha Vantage! Please consider spreading out your free API requests "
                        "more sparingly (1 request per second). You may subscribe to any of the premium plans at "
                        "https://www.alphavantage.co/premium/ to lift the free key rate limit (25 requests per day), "
                        "raise the per-minute rate limit, and enable all premium features."}
# What a free key gets for outputsize=full on TIME_SERIES_DAILY (premium since 2024): it names
# TIME_SERIES_DAILY, so a "daily" test run before the "premium" test took it for the daily quota.
PREMIUM_FULL = {"Information": "Thank you for using Alpha Vantage! The outputsize=full parameter value is a premium "
                               "feature for the TIME_SERIES_DAILY endpoint. You may subscribe to any of the premium "
                               "plans at https://www.alphavantage.co/premium/ to instantly unlock all premium features"}
INVALID = {"Error Message": "Invalid API call. Please retry or visit the documentation "
                            "(https://www.alphavantage.co/documentation/) for TIME_SERIES_DAILY."}


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield from servers.isolated(monkeypatch, {"ALPHAVANTAGE_API_KEY": KEY})


Make = Callable[..., tuple[AlphaVantageProvider, SleepRecorder]]


@pytest.fixture
def make(httpserver: HTTPServer) -> Make:
    return partial(servers.make_provider, AlphaVantageProvider, httpserver)


def q(dataset: str, start: date, end: date) -> Query:
    return Query(dataset, start, end, ())


def test_daily_bars_exact_rows(httpserver: HTTPServer, make: Make) -> None:
    s = script(httpserver, "/query", json_response(daily_body()), query={"function": "TIME_SERIES_DAILY"})
    provider, _ = make()
    payloads = provider.extract(q("bars_1d", date(2024, 6, 3), date(2024, 6, 5)))

    assert len(payloads) == 1
    p = payloads[0]
    assert (p.session_date, p.last_session) == (date(2024, 6, 3), date(2024, 6, 5))
    assert p.request_key == "TIME_SERIES_DAILY:AAPL:full@2024-06-05"
    assert p.endpoint == "/query"
    assert p.params == {"apikey": "***", "datatype": "json", "function": "TIME_SERIES_DAILY", "symbol": "AAPL",
                        "outputsize": "full"}
    assert KEY not in repr(p)
    assert s.args()["apikey"] == KEY
    assert p.body == json_response(daily_body()).get_data()  # untouched
    assert p.status == 200

    frame = provider.transform("bars_1d", [p]).sort("session_date")
    assert frame.schema == pl.Schema(STANDARD_COLUMNS["bars_1d"])
    assert frame.select("symbol", "session_date", "open", "high", "low", "close", "volume").rows() == [
        ("AAPL", date(2024, 6, 3), 192.90, 194.99, 192.52, 194.03, 50080539.0),
        ("AAPL", date(2024, 6, 4), 194.635, 195.32, 193.0342, 194.35, 47471445.0),
        ("AAPL", date(2024, 6, 5), 195.40, 196.90, 194.87, 195.87, 54156785.0),
        ("AAPL", date(2024, 6, 6), 195.685, 196.50, 194.17, 194.48, 41181753.0),  # outside: the asset filters
    ]
    assert frame["vwap"].null_count() == frame.height
    assert frame["trades"].null_count() == frame.height


def test_daily_body_is_stored_untouched(httpserver: HTTPServer, make: Make) -> None:
    body = b'{"Meta Data": {}, "Time Series (Daily)": {"2024-06-03": {"1. open": "1.5"}}}  '
    script(httpserver, "/query", raw_response(body))
    provider, _ = make()
    (p,) = provider.extract(q("bars_1d", date(2024, 6, 3), date(2024, 6, 3)))
    assert p.body == body
    row = provider.transform("bars_1d", [p]).row(0, named=True)
    assert row["open"] == 1.5
    assert row["close"] is None  # missing values -> nulls, for validation to quarantine


def test_daily_adjusted_keeps_raw_prices(httpserver: HTTPServer, make: Make) -> None:
    s = script(httpserver, "/query", json_response(daily_body(adjusted=True)),
               query={"function": "TIME_SERIES_DAILY_ADJUSTED"})
    provider, _ = make(daily_function="TIME_SERIES_DAILY_ADJUSTED")
    (p,) = provider.extract(q("bars_1d", date(2024, 6, 3), date(2024, 6, 3)))
    row = provider.transform("bars_1d", [p]).filter(pl.col("session_date") == date(2024, 6, 3)).row(0, named=True)
    assert (row["close"], row["volume"]) == (194.03, 50080539.0)  # not the "5. adjusted close"
    assert s.count == 1


def test_compact_output_for_recent_ranges(httpserver: HTTPServer, make: Make) -> None:
    s = script(httpserver, "/query", json_response(daily_body()))
    provider, _ = make()
    today = datetime.now(UTC).date()
    latest = session_dates(today - timedelta(days=10), today)[-1]
    provider.extract(q("bars_1d", latest, latest))
    assert s.args()["outputsize"] == "compact"  # the latest 100 sessions cover it


def test_outputsize_is_compact_exactly_when_the_latest_100_sessions_cover_the_range(
        httpserver: HTTPServer, make: Make) -> None:
    s = script(httpserver, "/query", json_response(daily_body()))
    provider, _ = make()
    today = datetime.now(UTC).date()
    recent = session_dates(today - timedelta(days=200), today)
    provider.extract(q("bars_1d", recent[-100], recent[-1]))
    provider.extract(q("bars_1d", recent[-101], recent[-101]))
    assert [s.args(i)["outputsize"] for i in range(2)] == ["compact", "full"]


def test_premium_outputsize_is_a_final_entitlement_error_with_a_hint(httpserver: HTTPServer, make: Make) -> None:
    s = script(httpserver, "/query", json_response(PREMIUM_FULL))
    provider, sleep = make()
    with pytest.raises(EntitlementError) as info:
        provider.extract(q("bars_1d", date(2024, 6, 3), date(2024, 6, 5)))  # long ago: outputsize=full
    assert s.args()["outputsize"] == "full"
    assert s.count == 1  # final: not retried, and not taken for the daily quota
    assert sleep.waits == []
    assert info.value.hint is not None
    assert "outputsize=full is premium" in info.value.hint
    assert "outputsize=compact" in info.value.hint
    assert "https://www.alphavantage.co/premium/" in str(info.value)
    assert provider.fetch_stats()["rate_limited"] == 0


def test_intraday_month_requests_and_utc_bar_starts(httpserver: HTTPServer, make: Make) -> None:
    feb = script(httpserver, "/query", json_response(intraday_body({
        "2024-02-29 09:31:00": ("180.8100", "180.9000", "180.6000", "180.7000", "310245"),
        "2024-02-29 09:30:00": ("181.2700", "181.3000", "180.7500", "180.8000", "1451231"),
    })), query={"function": "TIME_SERIES_INTRADAY", "month": "2024-02"})
    mar = script(httpserver, "/query", json_response(intraday_body({
        "2024-03-11 09:30:00": ("172.9400", "173.1000", "172.5000", "172.6100", "1202345"),  # EDT
        "2024-03-08 15:59:00": ("170.7100", "170.8000", "170.6500", "170.7300", "2004515"),  # EST
    })), query={"function": "TIME_SERIES_INTRADAY", "month": "2024-03"})
    provider, _ = make()
    payloads = provider.extract(q("bars_1m", date(2024, 2, 29), date(2024, 3, 11)))

    assert [(p.session_date, p.last_session) for p in payloads] == [
        (date(2024, 2, 29), date(2024, 2, 29)), (date(2024, 3, 1), date(2024, 3, 11))]
    assert [p.request_key for p in payloads] == ["TIME_SERIES_INTRADAY:AAPL:1min:2024-02:full@2024-02-29",
                                                 "TIME_SERIES_INTRADAY:AAPL:1min:2024-03:full@2024-03-11"]
    for sc in (feb, mar):
        args = sc.args()
        assert (args["interval"], args["outputsize"], args["adjusted"], args["extended_hours"]) == (
            "1min", "full", "false", "false")

    frame = provider.transform("bars_1m", payloads).sort("ts")
    assert frame.schema == pl.Schema(STANDARD_COLUMNS["bars_1m"])
    utc = [datetime(2024, 2, 29, 14, 30, tzinfo=UTC), datetime(2024, 2, 29, 14, 31, tzinfo=UTC),
           datetime(2024, 3, 8, 20, 59, tzinfo=UTC), datetime(2024, 3, 11, 13, 30, tzinfo=UTC)]
    assert frame["ts"].to_list() == utc
    assert frame.row(0, named=True) | {"raw_payload_id": None} == {
        "symbol": "AAPL", "ts": utc[0], "open": 181.27, "high": 181.3, "low": 180.75, "close": 180.8,
        "volume": 1451231.0, "vwap": None, "trades": None, "raw_payload_id": None}


def test_splits_and_dividends(httpserver: HTTPServer, make: Make) -> None:
    script(httpserver, "/query", json_response({"symbol": "NVDA", "data": [
        {"effective_date": "2024-06-10", "split_factor": "10.0000"},
        {"effective_date": "2021-07-20", "split_factor": "4.0000"}]}), query={"function": "SPLITS"})
    script(httpserver, "/query", json_response({"symbol": "NVDA", "data": [
        {"ex_dividend_date": "2024-06-11", "declaration_date": "2024-05-22", "record_date": "2024-06-11",
         "payment_date": "2024-06-28", "amount": "0.01"},
        {"ex_dividend_date": "2024-03-05", "declaration_date": "2024-02-21", "record_date": "2024-03-06",
         "payment_date": "2024-03-27", "amount": "None"}]}), query={"function": "DIVIDENDS"})
    provider, _ = make(("NVDA",), currency="USD")
    payloads = provider.extract(q("corporate_actions", date(2024, 6, 3), date(2024, 6, 14)))
    assert [p.request_key for p in payloads] == ["SPLITS:NVDA@2024-06-14", "DIVIDENDS:NVDA@2024-06-14"]
    frame = provider.transform("corporate_actions", payloads)
    assert frame.schema == pl.Schema(STANDARD_COLUMNS["corporate_actions"])
    assert frame.drop("raw_payload_id").rows() == [
        ("NVDA", date(2024, 6, 10), "split", 10.0, None, None),
        ("NVDA", date(2021, 7, 20), "split", 4.0, None, None),
        ("NVDA", date(2024, 6, 11), "cash_dividend", None, 0.01, "USD"),
        ("NVDA", date(2024, 3, 5), "cash_dividend", None, None, "USD"),  # "None": left for validation
    ]


def test_no_sessions_no_requests(httpserver: HTTPServer, make: Make) -> None:
    s = script(httpserver, "/query", json_response(daily_body()))
    provider, _ = make()
    assert provider.extract(q("bars_1d", date(2024, 6, 8), date(2024, 6, 9))) == []  # weekend
    assert provider.extract(q("bars_1m", date(2024, 6, 19), date(2024, 6, 19))) == []  # Juneteenth
    assert s.count == 0
    assert provider.transform("bars_1m", []).is_empty()


@pytest.mark.parametrize(("body", "error", "match"), [
    (INVALID, BadRequestError, "Invalid API call"),
    (PREMIUM, EntitlementError, "premium endpoint"),
    (PREMIUM_FULL, EntitlementError, "outputsize=full parameter value is a premium feature"),
    (DAILY_QUOTA, RateLimitError, "25 requests per day"),
    ({"Error Message": "the parameter apikey is invalid or missing."}, EntitlementError, "apikey"),
])
def test_error_bodies_fail_typed_without_retry(httpserver: HTTPServer, make: Make, body: dict,
                                               error: type[Exception], match: str) -> None:
    s = script(httpserver, "/query", json_response(body))
    provider, sleep = make()
    with pytest.raises(error, match=match) as info:
        provider.extract(q("bars_1d", date(2024, 6, 3), date(2024, 6, 5)))
    assert s.count == 1
    assert sleep.waits == []
    assert KEY not in str(info.value)


BURST_2 = {"Information": "Thank you for using Alpha Vantage! Please consider spreading out your free API requests "
                          "more sparingly (1 request per second). You may subscribe to any of the premium plans at "
                          "https://www.alphavantage.co/premium/ to lift the free key rate limit (25 requests per "
                          "day), raise the per-second burst limit, and instantly unlock all premium endpoints."}


@pytest.mark.parametrize(("body", "wait"), [(RATE_NOTE, 60.0), (BURST, 1.0), (BURST_2, 1.0)])
def test_rate_limit_bodies_wait_and_retry(httpserver: HTTPServer, make: Make, body: dict, wait: float) -> None:
    s = script(httpserver, "/query", json_response(body), json_response(daily_body()))
    provider, sleep = make()
    (p,) = provider.extract(q("bars_1d", date(2024, 6, 3), date(2024, 6, 5)))
    assert sleep.waits == [wait]
    assert s.count == 2
    assert b"Time Series (Daily)" in p.body  # only the data response becomes a payload
    assert provider.fetch_stats()["rate_limited"] == 1


def test_http_429_retry_after(httpserver: HTTPServer, make: Make) -> None:
    s = script(httpserver, "/query", raw_response("Too Many Requests", 429, headers={"Retry-After": "3"}),
               json_response(daily_body()))
    provider, sleep = make()
    provider.extract(q("bars_1d", date(2024, 6, 3), date(2024, 6, 5)))
    assert sleep.waits == [3.0]
    assert s.count == 2


def test_5xx_storm_is_retried(httpserver: HTTPServer, make: Make) -> None:
    s = script(httpserver, "/query", raw_response("", 500), raw_response("", 502), raw_response("", 503),
               json_response(daily_body()))
    provider, sleep = make()
    (p,) = provider.extract(q("bars_1d", date(2024, 6, 3), date(2024, 6, 5)))
    assert s.count == 4
    assert len(sleep.waits) == 3
    assert provider.fetch_stats() | {"backoff_seconds": 0} == {
        "attempts": 4, "retries": 3, "throttled_seconds": 0.0, "backoff_seconds": 0, "rate_limited": 0,
        "breaker_opened": 0, "breaker_state": "closed"}
    assert p.status == 200


def test_dead_source_opens_the_breaker(httpserver: HTTPServer, make: Make) -> None:
    s = script(httpserver, "/query", raw_response("", 503))
    provider, _ = make(("AAPL", "MSFT"), http={"breaker_fail_max": 3, "max_attempts": 5})
    with pytest.raises(CircuitOpenError, match="circuit breaker open after 3 consecutive failures"):
        provider.extract(q("bars_1d", date(2024, 6, 3), date(2024, 6, 5)))
    assert s.count == 3  # the 4th attempt and MSFT were never sent
    assert provider.fetch_stats()["breaker_state"] == "open"


def test_timeout_then_success(httpserver: HTTPServer, make: Make) -> None:
    s = script(httpserver, "/query", slow(0.6, json_response(daily_body())), json_response(daily_body()))
    provider, _ = make(http={"timeout": 0.2})
    (p,) = provider.extract(q("bars_1d", date(2024, 6, 3), date(2024, 6, 5)))
    assert p.status == 200
    assert s.count >= 2  # the single-threaded server may still be sleeping when the retry connects
    assert provider.fetch_stats()["retries"] == s.count - 1


def test_timeouts_exhaust_attempts(httpserver: HTTPServer, make: Make) -> None:
    script(httpserver, "/query", slow(0.5, json_response(daily_body())))
    provider, _ = make(http={"timeout": 0.15, "max_attempts": 2})
    with pytest.raises(ProviderUnavailableError, match="timed out"):
        provider.extract(q("bars_1d", date(2024, 6, 3), date(2024, 6, 5)))


def test_truncated_body_is_refetched(httpserver: HTTPServer, make: Make) -> None:
    full = json_response(daily_body()).get_data()
    s = script(httpserver, "/query", truncated_response(full[: len(full) // 2], len(full)), raw_response(full))
    provider, _ = make()
    (p,) = provider.extract(q("bars_1d", date(2024, 6, 3), date(2024, 6, 5)))
    assert p.body == full
    assert s.count == 2


@pytest.mark.parametrize(("body", "match"), [
    (b'{"Meta Data": {"2. Symbol": "AAPL"}, "Time Series (Daily)": {"2024-06-03": {"1. op', "not valid JSON"),
    (b'{"Meta Data": {"2. Symbol": "AAPL"}}', "no 'Time Series \\(Daily\\)'"),
    (b"{}", "got: empty"),
    (b"[]", "got: list"),
])
def test_malformed_bodies(httpserver: HTTPServer, make: Make, body: bytes, match: str) -> None:
    s = script(httpserver, "/query", raw_response(body))
    provider, _ = make()
    with pytest.raises(MalformedPayloadError, match=match):
        provider.extract(q("bars_1d", date(2024, 6, 3), date(2024, 6, 5)))
    assert s.count == 1


def test_default_policy_is_the_free_tier(httpserver: HTTPServer) -> None:
    script(httpserver, "/query", json_response(daily_body()))
    sleep = SleepRecorder()
    setup = ProviderSetup(name="alphavantage", enabled=True, symbols=("AAPL", "MSFT", "NVDA"))
    provider = AlphaVantageProvider(setup, provider_settings(httpserver, "alphavantage"), sleep=sleep)
    assert (provider.policy.rate_per_second, provider.policy.burst, provider.policy.daily_limit) == (5 / 60, 1, 25)
    provider.extract(q("bars_1d", date(2024, 6, 3), date(2024, 6, 5)))
    # 5 per minute: the 2nd and 3rd requests wait for their 12-second slots
    assert sleep.waits == [pytest.approx(12, abs=0.5), pytest.approx(24, abs=0.5)]


def test_missing_key_names_the_variable(httpserver: HTTPServer, make: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALPHAVANTAGE_API_KEY")
    provider, _ = make()
    with pytest.raises(ProviderError, match="ALPHAVANTAGE_API_KEY"):
        provider.extract(q("bars_1d", date(2024, 6, 3), date(2024, 6, 5)))
    # replaying stored payloads needs no key
    assert provider.transform("bars_1d", []).is_empty()


def test_registry_builds_it(tmp_path: Path, httpserver: HTTPServer) -> None:
    universe = load_universe(servers.universe_file(tmp_path, "alphavantage", ["AAPL"], only=True))
    assert isinstance(build_provider("alphavantage", universe, provider_settings(httpserver, "alphavantage")),
                      AlphaVantageProvider)


def test_dagster_materializes_daily_bars(httpserver: HTTPServer, database_url: str, kafka_bootstrap: str,
                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MDP_FRAMES_DIR", str(tmp_path / "frames"))
    monkeypatch.setenv("MDP_ALPHAVANTAGE_BASE_URL", httpserver.url_for("/").rstrip("/"))
    script(httpserver, "/query", json_response(daily_body()), query={"function": "TIME_SERIES_DAILY"})
    script(httpserver, "/query", json_response({"symbol": "AAPL", "data": []}), query={"function": "SPLITS"})
    script(httpserver, "/query", json_response({"symbol": "AAPL", "data": []}), query={"function": "DIVIDENDS"})
    universe = servers.universe_file(tmp_path, "alphavantage", ["AAPL"], only=True, http={"rate_per_second": None})
    defs = build_definitions(settings_for(database_url, kafka_bootstrap, universe=universe))
    result = materialize_range(defs, date(2024, 6, 3), date(2024, 6, 5), providers=["alphavantage"],
                               select=bars_1d_chain("alphavantage"), instance=dg.DagsterInstance.ephemeral())
    assert result.success
    with connect(database_url) as conn:
        bars = read_bars_1d(conn, start=date(2024, 6, 3), end=date(2024, 6, 7))
        stored = conn.execute("select count(*), bool_and(params->>'apikey' = '***') from raw.payloads "
                              "where provider = 'alphavantage'").fetchone()
    assert bars.select("symbol", "session_date", "provider", "close").sort("session_date").rows() == [
        ("AAPL", date(2024, 6, 3), "alphavantage", 194.03),
        ("AAPL", date(2024, 6, 4), "alphavantage", 194.35),
        ("AAPL", date(2024, 6, 5), "alphavantage", 195.87),  # 06-06 was in the payload, not in the range
    ]
    assert stored == (1, True)  # one daily series for the range, key redacted

    # A re-run fetches the same bytes again: nothing is stored twice, the md rows are replaced.
    again = materialize_range(defs, date(2024, 6, 3), date(2024, 6, 5), providers=["alphavantage"],
                              select=bars_1d_chain("alphavantage"), instance=dg.DagsterInstance.ephemeral())
    assert again.success
    with connect(database_url) as conn:
        assert conn.execute("select count(*) from raw.payloads where provider = 'alphavantage'").fetchone() == (1,)
        assert read_bars_1d(conn, start=date(2024, 6, 3), end=date(2024, 6, 5)).height == 3
