"""The synthetic provider (deterministic, session-aware, obeys corporate actions) and the registry."""

from __future__ import annotations

import dataclasses
import io
import json
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest

from mdpipeline.providers import build_provider
from mdpipeline.providers.base import STANDARD_COLUMNS, Provider, ProviderError, Query, RawPayload
from mdpipeline.providers.files import FileProvider
from mdpipeline.providers.synthetic import SyntheticProvider
from mdpipeline.settings import DEFAULT_FILES_DIR, DEFAULT_UNIVERSE, Settings
from mdpipeline.universe import ProviderSetup, load_universe

SYMBOLS = ("AAPL", "MSFT", "NVDA")
ACTIONS = [
    {"symbol": "NVDA", "ex_date": "2024-06-10", "action": "split", "ratio": 10},
    {"symbol": "AAPL", "ex_date": "2024-05-10", "action": "cash_dividend", "amount": 0.25, "currency": "USD"},
]


def make(options: dict | None = None, symbols: tuple[str, ...] = SYMBOLS) -> SyntheticProvider:
    opts = {"seed": 7, "corporate_actions": ACTIONS, **(options or {})}
    return SyntheticProvider(ProviderSetup("synthetic", True, symbols, opts))


def bars(provider: SyntheticProvider, dataset: str, start: date, end: date,
         symbols: tuple[str, ...] = SYMBOLS) -> pl.DataFrame:
    """extract + transform, with payload ids set as if stored."""
    payloads = provider.extract(Query(dataset, start, end, symbols))
    stored = [dataclasses.replace(p, payload_id=i) for i, p in enumerate(payloads, start=1)]
    return provider.transform(dataset, stored)


def test_is_a_provider() -> None:
    p = make()
    assert isinstance(p, Provider)
    assert p.name == "synthetic"
    assert p.datasets == ("bars_1d", "bars_1m", "corporate_actions")


def test_daily_bar_is_the_same_whatever_the_range() -> None:
    p = make()
    key = (pl.col("symbol") == "NVDA") & (pl.col("session_date") == date(2024, 6, 10))
    short = bars(p, "bars_1d", date(2024, 6, 10), date(2024, 6, 10)).filter(key).drop("raw_payload_id")
    mid = bars(p, "bars_1d", date(2024, 6, 3), date(2024, 6, 14)).filter(key).drop("raw_payload_id")
    year = make().daily_bars(["MSFT", "NVDA"], date(2023, 1, 1), date(2024, 12, 31))
    year = year.filter(key)
    assert short.height == 1
    assert short.equals(mid)
    assert short.select(year.columns).equals(year)


def test_seed_changes_the_data() -> None:
    a = make().daily_bars(["AAPL"], date(2024, 6, 3), date(2024, 6, 7))
    b = make({"seed": 8}).daily_bars(["AAPL"], date(2024, 6, 3), date(2024, 6, 7))
    assert not a["close"].equals(b["close"])


def test_one_payload_per_session_and_none_on_weekends_or_holidays() -> None:
    payloads = make().extract(Query("bars_1d", date(2024, 6, 14), date(2024, 7, 8), ("AAPL", "NVDA")))
    days = [p.session_date for p in payloads]
    assert date(2024, 6, 19) not in days  # Juneteenth
    assert date(2024, 7, 4) not in days  # Independence Day
    assert all(d.weekday() < 5 for d in days)
    assert days[:3] == [date(2024, 6, 14), date(2024, 6, 17), date(2024, 6, 18)]
    first = payloads[0]
    assert first.request_key.startswith("bars_1d:2024-06-14:")  # then a digest of the symbols asked for
    assert first.symbols == ("AAPL", "NVDA")
    assert first.endpoint == "synthetic://bars_1d"
    assert first.params == {"session": "2024-06-14", "symbols": ["AAPL", "NVDA"], "seed": 7}
    assert first.fetched_at is not None
    assert first.fetched_at.tzinfo is not None
    assert first.content_type == "text/csv"
    doc = pl.read_csv(io.BytesIO(first.body), infer_schema=False)
    assert doc["symbol"].to_list() == ["AAPL", "NVDA"]
    assert doc["date"].to_list() == ["2024-06-14", "2024-06-14"]
    assert doc.columns == ["symbol", "date", "open", "high", "low", "close", "volume", "vwap", "trades"]
    other = make().extract(Query("bars_1d", date(2024, 6, 14), date(2024, 6, 14), ("AAPL",)))
    assert other[0].request_key != first.request_key  # another symbol set is another request
    assert make().extract(Query("bars_1d", date(2024, 7, 4), date(2024, 7, 4), ("AAPL",))) == []


