"""The file provider: vendor CSV/Parquet dumps -> raw payloads (CSV text) -> standard frames."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest

from mdpipeline.providers.base import STANDARD_COLUMNS, Provider, ProviderError, Query
from mdpipeline.providers.files import FileProvider
from mdpipeline.settings import DEFAULT_FILES_DIR
from mdpipeline.universe import ProviderSetup

SETUP = ProviderSetup("file", True, ("AAPL", "MSFT", "NVDA"))
BARS_CSV = "bars_1d/vendor_2024.csv"
BARS_PARQUET = "bars_1d/vendor_2024-06-17_21.parquet"


def run(provider: FileProvider, dataset: str, start: date, end: date,
        symbols: tuple[str, ...] = ()) -> pl.DataFrame:
    payloads = provider.extract(Query(dataset, start, end, symbols))
    stored = [dataclasses.replace(p, payload_id=i) for i, p in enumerate(payloads, start=1)]
    return provider.transform(dataset, stored)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_is_a_provider() -> None:
    p = FileProvider(SETUP, DEFAULT_FILES_DIR)
    assert isinstance(p, Provider)
    assert p.name == "file"
    assert p.datasets == ("bars_1d", "bars_1m", "corporate_actions")


def test_samples_csv_and_parquet_become_one_payload_per_file_and_session() -> None:
    p = FileProvider(SETUP, DEFAULT_FILES_DIR)
    payloads = p.extract(Query("bars_1d", date(2024, 6, 1), date(2024, 6, 30), ()))
    days = [x.session_date for x in payloads]
    assert len(days) == 14
    assert date(2024, 6, 19) not in days
    assert days == sorted(days)
    csv_day = next(x for x in payloads if x.session_date == date(2024, 6, 10))
    assert csv_day.request_key == "bars_1d:vendor_2024.csv:2024-06-10"
    assert csv_day.endpoint == BARS_CSV
    assert csv_day.content_type == "text/csv"
    assert csv_day.params == {
        "file": BARS_CSV,
        "file_sha256": hashlib.sha256((DEFAULT_FILES_DIR / BARS_CSV).read_bytes()).hexdigest(),
        "date": "2024-06-10",
    }
    # the vendor's rows, with the vendor's column names, untouched
    assert csv_day.body.decode().splitlines() == [
        "symbol,date,open,high,low,close,volume,vwap,trades",
        *[line for line in (DEFAULT_FILES_DIR / BARS_CSV).read_text().splitlines() if ",2024-06-10," in line],
    ]
    pq_day = next(x for x in payloads if x.session_date == date(2024, 6, 20))
    assert pq_day.request_key == "bars_1d:vendor_2024-06-17_21.parquet:2024-06-20"
    assert pq_day.params["file"] == BARS_PARQUET


def test_sample_rows_come_through_exactly() -> None:
    frame = run(FileProvider(SETUP, DEFAULT_FILES_DIR), "bars_1d", date(2024, 6, 3), date(2024, 6, 21))
    assert dict(frame.schema) == STANDARD_COLUMNS["bars_1d"]
    nvda = frame.filter(pl.col("symbol") == "NVDA", pl.col("session_date") == date(2024, 6, 10))
    assert nvda.drop("raw_payload_id").row(0) == (
        "NVDA", date(2024, 6, 10), 118.35, 122.78, 117.68, 121.79, 377258002.0, 120.7567, 3143816)
    source = pl.concat([
        pl.read_csv(DEFAULT_FILES_DIR / BARS_CSV, try_parse_dates=True),
        pl.read_parquet(DEFAULT_FILES_DIR / BARS_PARQUET),
    ]).rename({"date": "session_date"}).cast({"volume": pl.Float64})
    got = frame.drop("raw_payload_id").sort("session_date", "symbol")
    assert got.equals(source.select(got.columns).sort("session_date", "symbol"))
    # raw unadjusted prices: the split shows
    closes = dict(frame.filter(pl.col("symbol") == "NVDA").select("session_date", "close").iter_rows())
    assert closes[date(2024, 6, 7)] / closes[date(2024, 6, 10)] == pytest.approx(10, rel=0.05)


def test_symbols_and_range_filter() -> None:
    p = FileProvider(SETUP, DEFAULT_FILES_DIR)
    frame = run(p, "bars_1d", date(2024, 6, 12), date(2024, 6, 18), ("AAPL",))
    assert frame["symbol"].unique().to_list() == ["AAPL"]
    assert frame["session_date"].to_list() == [
        date(2024, 6, 12), date(2024, 6, 13), date(2024, 6, 14), date(2024, 6, 17), date(2024, 6, 18)]
    assert p.extract(Query("bars_1d", date(2024, 6, 15), date(2024, 6, 16), ())) == []


def test_corporate_actions_sample() -> None:
    p = FileProvider(SETUP, DEFAULT_FILES_DIR)
    frame = run(p, "corporate_actions", date(2024, 1, 1), date(2024, 12, 31))
    assert dict(frame.schema) == STANDARD_COLUMNS["corporate_actions"]
    assert frame.drop("raw_payload_id").sort("ex_date").rows() == [
        ("AAPL", date(2024, 5, 10), "cash_dividend", None, 0.25, "USD"),
        ("MSFT", date(2024, 5, 15), "cash_dividend", None, 0.75, "USD"),
        ("NVDA", date(2024, 6, 10), "split", 10.0, None, None),
    ]


def test_minute_bars_offset_timestamps_become_utc(tmp_path: Path) -> None:
    write(tmp_path / "bars_1m" / "minutes.csv", "\n".join([
        "symbol,ts,open,high,low,close,volume",
        "AAPL,2024-06-10T09:30:00-04:00,193.5,193.9,193.4,193.8,120000",
        "AAPL,2024-06-10T15:59:00-04:00,193.0,193.2,192.9,193.1,90000",
        "AAPL,2024-06-10T20:05:00-04:00,193.1,193.1,193.1,193.1,10",  # after hours, UTC date 06-11
        "AAPL,2024-01-02T09:30:00-05:00,187.1,187.3,186.9,187.2,150000",
        "AAPL,2024-06-11T13:31:00Z,194.0,194.2,193.9,194.1,80000",
    ]) + "\n")
    p = FileProvider(SETUP, tmp_path)
    payloads = p.extract(Query("bars_1m", date(2024, 6, 10), date(2024, 6, 10), ("AAPL",)))
    assert [x.session_date for x in payloads] == [date(2024, 6, 10)]
    assert payloads[0].request_key == "bars_1m:minutes.csv:2024-06-10"
    frame = p.transform("bars_1m", payloads)
    assert dict(frame.schema) == STANDARD_COLUMNS["bars_1m"]
    assert frame["ts"].to_list() == [
        datetime(2024, 6, 10, 13, 30, tzinfo=UTC),
        datetime(2024, 6, 10, 19, 59, tzinfo=UTC),
        datetime(2024, 6, 11, 0, 5, tzinfo=UTC),
    ]
    assert frame.row(0)[2:7] == (193.5, 193.9, 193.4, 193.8, 120000.0)
    winter = run(p, "bars_1m", date(2024, 1, 2), date(2024, 1, 2))
    assert winter["ts"].to_list() == [datetime(2024, 1, 2, 14, 30, tzinfo=UTC)]
    zulu = run(p, "bars_1m", date(2024, 6, 11), date(2024, 6, 11))
    assert zulu["ts"].to_list() == [datetime(2024, 6, 11, 13, 31, tzinfo=UTC)]


def test_minute_bars_from_parquet_with_a_time_zone(tmp_path: Path) -> None:
    (tmp_path / "bars_1m").mkdir()
    pl.DataFrame({
        "symbol": ["MSFT", "MSFT"],
        "ts": [datetime(2024, 6, 10, 13, 30, tzinfo=UTC), datetime(2024, 6, 10, 13, 31, tzinfo=UTC)],
        "open": [427.0, 427.5], "high": [427.9, 427.8], "low": [426.8, 427.1], "close": [427.5, 427.2],
        "volume": [5000, 4000],
    }).with_columns(pl.col("ts").dt.convert_time_zone("America/New_York")).write_parquet(
        tmp_path / "bars_1m" / "m.parquet")
    frame = run(FileProvider(SETUP, tmp_path), "bars_1m", date(2024, 6, 10), date(2024, 6, 10))
    assert frame["ts"].to_list() == [datetime(2024, 6, 10, 13, 30, tzinfo=UTC),
                                     datetime(2024, 6, 10, 13, 31, tzinfo=UTC)]
    assert frame["close"].to_list() == [427.5, 427.2]


def test_missing_columns_name_the_file_and_the_columns(tmp_path: Path) -> None:
    write(tmp_path / "bars_1d" / "bad.csv", "symbol,date,open,high,low\nAAPL,2024-06-10,1,2,0.5\n")
    p = FileProvider(SETUP, tmp_path)
    with pytest.raises(ProviderError, match=r"bars_1d/bad\.csv is missing required columns: close, volume"):
        p.extract(Query("bars_1d", date(2024, 6, 10), date(2024, 6, 10), ()))


def test_unreadable_file_is_an_error_naming_it(tmp_path: Path) -> None:
    write(tmp_path / "bars_1d" / "broken.parquet", "this is not parquet")
    with pytest.raises(ProviderError, match=r"bars_1d/broken\.parquet"):
        FileProvider(SETUP, tmp_path).extract(Query("bars_1d", date(2024, 6, 10), date(2024, 6, 10), ()))


def test_missing_folders(tmp_path: Path) -> None:
    day = date(2024, 6, 10)
    assert FileProvider(SETUP, tmp_path).extract(Query("bars_1m", day, day, ())) == []
    with pytest.raises(ProviderError, match="does not exist"):
        FileProvider(SETUP, tmp_path / "nope").extract(Query("bars_1d", day, day, ()))
    with pytest.raises(ProviderError, match="unknown dataset"):
        FileProvider(SETUP, tmp_path).extract(Query("ticks", day, day, ()))


def test_unparseable_values_become_nulls(tmp_path: Path) -> None:
    write(tmp_path / "bars_1d" / "dirty.csv", "\n".join([
        "symbol,date,open,high,low,close,volume,trades,comment",
        "AAPL,2024-06-10,193.5,194.0,192.0,n/a,,abc,x",
        "MSFT,2024-06-10,427.0,428.0,426.0,427.5,1e6,12,y",
    ]) + "\n")
    frame = run(FileProvider(SETUP, tmp_path), "bars_1d", date(2024, 6, 10), date(2024, 6, 10))
    assert dict(frame.schema) == STANDARD_COLUMNS["bars_1d"]
    assert frame.rows() == [
        ("AAPL", date(2024, 6, 10), 193.5, 194.0, 192.0, None, None, None, None, 1),
        ("MSFT", date(2024, 6, 10), 427.0, 428.0, 426.0, 427.5, 1e6, None, 12, 1),
    ]


def test_rows_off_session_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path / "bars_1d" / "w.csv", "\n".join([
        "symbol,date,open,high,low,close,volume",
        "AAPL,2024-06-08,193.5,194.0,192.0,193.0,100",  # a Saturday
        "AAPL,2024-06-10,193.5,194.0,192.0,193.0,100",
    ]) + "\n")
    with caplog.at_level(logging.WARNING, logger="mdpipeline.providers.files"):
        query = Query("bars_1d", date(2024, 6, 7), date(2024, 6, 10), ())
        payloads = FileProvider(SETUP, tmp_path).extract(query)
    assert [x.session_date for x in payloads] == [date(2024, 6, 10)]
    assert "w.csv" in caplog.text
    assert "skipped 1 rows" in caplog.text


@pytest.mark.parametrize("dataset", ["bars_1d", "bars_1m", "corporate_actions"])
def test_empty_transform_has_the_standard_columns(dataset: str) -> None:
    frame = FileProvider(SETUP, DEFAULT_FILES_DIR).transform(dataset, [])
    assert dict(frame.schema) == STANDARD_COLUMNS[dataset]
