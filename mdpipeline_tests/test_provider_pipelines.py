"""Each network provider end to end through Dagster, then `mdpipeline replay` with the provider gone.

For every provider a loopback server (pytest-httpserver) answers in the provider's documented formats for
one story: NVDA around its 10-for-1 split (ex-date 2024-06-10) and the 0.01 USD dividend of 2024-06-11,
the sessions 2024-06-07 .. 2024-06-11, two regular-session minute bars on 2024-06-10 (and, where the
provider sends extended hours, a pre- and a post-market bar that must be dropped). One real Dagster run
materializes everything of the provider (raw -> validated -> normalized -> md / ref, adjustments,
publication); then the server is stopped, the credentials are removed, and the `mdpipeline replay`
command, run as its own process, must re-create the same md rows from `raw` alone.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import dagster as dg
import polars as pl
import psycopg
import pytest
import yaml
from pytest_httpserver import HTTPServer

from mdpipeline.orchestration.assembly import build_definitions
from mdpipeline.orchestration.runner import materialize_range
from mdpipeline.providers.catalog import datasets_of
from mdpipeline.providers.http import reset_shared_state
from mdpipeline.settings import DEFAULT_FILES_DIR, DEFAULT_UNIVERSE, Settings
from mdpipeline.storage.bars import read_bars_1d, read_bars_1m
from mdpipeline.storage.database import connect
from mdpipeline_tests.provider_servers import FAST_HTTP, closed_port_url, json_response, script
from mdpipeline_tests.test_provider_alpaca import bar as alpaca_bar
from mdpipeline_tests.test_provider_alphavantage import intraday_body
from mdpipeline_tests.test_provider_finnhub import NVDA_SPLITS, utc
from mdpipeline_tests.test_provider_ibkr import history, ms
from mdpipeline_tests.test_provider_iexcloud import daily_row
from mdpipeline_tests.test_provider_polygon import aggs

CLI = str(Path(sys.executable).parent / "mdpipeline")
START, END = date(2024, 6, 7), date(2024, 6, 11)  # Fri, Mon (split ex-date), Tue (dividend ex-date)
SYMBOL, INSTRUMENT_ID = "NVDA", 3
NEW_YORK = ZoneInfo("America/New_York")
CREDENTIALS = ("ALPHAVANTAGE_API_KEY", "FINNHUB_API_KEY", "IEX_CLOUD_TOKEN", "ALPACA_API_KEY_ID",
               "ALPACA_API_SECRET_KEY", "POLYGON_API_KEY")

# As traded (the split divides the price by 10 from 2024-06-10 on): open, high, low, close, volume.
DAILY = {
    date(2024, 6, 7): (1197.7, 1216.9171, 1180.22, 1208.88, 41238580.0),
    date(2024, 6, 10): (120.37, 123.1, 117.01, 121.79, 314162700.0),
    date(2024, 6, 11): (121.77, 122.87, 118.74, 120.91, 222551200.0),
}
OUTSIDE = (date(2024, 6, 12), (123.06, 124.0, 120.27, 125.2, 314560686.0))  # in a payload, not in the run
OPEN_UTC, LAST_UTC = datetime(2024, 6, 10, 13, 30, tzinfo=UTC), datetime(2024, 6, 10, 19, 59, tzinfo=UTC)
MINUTES = {  # bar start (UTC) -> open, high, low, close, volume; 09:30 and 15:59 New York (EDT)
    OPEN_UTC: (120.37, 120.9, 119.8, 120.5, 4512345.0),
    LAST_UTC: (121.7, 121.85, 121.6, 121.79, 2204518.0),
}
EXTENDED = {  # sent only by providers whose minute bars include extended hours; transform drops them
    datetime(2024, 6, 10, 12, 0, tzinfo=UTC): (120.1, 120.3, 120.0, 120.2, 15000.0),  # 08:00 pre-market
    datetime(2024, 6, 10, 20, 0, tzinfo=UTC): (121.79, 121.9, 121.7, 121.8, 52000.0),  # 16:00 post-market
}
SPLIT_RATIO, DIVIDEND = 10.0, 0.01
EXPECTED_ACTIONS = [(SYMBOL, date(2024, 6, 10), "split", SPLIT_RATIO, None, None),
                    (SYMBOL, date(2024, 6, 11), "cash_dividend", None, DIVIDEND, "USD")]
PRIOR_CLOSE = DAILY[date(2024, 6, 10)][3]  # the session before the dividend's ex-date
EXPECTED_FACTORS = [  # instrument, ex_date, action, ratio, amount, prior_close, price_factor, volume_factor
    (INSTRUMENT_ID, date(2024, 6, 10), "split", SPLIT_RATIO, None, DAILY[date(2024, 6, 7)][3], 0.1, 10.0),
    (INSTRUMENT_ID, date(2024, 6, 11), "cash_dividend", None, DIVIDEND, PRIOR_CLOSE, 1 - DIVIDEND / PRIOR_CLOSE, 1.0),
]


def ny_midnight_ms(day: date) -> int:
    """Epoch milliseconds of midnight New York time (how Polygon stamps daily aggregates)."""
    return int(datetime(day.year, day.month, day.day, tzinfo=NEW_YORK).timestamp() * 1000)


def price(value: float) -> str:
    """A price as Alpha Vantage writes it."""
    return f"{value:.4f}"


# -- what each provider's server answers ----------------------------------------------------------


def serve_alphavantage(server: HTTPServer) -> None:
    daily = {day.isoformat(): {"1. open": price(o), "2. high": price(h), "3. low": price(lo), "4. close": price(c),
                               "5. volume": str(int(v))}
             for day, (o, h, lo, c, v) in sorted([*DAILY.items(), OUTSIDE], reverse=True)}
    script(server, "/query", json_response({
        "Meta Data": {"1. Information": "Daily Prices (open, high, low, close) and Volumes", "2. Symbol": SYMBOL,
                      "3. Last Refreshed": OUTSIDE[0].isoformat(), "4. Output Size": "Full size",
                      "5. Time Zone": "US/Eastern"},
        "Time Series (Daily)": daily}), query={"function": "TIME_SERIES_DAILY", "symbol": SYMBOL})
    intraday = intraday_body({ts.astimezone(NEW_YORK).strftime("%Y-%m-%d %H:%M:%S"): (*map(price, bar[:4]),
                                                                                      str(int(bar[4])))
                              for ts, bar in sorted(MINUTES.items(), reverse=True)})
    intraday["Meta Data"]["2. Symbol"] = SYMBOL
    script(server, "/query", json_response(intraday),
           query={"function": "TIME_SERIES_INTRADAY", "symbol": SYMBOL, "month": "2024-06"})
    script(server, "/query", json_response({"symbol": SYMBOL, "data": [
        {"effective_date": "2024-06-10", "split_factor": "10.0000"}]}), query={"function": "SPLITS"})
    script(server, "/query", json_response({"symbol": SYMBOL, "data": [
        {"ex_dividend_date": "2024-06-11", "declaration_date": "2024-05-22", "record_date": "2024-06-11",
         "payment_date": "2024-06-28", "amount": "0.01"}]}), query={"function": "DIVIDENDS"})


def serve_finnhub(server: HTTPServer) -> None:
    # Daily candles come split-adjusted as of the fetch: 2024-06-07 divided by 10 (volume times 10).
    adjusted = {day: (o / 10, h / 10, lo / 10, c / 10, v * 10) if day < date(2024, 6, 10) else (o, h, lo, c, v)
                for day, (o, h, lo, c, v) in DAILY.items()}
    script(server, "/api/v1/stock/candle", json_response(candles({utc(d.year, d.month, d.day): b
                                                                  for d, b in adjusted.items()})),
           query={"resolution": "D", "symbol": SYMBOL})
    script(server, "/api/v1/stock/candle", json_response(candles({int(ts.timestamp()): b
                                                                  for ts, b in {**MINUTES, **EXTENDED}.items()})),
           query={"resolution": "1", "symbol": SYMBOL, "from": str(utc(2024, 6, 7))})
    script(server, "/api/v1/stock/split", json_response(NVDA_SPLITS[:1]), query={"symbol": SYMBOL})
    script(server, "/api/v1/stock/dividend", json_response([
        {"symbol": SYMBOL, "date": "2024-06-11", "amount": DIVIDEND, "adjustedAmount": DIVIDEND,
         "payDate": "2024-06-28", "recordDate": "2024-06-11", "declarationDate": "2024-05-22", "currency": "USD"}]),
        query={"symbol": SYMBOL})


def candles(bars: dict[int, tuple[float, ...]]) -> dict[str, Any]:
    """A Finnhub candle answer from {unix seconds: (o, h, l, c, v)}."""
    times = sorted(bars)
    return {"s": "ok", "t": times, **{k: [bars[t][i] for t in times] for i, k in enumerate("ohlcv")}}


def serve_iexcloud(server: HTTPServer) -> None:
    for day, (o, h, lo, c, v) in DAILY.items():  # registered first: they also carry chartByDay=true
        split = SPLIT_RATIO if day < date(2024, 6, 10) else 1.0
        script(server, f"/stable/stock/{SYMBOL}/chart/date/{day:%Y%m%d}",
               json_response([daily_row(day.isoformat(), o, h, lo, c, int(v), split=split)]),
               query={"chartByDay": "true"})
    for day in DAILY:
        # The IEX-exchange fields carry about 1% of the volume; the consolidated market* fields are the bar.
        rows = [{"date": day.isoformat(), "minute": ts.astimezone(NEW_YORK).strftime("%H:%M"),
                 "label": ts.astimezone(NEW_YORK).strftime("%I:%M %p"), "open": o, "high": h, "low": lo, "close": c,
                 "average": round((h + lo + c) / 3, 4), "volume": int(v) // 100, "notional": round(v * c / 100, 2),
                 "numberOfTrades": 1 + i, "marketOpen": o, "marketHigh": h, "marketLow": lo, "marketClose": c,
                 "marketAverage": round((h + lo + c) / 3, 4), "marketVolume": int(v),
                 "marketNotional": round(v * c, 2), "marketNumberOfTrades": 100 + i,
                 "changeOverTime": 0, "marketChangeOverTime": 0}
                for i, (ts, (o, h, lo, c, v)) in enumerate(sorted(MINUTES.items())) if ts.date() == day]
        script(server, f"/stable/stock/{SYMBOL}/chart/date/{day:%Y%m%d}", json_response(rows))
    script(server, re.compile(rf"/stable/stock/{SYMBOL}/splits/\w+"), json_response([
        {"declaredDate": "2024-05-22", "description": "10-for-1 split", "exDate": "2024-06-10", "fromFactor": 1,
         "ratio": 0.1, "refid": 6876341, "symbol": SYMBOL, "toFactor": 10, "id": "SPLITS", "key": SYMBOL}]))
    script(server, re.compile(rf"/stable/stock/{SYMBOL}/dividends/\w+"), json_response([
        {"amount": DIVIDEND, "currency": "USD", "declaredDate": "2024-05-22", "description": "Ordinary Shares",
         "exDate": "2024-06-11", "flag": "Cash", "frequency": "quarterly", "paymentDate": "2024-06-28",
         "recordDate": "2024-06-11", "refid": 2767113, "symbol": SYMBOL}]))


def serve_ibkr(server: HTTPServer) -> None:
    script(server, "/v1/api/iserver/secdef/search", json_response([
        {"conid": "4815747", "companyHeader": "NVIDIA CORP - NASDAQ", "companyName": "NVIDIA CORP",
         "symbol": SYMBOL, "description": "NASDAQ", "restricted": None, "sections": [{"secType": "STK"}]}]),
        query={"symbol": SYMBOL, "secType": "STK"})

    def lots(bars: dict[datetime, tuple[float, ...]]) -> list[dict[str, float]]:  # volumes in lots of 100
        return [{"o": o, "c": c, "h": h, "l": lo, "v": v / 100, "t": ms(ts.isoformat())}
                for ts, (o, h, lo, c, v) in sorted(bars.items())]

    history_path = "/v1/api/iserver/marketdata/history"
    daily = {datetime(d.year, d.month, d.day, 13, 30, tzinfo=UTC): b for d, b in DAILY.items()}
    script(server, history_path, json_response(history(lots(daily), symbol=SYMBOL)),
           query={"conid": "4815747", "bar": "1d", "startTime": "20240611-20:00:00"})
    script(server, history_path, json_response(history(lots(MINUTES), symbol=SYMBOL)),  # one session a request
           query={"conid": "4815747", "bar": "1min", "startTime": "20240610-20:00:00"})
    script(server, history_path, json_response(history([], symbol=SYMBOL)), query={"conid": "4815747", "bar": "1min"})


def serve_alpaca(server: HTTPServer) -> None:
    def bars(rows: dict[Any, tuple[float, ...]], stamp: Callable[[Any], str]) -> list[dict]:
        return [alpaca_bar(stamp(t), o, h, lo, c, int(v), 1000, round((h + lo + c) / 3, 4))
                for t, (o, h, lo, c, v) in sorted(rows.items())]

    daily = bars(DAILY, lambda d: datetime(d.year, d.month, d.day, tzinfo=NEW_YORK).astimezone(UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ"))
    minutes = bars({**MINUTES, **EXTENDED}, lambda ts: ts.strftime("%Y-%m-%dT%H:%M:%SZ"))
    script(server, "/v2/stocks/bars", json_response({"bars": {SYMBOL: daily}, "next_page_token": None}),
           query={"timeframe": "1Day", "symbols": SYMBOL})
    script(server, "/v2/stocks/bars", json_response({"bars": {SYMBOL: minutes}, "next_page_token": None}),
           query={"timeframe": "1Min", "symbols": SYMBOL})
    script(server, "/v1/corporate-actions", json_response({"corporate_actions": {
        "forward_splits": [{"symbol": SYMBOL, "new_rate": 10, "old_rate": 1, "process_date": "2024-06-10",
                            "ex_date": "2024-06-10", "record_date": "2024-06-06", "payable_date": "2024-06-07"}],
        "cash_dividends": [{"symbol": SYMBOL, "rate": DIVIDEND, "special": False, "foreign": False,
                            "process_date": "2024-06-28", "ex_date": "2024-06-11", "record_date": "2024-06-11",
                            "payable_date": "2024-06-28"}],
    }, "next_page_token": None}), query={"symbols": SYMBOL})


def serve_polygon(server: HTTPServer) -> None:
    def results(rows: dict[int, tuple[float, ...]]) -> list[dict]:
        return [{"v": v, "vw": round((h + lo + c) / 3, 4), "o": o, "c": c, "h": h, "l": lo, "t": t, "n": 1000}
                for t, (o, h, lo, c, v) in sorted(rows.items())]

    base = f"/v2/aggs/ticker/{SYMBOL}/range/1"
    span = f"{START.isoformat()}/{END.isoformat()}"
    script(server, f"{base}/day/{span}",
           json_response(aggs(results({ny_midnight_ms(d): b for d, b in DAILY.items()}), ticker=SYMBOL)))
    script(server, f"{base}/minute/{span}", json_response(aggs(results(
        {int(ts.timestamp() * 1000): b for ts, b in {**MINUTES, **EXTENDED}.items()}), ticker=SYMBOL)))
    script(server, "/v3/reference/splits", json_response({"results": [
        {"execution_date": "2024-06-10", "id": "E1", "split_from": 1, "split_to": 10, "ticker": SYMBOL}],
        "status": "OK", "request_id": "r1"}), query={"ticker": SYMBOL})
    script(server, "/v3/reference/dividends", json_response({"results": [
        {"cash_amount": DIVIDEND, "currency": "USD", "declaration_date": "2024-05-22", "dividend_type": "CD",
         "ex_dividend_date": "2024-06-11", "frequency": 4, "id": "E3", "pay_date": "2024-06-28",
         "record_date": "2024-06-11", "ticker": SYMBOL}], "status": "OK", "request_id": "r3"}),
        query={"ticker": SYMBOL})


@dataclass(frozen=True)
class Case:
    """One provider: its credentials, the base-URL path on the server, its answers and universe options."""

    name: str
    credentials: dict[str, str]
    prefix: str
    serve: Callable[[HTTPServer], None]
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def datasets(self) -> tuple[str, ...]:
        return datasets_of(self.name)


CASES = [
    Case("alphavantage", {"ALPHAVANTAGE_API_KEY": "AVKEY-123456"}, "", serve_alphavantage, {"currency": "USD"}),
    Case("finnhub", {"FINNHUB_API_KEY": "fh-token-98765"}, "/api/v1", serve_finnhub),
    Case("iexcloud", {"IEX_CLOUD_TOKEN": "sk_iex_0123456789abcdef"}, "/stable", serve_iexcloud),
    Case("ibkr", {}, "/v1/api", serve_ibkr),
    Case("alpaca", {"ALPACA_API_KEY_ID": "AKTESTKEYID0001", "ALPACA_API_SECRET_KEY": "s3cr3t+/alpaca=="}, "",
         serve_alpaca),
    Case("polygon", {"POLYGON_API_KEY": "pk_TEST+secret/key=="}, "", serve_polygon),
]


# -- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture(params=CASES, ids=[c.name for c in CASES])
def case(request: pytest.FixtureRequest) -> Iterator[Case]:
    """The provider under test, with its process-wide breaker and rate limits forgotten before and after."""
    reset_shared_state(request.param.name)
    yield request.param
    reset_shared_state(request.param.name)


@pytest.fixture
def server() -> Iterator[HTTPServer]:
    """A loopback server of this test alone, so the test can really stop it."""
    srv = HTTPServer(host="127.0.0.1", port=0)
    srv.start()
    yield srv
    srv.clear()
    if srv.is_running():
        srv.stop()


def universe_file(tmp_path: Path, case: Case) -> Path:
    """The checked-in instruments with only `case`'s provider switched on, for NVDA, with fast HTTP policies."""
    doc = yaml.safe_load(DEFAULT_UNIVERSE.read_text())
    doc["providers"] = {case.name: {"enabled": True, "symbols": [SYMBOL], "http": dict(FAST_HTTP), **case.options},
                        "synthetic": {"enabled": False}, "file": {"enabled": False}}
    path = tmp_path / "universe.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def base_url_env(name: str) -> str:
    return f"MDP_{name.upper()}_BASE_URL"