def test_minute_bars_cover_the_session_half_days_too() -> None:
    m = bars(make(), "bars_1m", date(2024, 11, 27), date(2024, 11, 29), ("AAPL", "SPY"))
    local_day = pl.col("ts").dt.convert_time_zone("America/New_York").dt.date().alias("d")
    counts = m.group_by(local_day, "symbol").len()
    per_day = dict(counts.group_by("d").agg(pl.col("len").unique().first()).iter_rows())
    assert per_day == {date(2024, 11, 27): 390, date(2024, 11, 29): 210}
    half = m.filter(pl.col("ts") >= datetime(2024, 11, 29, tzinfo=UTC))
    assert half["ts"].min() == datetime(2024, 11, 29, 14, 30, tzinfo=UTC)
    assert half["ts"].max() == datetime(2024, 11, 29, 17, 59, tzinfo=UTC)


def test_minute_timestamps_are_utc_bar_starts() -> None:
    p = make()
    summer = p.extract(Query("bars_1m", date(2024, 6, 10), date(2024, 6, 10), ("AAPL",)))
    assert pl.read_csv(io.BytesIO(summer[0].body), infer_schema=False)["ts"][0] == "2024-06-10T13:30:00Z"
    winter = bars(p, "bars_1m", date(2024, 1, 2), date(2024, 1, 2), ("AAPL",))
    assert winter["ts"].min() == datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
    assert winter["ts"].max() == datetime(2024, 1, 2, 20, 59, tzinfo=UTC)
    assert winter["ts"].diff().drop_nulls().dt.total_seconds().unique().to_list() == [60]


def test_minute_bars_agree_with_the_daily_bar() -> None:
    p = make()
    daily = p.daily_bars(SYMBOLS, date(2024, 6, 6), date(2024, 6, 11))
    minutes = p.minute_bars(SYMBOLS, date(2024, 6, 6), date(2024, 6, 11))
    agg = minutes.group_by("symbol", "session_date").agg(
        pl.col("open").first(), pl.col("high").max(), pl.col("low").min(), pl.col("close").last(),
        pl.col("volume").sum(),
    )
    joined = daily.join(agg, on=["symbol", "session_date"], suffix="_m")
    assert joined.height == daily.height == 12
    for col in ("open", "high", "low", "close", "volume"):
        assert (joined[col] == joined[f"{col}_m"]).all(), col
    # the same minute bars whatever the range
    one_day = p.minute_bars(["NVDA"], date(2024, 6, 10), date(2024, 6, 10))
    assert one_day.equals(
        minutes.filter(pl.col("symbol") == "NVDA", pl.col("session_date") == date(2024, 6, 10)))


def check_ohlc(frame: pl.DataFrame) -> None:
    ok = frame.select(
        (pl.col("low") <= pl.min_horizontal("open", "close")).all().alias("low"),
        (pl.max_horizontal("open", "close") <= pl.col("high")).all().alias("high"),
        pl.col("vwap").is_between(pl.col("low"), pl.col("high")).all().alias("vwap"),
        (pl.col("low") > 0).all().alias("positive"),
        (pl.col("volume") >= 0).all().alias("volume"),
    )
    assert ok.row(0, named=True) == dict.fromkeys(ok.columns, True)


def test_ohlc_consistency_daily_and_minute() -> None:
    p = make(symbols=("AAPL", "MSFT", "NVDA", "TSLA", "META", "SPY"))
    daily = bars(p, "bars_1d", date(2023, 1, 1), date(2024, 12, 31), p.setup.symbols)
    assert daily.height == 6 * 502
    check_ohlc(daily)
    assert (daily["trades"] >= 1).all()
    assert daily["close"].is_between(1, 5000).all()
    check_ohlc(bars(p, "bars_1m", date(2024, 6, 7), date(2024, 6, 11), p.setup.symbols))


