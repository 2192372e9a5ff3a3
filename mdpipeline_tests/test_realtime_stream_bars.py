"""Streamed minute bars: a loopback Alpaca websocket server (`b` bars, `u` updated bars, `d` daily bars) -> the
real collector -> the real broker -> the real sensor and job -> md.bars_1m under `alpaca-stream` and
md.bars.1m.v1; then the REST backfill of the same minutes (the minute-bar dataset's own store step) wins.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import polars as pl
import psycopg
import pytest

from mdpipeline.chain.datasets import BARS_1M_DATASET, StoreScope
from mdpipeline.contracts.frames import STORED_BARS_1M
from mdpipeline.distribute.subscriber import read_topic
from mdpipeline.distribute.topics import BARS_1M
from mdpipeline.settings import DEFAULT_UNIVERSE
from mdpipeline.universe import load_universe
from mdpipeline_tests.faults.alpaca_stream import AlpacaStream, collect_scripts
from mdpipeline_tests.realtime_helpers import run_realtime
from mdpipeline_tests.test_events_schema import schema_for

SESSION = date(2024, 6, 10)


def _bar(kind: str, symbol: str, minute: int, close: float, **changes: object) -> dict:
    bar = {"T": kind, "S": symbol, "o": close - 0.1, "h": close + 0.2, "l": close - 0.2, "c": close, "v": 1000,
           "t": f"2024-06-10T14:{minute:02d}:00Z", "n": 12, "vw": close}
    return {**bar, **changes}


def _frame(*messages: dict) -> str:
    return json.dumps(list(messages), separators=(",", ":"))


def _stream_bars(conn: psycopg.Connection) -> dict[tuple[str, str], float]:
    rows = conn.execute("select symbol, to_char(ts at time zone 'UTC', 'HH24:MI'), close from md.bars_1m"
                        " where provider = 'alpaca-stream'").fetchall()
    return {(s, t): c for s, t, c in rows}


def _collect_and_run(database_url: str, kafka_bootstrap: str, script: list[str]) -> str:
    topic, landing = collect_scripts(kafka_bootstrap, AlpacaStream(scripts=[script]), expect_connections=1,
                                     bars=True)
    assert landing.failed == []
    assert len(run_realtime(database_url, kafka_bootstrap, topic.name)) == 1
    return topic.name


@pytest.mark.both_layouts
def test_stream_bars_are_stored_under_their_own_source_and_the_rest_backfill_wins(
    database_url: str, conn: psycopg.Connection, kafka_bootstrap: str,
) -> None:
    first = _collect_and_run(database_url, kafka_bootstrap, [
        _frame(_bar("b", "AAPL", 0, 190.0), _bar("b", "MSFT", 0, 420.0)),
        _frame(_bar("b", "AAPL", 1, 190.5), _bar("b", "AAPL", 2, 191.0, h=180.0)),  # high below low: quarantined
        _frame(_bar("b", "ZZZZ", 1, 10.0), _bar("d", "AAPL", 0, 190.7, t="2024-06-10T04:00:00Z")),
    ])
    assert _stream_bars(conn) == {("AAPL", "14:00"): 190.0, ("AAPL", "14:01"): 190.5, ("MSFT", "14:00"): 420.0}
    rejected = dict(conn.execute("select symbol, check_name from quality.quarantine where dataset = 'bars_1m'"
                                 " and provider = 'alpaca-stream'").fetchall())
    assert rejected == {"AAPL": "ohlc_consistency", "ZZZZ": "symbology"}

    # Alpaca's updated bar (`u`, late trades) replaces the minute; the version it replaces is kept.
    second = _collect_and_run(database_url, kafka_bootstrap, [_frame(_bar("u", "AAPL", 1, 190.6, v=1100))])
    assert _stream_bars(conn)[("AAPL", "14:01")] == 190.6
    assert conn.execute("select close, change from md.bars_1m_revisions where provider = 'alpaca-stream'"
                        ).fetchall() == [(190.5, "update")]

    # md.bars.1m.v1: one message per changed instrument session, the last one the session's current state.
    values = [json.loads(e.value) for e in read_topic(kafka_bootstrap, BARS_1M.name)
              if e.headers.get("mdp-raw-topic") in (first, second)]
    validator = schema_for(BARS_1M.name)
    for value in values:
        validator.validate(value)
    aapl = [v["data"] for v in values if v["data"]["symbol"] == "AAPL"]
    assert [d["provider"] for d in aapl] == ["alpaca-stream", "alpaca-stream"]
    assert aapl[-1]["bars"]["close"] == [190.0, 190.6]

    # The REST backfill of AAPL's session, through the minute-bar dataset's store step: the REST bars win.
    symbology = load_universe(DEFAULT_UNIVERSE).symbology
    aapl_id = symbology.filter(pl.col("symbol") == "AAPL")["instrument_id"][0]
    rest = pl.DataFrame({
        "instrument_id": [aapl_id] * 2, "symbol": ["AAPL"] * 2, "session_date": [SESSION] * 2,
        "provider": ["alpaca"] * 2, "open": [189.9, 190.5], "high": [190.2, 190.8], "low": [189.8, 190.3],
        "close": [190.0, 190.65], "volume": [1000.0, 1100.0], "vwap": [190.0, 190.6], "trades": [12, 13],
        "ts": [datetime(2024, 6, 10, 14, 0, tzinfo=UTC), datetime(2024, 6, 10, 14, 1, tzinfo=UTC)],
        "raw_payload_id": [None, None], "run_id": ["rest"] * 2, "ingested_at": [datetime.now(UTC)] * 2,
    }).select(pl.col(c).cast(t) for c, t in STORED_BARS_1M.items())
    with conn.transaction():
        BARS_1M_DATASET.store(conn, rest, StoreScope("alpaca", SESSION, SESSION, ("AAPL",), (aapl_id,), "rest"))
    assert _stream_bars(conn) == {("MSFT", "14:00"): 420.0}  # AAPL's streamed minutes gave way to REST
    assert conn.execute("select count(*) from md.bars_1m_revisions where provider = 'alpaca-stream'"
                        " and change = 'delete'").fetchone() == (2,)
    [(passed, metrics)] = conn.execute("select passed, metadata from quality.check_results"
                                       " where check_name = 'stream_vs_rest'").fetchall()
    assert not passed
    assert metrics["compared"] == 2
    assert metrics["differing"] == 1  # 14:00 is the same bar; 14:01 differs
    assert metrics["max_close_diff_bps"] == pytest.approx(0.05 / 190.65 * 1e4)

    # A streamed bar of a minute REST already has is not stored again.
    _collect_and_run(database_url, kafka_bootstrap, [_frame(_bar("u", "AAPL", 0, 190.1), _bar("b", "MSFT", 1, 421.0))])
    assert _stream_bars(conn) == {("MSFT", "14:00"): 420.0, ("MSFT", "14:01"): 421.0}
