"""The read API against a real server on loopback (uvicorn) and the real database.

Formats and errors as docs/events.md describes them, the limits (symbols, range, rows; an empty symbol
list is refused instead of meaning every symbol), the bounded connection pool, the statement timeout
(a query stuck behind a table lock answers 503 in time), and a schemathesis run of every operation in
the served OpenAPI schema.
"""

from __future__ import annotations

import io
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, date, datetime

import polars as pl
import psycopg
import pytest
from pyarrow import ipc

from mdpipeline.normalize.bars import stamp
from mdpipeline.serve.app import APPLICATION_NAME
from mdpipeline.serve.limits import ApiLimits
from mdpipeline.serve.queries import INTERVALS
from mdpipeline.serve.server import BackgroundServer
from mdpipeline.storage.database import connect
from mdpipeline.storage.loader import replace_range
from mdpipeline.storage.quarantine_store import replace_quarantine

pytestmark = pytest.mark.both_layouts

DAY1, DAY2 = date(2024, 6, 10), date(2024, 6, 11)


def seed(conn: psycopg.Connection) -> None:
    """Three daily bars (AAPL twice, MSFT once) and one quarantined row."""
    bars = pl.DataFrame({
        "instrument_id": [1, 1, 2], "symbol": ["AAPL", "AAPL", "MSFT"], "session_date": [DAY1, DAY2, DAY1],
        "provider": ["file"] * 3, "open": [1.0, 2.0, 3.0], "high": [1.5, 2.5, 3.5], "low": [0.5, 1.5, 2.5],
        "close": [1.2, 2.2, 3.2], "volume": [100.0, 200.0, 300.0], "vwap": [1.1, None, 3.1], "trades": [5, 6, None],
        "raw_payload_id": pl.Series([None] * 3, dtype=pl.Int64),
    }).with_columns(pl.col("trades").cast(pl.Int64))
    replace_range(conn, "md.bars_1d", stamp(bars, "run-1", datetime.now(UTC)), provider="file", start=DAY1, end=DAY2)
    rejected = pl.DataFrame({"session_date": [DAY2], "symbol": ["AAPL"], "check_name": ["value_range"],
                             "reason": ["close: greater_than(0)"], "row_data": ['{"close": -1}']})
    replace_quarantine(conn, rejected, dataset="bars_1d", provider="file", stage="validate", start=DAY1, end=DAY2,
                       run_id="run-1")


def serving(database_url: str, **limits: float) -> BackgroundServer:
    return BackgroundServer(database_url, limits=ApiLimits.from_env(**limits)).start()


@pytest.fixture
def api(database_url: str, conn: psycopg.Connection) -> Iterator[str]:
    seed(conn)
    server = serving(database_url)
    try:
        yield server.url
    finally:
        server.stop()