def test_split_and_dividend_are_visible_in_raw_prices() -> None:
    with_actions = make().daily_bars(SYMBOLS, date(2024, 5, 1), date(2024, 6, 14))
    plain = make({"corporate_actions": []}).daily_bars(SYMBOLS, date(2024, 5, 1), date(2024, 6, 14))
    nvda = with_actions.filter(pl.col("symbol") == "NVDA")
    before = nvda.filter(pl.col("session_date") == date(2024, 6, 7)).row(0, named=True)
    after = nvda.filter(pl.col("session_date") == date(2024, 6, 10)).row(0, named=True)
    assert 7 < before["close"] / after["close"] < 14
    assert 3 < after["volume"] / before["volume"] < 30
    joined = with_actions.join(plain, on=["symbol", "session_date"], suffix="_plain")
    nv = joined.filter(pl.col("symbol") == "NVDA")
    early = nv.filter(pl.col("session_date") < date(2024, 6, 10))
    late = nv.filter(pl.col("session_date") >= date(2024, 6, 10))
    assert (early["close"] == early["close_plain"]).all()
    assert ((late["close"] - late["close_plain"] / 10).abs() <= 0.006).all()
    assert ((late["volume"] - late["volume_plain"] * 10).abs() <= 5).all()  # both rounded to shares
    ex_day = joined.filter(pl.col("symbol") == "AAPL", pl.col("session_date") == date(2024, 5, 10))
    aapl = ex_day.row(0, named=True)
    assert aapl["close_plain"] - aapl["close"] == pytest.approx(0.25, abs=0.03)
    aapl_before = joined.filter(pl.col("symbol") == "AAPL", pl.col("session_date") == date(2024, 5, 9))
    assert aapl_before["close"].item() == aapl_before["close_plain"].item()


def test_corporate_actions_payloads() -> None:
    p = make()
    payloads = p.extract(Query("corporate_actions", date(2024, 5, 9), date(2024, 6, 10), SYMBOLS))
    assert [x.session_date for x in payloads] == [x.session_date for x in p.extract(
        Query("bars_1d", date(2024, 5, 9), date(2024, 6, 10), ("AAPL",)))]
    non_empty = [x for x in payloads if pl.read_csv(io.BytesIO(x.body), infer_schema=False).height]
    assert [x.session_date for x in non_empty] == [date(2024, 5, 10), date(2024, 6, 10)]
    frame = p.transform("corporate_actions", payloads)
    assert frame.drop("raw_payload_id").rows() == [
        ("AAPL", date(2024, 5, 10), "cash_dividend", None, 0.25, "USD"),
        ("NVDA", date(2024, 6, 10), "split", 10.0, None, None),
    ]
    only_msft = p.transform("corporate_actions", p.extract(
        Query("corporate_actions", date(2024, 5, 9), date(2024, 6, 10), ("MSFT",))))
    assert only_msft.is_empty()


@pytest.mark.parametrize("dataset", ["bars_1d", "bars_1m", "corporate_actions"])
def test_transform_returns_the_standard_frame(dataset: str) -> None:
    p = make()
    payloads = p.extract(Query(dataset, date(2024, 6, 7), date(2024, 6, 10), SYMBOLS))
    stored = [dataclasses.replace(x, payload_id=100 + i) for i, x in enumerate(payloads)]
    frame = p.transform(dataset, stored)
    assert dict(frame.schema) == STANDARD_COLUMNS[dataset]
    assert set(frame["raw_payload_id"].to_list()) <= {100, 101}
    assert dict(p.transform(dataset, []).schema) == STANDARD_COLUMNS[dataset]


def test_unparseable_values_become_nulls() -> None:
    csv = (b"symbol,date,open,high,low,close,volume,vwap,trades\n"
           b"AAPL,2024-06-10,190.5, 191.25 ,189.0,n/a,,190.1,12.5\n"
           b"MSFT,2024-13-01,420,421,419,420.5,1000,,7\n")
    payload = RawPayload("synthetic", "bars_1d", date(2024, 6, 10), "bars_1d:2024-06-10",
                         "synthetic://bars_1d", {}, csv, content_type="text/csv", payload_id=5)
    assert make().transform("bars_1d", [payload]).rows() == [
        ("AAPL", date(2024, 6, 10), 190.5, 191.25, 189.0, None, None, 190.1, None, 5),
        ("MSFT", None, 420.0, 421.0, 419.0, 420.5, 1000.0, None, 7, 5),
    ]


HEADER = b"symbol,date,open,high,low,close,volume,vwap,trades\n"


def _csv_payload(payload_id: int, body: bytes, session: date = date(2024, 6, 10)) -> RawPayload:
    return RawPayload("synthetic", "bars_1d", session, f"bars_1d:{session}:{payload_id}", "synthetic://bars_1d",
                      {}, body, content_type="text/csv", payload_id=payload_id)


def _one_by_one(payloads: list[RawPayload]) -> list[tuple]:
    rows = []
    for payload in payloads:
        rows.extend(make().transform("bars_1d", [payload]).rows())
    return rows