def md_rows(conn: psycopg.Connection, name: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    return (read_bars_1d(conn, start=START, end=END, provider=name),
            read_bars_1m(conn, start=START, end=END, provider=name))


def actions_and_factors(conn: psycopg.Connection, name: str) -> tuple[list[tuple], list[tuple]]:
    actions = conn.execute("select symbol, ex_date, action, ratio, amount, currency, learned_at"
                           " from ref.corporate_actions where provider = %s order by ex_date, action",
                           (name,)).fetchall()
    factors = conn.execute("select instrument_id, ex_date, action, ratio, amount, prior_close, price_factor,"
                           " volume_factor, learned_at from md.adjustment_factors order by ex_date, action").fetchall()
    return actions, factors


def without_lineage(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.drop("run_id", "ingested_at")


def replay_env(database_url: str, kafka_bootstrap: str, universe: Path, frames: Path, name: str,
               dead_url: str) -> dict[str, str]:
    """What the replay process sees: the test services, the universe, no credentials and no DAGSTER_HOME."""
    env = {k: v for k, v in os.environ.items()
           if k not in CREDENTIALS and k != "DAGSTER_HOME" and not k.startswith("MDP_")}
    return {**env, "MDP_DATABASE_URL": database_url, "MDP_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "MDP_UNIVERSE": str(universe), "MDP_FRAMES_DIR": str(frames), base_url_env(name): dead_url}


# -- the test -------------------------------------------------------------------------------------


def test_provider_materializes_every_dataset_and_replays_without_the_server(
        case: Case, server: HTTPServer, database_url: str, kafka_bootstrap: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    name, datasets = case.name, case.datasets
    case.serve(server)
    for variable, value in case.credentials.items():
        monkeypatch.setenv(variable, value)
    # The base URL comes from the settings given to build_definitions; the variable, which they override,
    # names a port nothing listens on, so a broken hand-over fails here rather than reaching the internet.
    monkeypatch.setenv(base_url_env(name), closed_port_url())
    monkeypatch.setenv("MDP_FRAMES_DIR", str(tmp_path / "frames"))
    universe = universe_file(tmp_path, case)
    url = server.url_for(case.prefix or "/").rstrip("/")
    settings = Settings(database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap, universe_path=universe,
                        files_dir=DEFAULT_FILES_DIR, base_urls={name: url})

    result = materialize_range(build_definitions(settings), START, END, providers=[name],
                               instance=dg.DagsterInstance.ephemeral())

    server.check_assertions()  # every request found a documented answer
    assert result.success
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    layers = {"bars_1d": ("raw", "validated", "normalized", "md", "published"),
              "bars_1m": ("raw", "validated", "normalized", "md"),
              "corporate_actions": ("raw", "validated", "normalized", "ref")}
    expected_keys = {f"{layer}/{name}/{ds}" for ds in datasets for layer in layers[ds]}
    assert expected_keys | {"ref/instruments", "md/adjustment_factors", "md/bars_1d_adjusted"} <= materialized
    evaluations = result.get_asset_check_evaluations()
    passed = {(e.asset_key.to_user_string(), e.check_name) for e in evaluations if e.passed}
    assert [(e.asset_key.to_user_string(), e.check_name) for e in evaluations
            if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR] == []
    # Warnings may come and go with the quality detectors (IBKR's unadjusted 10:1 open is a price gap);
    # these must pass: nothing quarantined, every frame conforms, the split is adjusted away.
    must_pass = {(f"validated/{name}/{ds}", check) for ds in datasets for check in ("schema", "quarantine")}
    must_pass |= {(f"normalized/{name}/{ds}", "canonical_schema") for ds in datasets if ds != "corporate_actions"}
    assert must_pass | {("md/bars_1d_adjusted", "no_ex_date_jump")} <= passed

    with connect(database_url) as conn:
        daily, minute = md_rows(conn, name)
        actions, factors = actions_and_factors(conn, name)
        raw = dict(conn.execute("select dataset, count(*) from raw.payloads where provider = %s group by dataset",
                                (name,)).fetchall())
        params = [r[0] for r in conn.execute("select params::text from raw.payloads").fetchall()]
        quarantined = conn.execute("select dataset, check_name, reason from quality.quarantine").fetchall()

    assert set(raw) == set(datasets)  # a payload per dataset, bytes as sent
    assert not [p for p in params for secret in case.credentials.values() if secret in p]  # redacted
    assert quarantined == []

    # md.bars_1d: as traded, keyed by instrument; the payload's 2024-06-12 is outside the run.
    assert daily.select("symbol", "instrument_id", "provider", "session_date").rows() == [
        (SYMBOL, INSTRUMENT_ID, name, day) for day in DAILY]
    for row, expected in zip(daily.select("open", "high", "low", "close", "volume").rows(), DAILY.values(),
                             strict=True):
        assert row == pytest.approx(expected)

    # md.bars_1m: UTC bar starts of the regular session only (09:30 New York is 13:30Z in June).
    if "bars_1m" in datasets:
        assert minute.select("symbol", "instrument_id", "provider", "session_date", "ts").rows() == [
            (SYMBOL, INSTRUMENT_ID, name, date(2024, 6, 10), ts) for ts in MINUTES]
        assert minute["ts"][0] == OPEN_UTC
        for row, expected in zip(minute.select("open", "high", "low", "close", "volume").rows(), MINUTES.values(),
                                 strict=True):
            assert row == pytest.approx(expected)
    else:
        assert minute.is_empty()

    # ref.corporate_actions and the factors derived from them and the stored closes.
    if "corporate_actions" in datasets:
        assert [a[:6] for a in actions] == EXPECTED_ACTIONS
        assert len(factors) == 2
        for got, expected in zip(factors, EXPECTED_FACTORS, strict=True):
            assert got[:3] == expected[:3]
            assert got[3:8] == pytest.approx(expected[3:])
    else:
        assert actions == []
        assert factors == []

    # Replay: the provider server is gone, no credentials, a fresh frames directory, a new process.
    server.clear()
    server.stop()
    for variable in case.credentials:
        monkeypatch.delenv(variable)
    env = replay_env(database_url, kafka_bootstrap, universe, tmp_path / "replay-frames", name, url)
    done = subprocess.run([CLI, "replay", "--start", START.isoformat(), "--end", END.isoformat(), "--provider", name],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"

    with connect(database_url) as conn:
        daily_again, minute_again = md_rows(conn, name)
        actions_again, factors_again = actions_and_factors(conn, name)
        raw_again = dict(conn.execute("select dataset, count(*) from raw.payloads where provider = %s"
                                      " group by dataset", (name,)).fetchall())
    assert without_lineage(daily_again).equals(without_lineage(daily))
    assert without_lineage(minute_again).equals(without_lineage(minute))
    assert set(daily_again["run_id"]) == set(daily["run_id"])  # the replay found nothing changed: no rewrite
    assert "succeeded" in done.stdout
    assert actions_again == actions  # same actions, still learnt when first seen
    assert factors_again == factors
    assert raw_again == raw  # nothing fetched, nothing stored