def _get(url: str, accept: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


@pytest.mark.parametrize("interval", INTERVALS)
def test_the_first_and_last_representable_days_answer_empty(api: str, interval: str) -> None:
    for day in ("0001-01-01", "9999-12-31"):  # found by schemathesis: a 1h read of 0001-01-01 overflowed (500)
        status, _, body = _get(f"{api}/v1/bars/{interval}?symbol=AAPL&start={day}&end={day}")
        assert (status, json.loads(body)) == (200, [])


def test_bars_as_json_arrow_and_parquet(api: str) -> None:
    query = f"{api}/v1/bars/1d?symbol=aapl&start=2024-06-10&end=2024-06-11"
    status, headers, body = _get(query)
    assert status == 200
    assert headers["content-type"] == "application/json"
    rows = json.loads(body)
    assert [(r["session_date"], r["close"]) for r in rows] == [("2024-06-10", 1.2), ("2024-06-11", 2.2)]
    assert rows[1]["vwap"] is None
    assert "raw_payload_id" not in rows[0]

    status, headers, body = _get(query, accept="application/vnd.apache.arrow.stream")
    assert status == 200
    table = ipc.open_stream(io.BytesIO(body)).read_all()
    assert table.num_rows == 2
    assert str(table.schema.field("session_date").type) == "date32[day]"

    status, headers, body = _get(query + "&format=parquet")
    assert headers["content-type"] == "application/vnd.apache.parquet"
    frame = pl.read_parquet(io.BytesIO(body))
    assert frame["close"].to_list() == [1.2, 2.2]
    assert headers["x-row-count"] == "2"

    _, _, body = _get(f"{api}/v1/bars/1d?symbol=AAPL,MSFT&start=2024-06-10&end=2024-06-10&provider=file")
    assert sorted(r["symbol"] for r in json.loads(body)) == ["AAPL", "MSFT"]


def test_quality_records(api: str) -> None:
    status, _, body = _get(f"{api}/v1/quality?symbol=AAPL&start=2024-06-01&end=2024-06-30")
    assert status == 200
    (row,) = json.loads(body)
    assert row["check_name"] == "value_range"
    assert json.loads(row["row_data"]) == {"close": -1}


def _refused(url: str) -> str:
    """The error message of a 400 answer."""
    status, _, body = _get(url)
    assert status == 400, body[:200]
    return str(json.loads(body)["error"])


def test_bad_requests_are_explained(api: str) -> None:
    assert "end" in _refused(f"{api}/v1/bars/1d?symbol=AAPL&start=2024-06-10")
    assert "before start" in _refused(f"{api}/v1/bars/1d?symbol=AAPL&start=2024-06-10&end=2024-06-01")
    assert "format" in _refused(f"{api}/v1/bars/1d?symbol=AAPL&start=2024-06-10&end=2024-06-11&format=xml")
    assert "provider" in _refused(f"{api}/v1/bars/1d?symbol=AAPL&start=2024-06-10&end=2024-06-11&provider=nobody")
    status, _, body = _get(f"{api}/v1/nothing")
    assert status == 404
    assert "no such path" in json.loads(body)["error"]
    status, _, body = _get(f"{api}/health")
    assert json.loads(body) == {"status": "ok"}


@pytest.mark.parametrize("symbols", [",", ",,,", "%20,%20"])
def test_an_empty_symbol_list_is_refused_not_read_as_every_symbol(api: str, symbols: str) -> None:
    assert "symbol" in _refused(f"{api}/v1/bars/1d?symbol={symbols}&start=2024-06-10&end=2024-06-11")


def test_requests_beyond_the_limits_answer_400_with_the_limit(database_url: str, conn: psycopg.Connection) -> None:
    seed(conn)
    server = serving(database_url, max_symbols=2, max_days=31, max_rows=2)
    try:
        bars = f"{server.url}/v1/bars/1d"
        assert "at most 2 per request" in _refused(f"{bars}?symbol=A,B,C&start=2024-06-10&end=2024-06-11")
        assert "at most 31" in _refused(f"{bars}?symbol=AAPL&start=2024-01-01&end=2024-06-11")
        assert "more than 2 rows" in _refused(f"{bars}?symbol=AAPL,MSFT&start=2024-06-10&end=2024-06-11")
        status, headers, _ = _get(f"{server.url}/v1/bars/1d?symbol=AAPL&start=2024-06-10&end=2024-06-11")
        assert (status, headers["x-row-count"]) == (200, "2")  # exactly the limit is fine
    finally:
        server.stop()


def test_a_query_stuck_behind_a_lock_answers_503_at_the_statement_timeout_and_connections_are_pooled(
    database_url: str, conn: psycopg.Connection,
) -> None:
    seed(conn)
    server = serving(database_url, statement_timeout=1.5, pool_size=2, pool_timeout=30)
    url = f"{server.url}/v1/bars/1d?symbol=AAPL&start=2024-06-10&end=2024-06-11"
    results: list[tuple[int, float]] = []
    peak = [0]
    try:
        with connect(database_url) as locker, locker.transaction():
            locker.execute("lock table md.bars_1d in access exclusive mode")

            def call() -> None:
                started = time.monotonic()
                status, _, _ = _get(url)
                results.append((status, time.monotonic() - started))

            threads = [threading.Thread(target=call) for _ in range(6)]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 30
            while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
                row = conn.execute("select count(*) from pg_stat_activity where application_name = %s",
                                   (APPLICATION_NAME,)).fetchone()
                peak[0] = max(peak[0], row[0] if row else 0)
                time.sleep(0.05)
            for t in threads:
                t.join(5)
        assert [s for s, _ in results] == [503] * 6
        assert max(took for _, took in results) < 15  # 6 queries, 2 at a time, 1.5 s each
        assert 1 <= peak[0] <= 2  # never more connections than the pool holds
        status, _, _ = _get(url)
        assert status == 200  # the lock is gone: answers again
    finally:
        server.stop()


def test_a_full_pool_answers_503_after_the_pool_timeout(database_url: str, conn: psycopg.Connection) -> None:
    seed(conn)
    server = serving(database_url, statement_timeout=5, pool_size=1, pool_timeout=0.5)
    url = f"{server.url}/v1/bars/1d?symbol=AAPL&start=2024-06-10&end=2024-06-11"
    try:
        with connect(database_url) as locker, locker.transaction():
            locker.execute("lock table md.bars_1d in access exclusive mode")
            first: list[int] = []
            holder = threading.Thread(target=lambda: first.append(_get(url)[0]))
            holder.start()
            time.sleep(1.0)  # the only pooled connection waits behind the lock
            status, _, body = _get(url)
            assert status == 503
            assert "busy" in json.loads(body)["error"]
        holder.join(10)
    finally:
        server.stop()


def test_the_openapi_schema_is_served(api: str) -> None:
    status, _, body = _get(f"{api}/openapi.json")
    assert status == 200
    schema = json.loads(body)
    assert set(schema["paths"]) >= {"/v1/bars/1d", "/v1/quality", "/health"}
    content = schema["paths"]["/v1/bars/1d"]["get"]["responses"]["200"]["content"]
    assert set(content) == {"application/json", "application/vnd.apache.arrow.stream", "application/vnd.apache.parquet"}
    assert {"BarRow", "QuarantineRow", "ErrorBody"} <= set(schema["components"]["schemas"])