@pytest.mark.parametrize("odd", [
    b"",                                            # header only: an empty session
    b"NVDA,2024-06-10,1,2,0.5,1.5,10,1.2,3",        # no line end after the last row
    b'NVDA,2024-06-10,1,2,0.5,"1.5\n",10,1.2,3\n',  # a quoted line break: two lines, one row
    b"NVDA,2024-06-10,1,2,0.5,1.5,10,1.2,3\n\nNVDA,2024-06-11,1,2,0.5,1.5,10,1.2,3\n",  # a blank line
    b"NVDA,2024-06-10,1,2,0.5,1.5,10,1.2,3\r\n",  # a carriage return
])
def test_payloads_read_together_keep_each_rows_payload(odd: bytes) -> None:
    """Small CSV payloads are read as one document; each row keeps the id of the payload it came from,
    whatever a body looks like, exactly as when each payload is read alone."""
    two_rows = b"AAPL,2024-06-10,1,2,0.5,1.5,10,1.2,3\nMSFT,2024-06-10,1,2,0.5,1.5,10,1.2,3\n"
    payloads = [_csv_payload(1, HEADER + two_rows),
                _csv_payload(2, HEADER + odd),
                _csv_payload(3, HEADER + b"AAPL,2024-06-11,1,2,0.5,1.5,10,1.2,3\n", date(2024, 6, 11))]
    together = make().transform("bars_1d", payloads).rows()
    assert together == _one_by_one(payloads)
    assert [(row[0], row[-1]) for row in together if row[-1] != 2] == [("AAPL", 1), ("MSFT", 1), ("AAPL", 3)]
    assert {row[0] for row in together if row[-1] == 2} <= {"NVDA", None}


def test_a_range_of_sessions_reads_as_each_session_alone() -> None:
    p = make()
    payloads = p.extract(Query("bars_1m", date(2024, 6, 3), date(2024, 6, 14), SYMBOLS))
    stored = [dataclasses.replace(x, payload_id=i) for i, x in enumerate(payloads, start=1)]
    together = p.transform("bars_1m", stored)
    assert together.height == 10 * 3 * 390
    assert together.equals(pl.concat([p.transform("bars_1m", [x]) for x in stored]))


def test_an_unreadable_payload_among_others_is_named() -> None:
    payloads = [_csv_payload(1, HEADER + b"AAPL,2024-06-10,1,2,0.5,1.5,10,1.2,3\n"),
                _csv_payload(2, HEADER + b"AAPL,2024-06-10,1,2,0.5,1.5,10,1.2,3,extra,fields,here\n")]
    with pytest.raises(ProviderError, match="bars_1d:2024-06-10:2 is not readable"):
        make().transform("bars_1d", payloads)


def test_json_payloads_of_earlier_versions_still_replay() -> None:
    body = json.dumps({"provider": "synthetic", "dataset": "bars_1d", "session": "2024-06-10", "bars": [
        {"symbol": "AAPL", "date": "2024-06-10", "open": 190.5, "high": "191.25", "low": 189.0,
         "close": "n/a", "volume": None, "vwap": 190.1, "trades": "12.5"},
        {"symbol": "MSFT", "date": "2024-13-01", "open": 420, "high": 421, "low": 419, "close": 420.5,
         "volume": 1000, "trades": 7},
    ]}).encode()
    payload = RawPayload("synthetic", "bars_1d", date(2024, 6, 10), "bars_1d:2024-06-10",
                         "synthetic://bars_1d", {}, body, payload_id=5)
    frame = make().transform("bars_1d", [payload])
    assert frame.rows() == [
        ("AAPL", date(2024, 6, 10), 190.5, 191.25, 189.0, None, None, 190.1, None, 5),
        ("MSFT", None, 420.0, 421.0, 419.0, 420.5, 1000.0, None, 7, 5),
    ]


def test_anomalies_corrupt_the_emitted_rows() -> None:
    day = "2024-06-11"
    anomalies = [
        {"kind": "broken_ohlc", "symbol": "AAPL", "date": day},
        {"kind": "negative_price", "symbol": "MSFT", "date": day},
        {"kind": "missing", "symbol": "NVDA", "date": day},
        {"kind": "duplicate", "symbol": "AAPL", "date": "2024-06-12"},
        {"kind": "spike", "symbol": "MSFT", "date": "2024-06-12"},
    ]
    clean = bars(make(), "bars_1d", date(2024, 6, 10), date(2024, 6, 13)).drop("raw_payload_id")
    dirty = bars(make({"anomalies": anomalies}), "bars_1d", date(2024, 6, 10), date(2024, 6, 13))

    def rows(frame: pl.DataFrame, symbol: str, d: str) -> pl.DataFrame:
        return frame.filter(pl.col("symbol") == symbol, pl.col("session_date") == date.fromisoformat(d))

    assert rows(dirty, "AAPL", day)["high"].item() < rows(dirty, "AAPL", day)["low"].item()
    assert rows(dirty, "MSFT", day)["close"].item() < 0
    assert rows(dirty, "NVDA", day).is_empty()
    dup = rows(dirty, "AAPL", "2024-06-12")
    assert dup.height == 2
    assert dup["close"].n_unique() == 2
    assert rows(dirty, "MSFT", "2024-06-12")["close"].item() == pytest.approx(
        3 * rows(clean, "MSFT", "2024-06-12")["close"].item())
    untouched = dirty.filter(pl.col("session_date").is_in([date(2024, 6, 10), date(2024, 6, 13)]))
    assert untouched.drop("raw_payload_id").equals(
        clean.filter(pl.col("session_date").is_in([date(2024, 6, 10), date(2024, 6, 13)])))

    minutes = bars(make({"anomalies": [{"kind": "missing", "symbol": "AAPL", "date": day},
                                       {"kind": "spike", "symbol": "MSFT", "date": day,
                                        "ts": "2024-06-11T15:00:00Z"}]}),
                   "bars_1m", date(2024, 6, 11), date(2024, 6, 11), ("AAPL", "MSFT"))
    assert minutes.filter(pl.col("symbol") == "AAPL").height == 389
    assert minutes.filter(pl.col("symbol") == "AAPL")["ts"].min() == datetime(2024, 6, 11, 13, 31, tzinfo=UTC)
    msft = minutes.filter(pl.col("symbol") == "MSFT")
    spiked = msft.filter(pl.col("ts") == datetime(2024, 6, 11, 15, 0, tzinfo=UTC))
    assert spiked["high"].item() > 2 * msft["high"].median()


def test_configuration_errors_are_clear() -> None:
    with pytest.raises(ProviderError, match="not a XNYS session"):
        make({"corporate_actions": [
            {"symbol": "NVDA", "ex_date": "2024-06-08", "action": "split", "ratio": 10}]})
    with pytest.raises(ProviderError, match="split or cash_dividend"):
        make({"corporate_actions": [{"symbol": "NVDA", "ex_date": "2024-06-10", "action": "merger"}]})
    with pytest.raises(ProviderError, match="anomaly kind"):
        make({"anomalies": [{"kind": "gremlins", "symbol": "AAPL", "date": "2024-06-10"}]})
    with pytest.raises(ProviderError, match="no dataset"):
        make().extract(Query("ticks", date(2024, 6, 10), date(2024, 6, 10), ("AAPL",)))


# -- registry --------------------------------------------------------------------------------------

def settings(files_dir: Path = DEFAULT_FILES_DIR) -> Settings:
    return Settings(database_url="", kafka_bootstrap_servers="", universe_path=DEFAULT_UNIVERSE,
                    files_dir=files_dir)


def test_registry_builds_the_implemented_providers(tmp_path: Path) -> None:
    universe = load_universe(DEFAULT_UNIVERSE)
    synthetic = build_provider("synthetic", universe, settings())
    assert isinstance(synthetic, SyntheticProvider)
    assert synthetic.calendar_name == universe.exchange_calendar
    files = build_provider("file", universe, settings(tmp_path))
    assert isinstance(files, FileProvider)
    assert files.files_dir == tmp_path


def test_registry_errors() -> None:
    universe = load_universe(DEFAULT_UNIVERSE)
    with pytest.raises(ProviderError, match="'polygon' is not configured in the universe file"):
        build_provider("polygon", universe, settings())  # implemented, but this universe does not set it up
    with pytest.raises(ProviderError, match="unknown provider 'bloomberg'"):
        build_provider("bloomberg", universe, settings())
    disabled = dataclasses.replace(universe, providers={
        **universe.providers, "file": dataclasses.replace(universe.providers["file"], enabled=False)})
    with pytest.raises(ProviderError, match="provider file is disabled in the universe file"):
        build_provider("file", disabled, settings())
    missing = dataclasses.replace(universe, providers={"file": universe.providers["file"]})
    with pytest.raises(ProviderError, match="'synthetic' is not configured"):
        build_provider("synthetic", missing, settings())
